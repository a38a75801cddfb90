"""Helpers of the reliability suite: run the CLI in-process or in a killable subprocess, and snapshot outputs.

Snapshots (cache keys/values/aliases/rejects, Parquet rows) are what "nothing lost, nothing duplicated" compares.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import helpers
import numpy as np

ROOT = Path(__file__).resolve().parents[2]
RUNNER = Path(__file__).resolve().parent / "fault_runner.py"


def cli(*args: str):
    """Invoke the typer app in this process (no interpreter start-up): result with exit_code, stdout, stderr."""
    return helpers.invoke(*args)


def sets(**kw) -> list[str]:
    """`--set k=v` arguments; dotted keys are written with "__" (him__hidden=16 -> him.hidden=16)."""
    return [a for k, v in kw.items() for a in ("--set", f"{k.replace('__', '.')}={v}")]


def spawn(args: list[str], log: Path, fault: dict | None = None) -> subprocess.Popen:
    """Start `cli.py ARGS` under the fault runner in its own process group (so only it is ever killed)."""
    env = {**os.environ, "CI": "true", "OMP_NUM_THREADS": "1"}
    env.pop("RPIHMIF_FAULT", None)
    if fault:
        env["RPIHMIF_FAULT"] = json.dumps(fault)
    fh = open(log, "w")
    try:
        return subprocess.Popen([sys.executable, str(RUNNER), *map(str, args)], cwd=ROOT, env=env, stdout=fh,
                                stderr=subprocess.STDOUT, start_new_session=True)
    finally:
        fh.close()


def finish(proc: subprocess.Popen, log: Path, timeout: float = 300) -> int:
    """Wait for a spawned run; kill its group on timeout. Returns the exit code (-9 = SIGKILLed)."""
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        raise AssertionError(f"run timed out; log:\n{log.read_text()[-3000:]}")


def kill_when(proc: subprocess.Popen, ready: Callable[[], bool], log: Path, timeout: float = 300) -> None:
    """Poll the disk until `ready()`, then SIGKILL the run's process group; fail if it ended first."""
    deadline = time.monotonic() + timeout
    while not ready():
        assert proc.poll() is None, f"run ended (rc {proc.returncode}) before the kill point:\n{log.read_text()[-3000:]}"
        assert time.monotonic() < deadline, "kill point never reached"
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def wait_file(path: Path, proc: subprocess.Popen, log: Path, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, f"run ended (rc {proc.returncode}) early:\n{log.read_text()[-3000:]}"
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.05)


def hidden_leftovers(folder: Path) -> list[str]:
    """Temp files/folders (names starting with '.', other than the lock, the stamp memo and the read stamp)."""
    keep = {".lock", ".extract_memo.json", ".last_read"}
    return sorted(str(p.relative_to(folder)) for p in folder.rglob(".*") if p.name not in keep)


def cache_snapshot(cache_dir: Path) -> dict:
    """Every fingerprint folder's keys -> feature arrays, aliases, reject records; asserts no key is stored twice."""
    import h5py

    from cache.format import SHARD_GLOB
    from cache.reader import FeatureCache, fingerprint_folders

    snap = {}
    for folder in fingerprint_folders(cache_dir):
        cache = FeatureCache(folder)
        rows = 0
        for shard in sorted(folder.glob(SHARD_GLOB)):
            with h5py.File(shard, "r") as f:
                rows += len(f["keys"])
        index = cache.index
        assert rows == len(index.keys), f"{folder}: {rows} stored rows for {len(index.keys)} keys: duplicates"
        rejects = [json.dumps(r, sort_keys=True) for r in index.rejects]
        assert len(rejects) == len(set(rejects)), f"{folder}: duplicated reject records"
        lines = (folder / "rejects.jsonl").read_text().splitlines() if (folder / "rejects.jsonl").exists() else []
        snap[folder.name] = {"features": {k: cache.get(k) for k in index.keys},
                             "aliases": dict(index.aliases), "rejects": sorted(rejects), "rejects_jsonl": sorted(lines)}
    return snap


def assert_same_cache(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for fid in a:
        fa, fb = a[fid]["features"], b[fid]["features"]
        assert fa.keys() == fb.keys(), "cache keys differ"
        for key in fa:
            for name in fa[key]:  # float16 features: batch composition may move the last bit (1 ulp)
                assert np.allclose(fa[key][name].astype(np.float32), fb[key][name].astype(np.float32),
                                   rtol=2e-3, atol=2e-3), (key, name)
        assert a[fid]["aliases"] == b[fid]["aliases"]
        assert a[fid]["rejects"] == b[fid]["rejects"]
        assert a[fid]["rejects_jsonl"] == b[fid]["rejects_jsonl"]


def readable_cache_state(cache_dir: Path) -> int:
    """What a reader sees now: every indexed key readable; returns the number of keys (only finished shards)."""
    from cache.reader import FeatureCache, fingerprint_folders

    n = 0
    for folder in fingerprint_folders(cache_dir):
        cache = FeatureCache(folder)
        assert all(not s.startswith(".") and s.endswith(".h5") for s in cache.index.shards)
        for key in cache.index.keys:
            assert cache.get(key)["orig"].shape[0] > 0
            n += 1
    return n


def extract_sets(clip: Path, inputs: dict, cache: Path, **extra) -> dict:
    """`--set` values of a small in-process extract run (batch 2, shard 3: several shards)."""
    return {"vit_name": clip, "cache_dir": cache, "data_dir": inputs["data_dir"], "dataset": inputs["dataset"],
            "splits": "train,test", "workers": 0, "batch_size": 2, "shard_size": 3, "device": "cpu", **extra}


def tag_sets(world: dict, out: Path, **extra) -> dict:
    return {"cache_dir": world["cache"], "batch_size": 8, "bucket_size": 32, "row_group_bytes": 4000, "chunk_records": 16, "threads": 1,
            "device": "cpu", **extra}

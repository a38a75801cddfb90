"""tag-corpus at scale: inputs known by content, the reader matrix, the feature-cache trap, --force, SIGTERM,
kill -9 at random moments, a Ray worker killed, and a Ray node removed mid-run (each: exact rows after the rerun).
"""
from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.dataset as ds
import helpers
import pytest
from helpers import ROOT as REPO
from helpers import TAG_BAD_LINES, TAG_RUNNER, same_tag_rows, tag_config, tag_dump, tag_rows

from exit_codes import UsageError
from pipeline.tag.commit import STAGING_DIR
from pipeline.tag.manifest import data_folder, read_state
from pipeline.tag.stage import run_tag


def _chunks(out: Path) -> dict:
    state = read_state(out)
    return state["chunks"] if state else {}


def _add_image(cache: Path, image_id: str, key: str) -> None:
    """What extract-features does for one more image: a new shard with its features and alias."""
    from cache import CacheWriter, FeatureCache, fingerprint_folders

    folder = fingerprint_folders(cache)[0]
    spec = FeatureCache(folder).spec
    rng = np.random.default_rng(7)
    k = spec.max_crops
    with CacheWriter(cache, helpers.fingerprint(spec), shard_size=64) as writer:
        writer.add_rows({"key": [key], "orig": rng.normal(size=(1, spec.orig_tokens, spec.dim)),
                         "orig_mask": np.ones(1, bool), "grounding": rng.normal(size=(1, k, spec.grounding_tokens,
                                                                                          spec.dim)),
                         "grounding_mask": np.ones((1, k), bool), "rcnn": rng.normal(size=(1, k, spec.rcnn_tokens,
                                                                                              spec.dim)),
                         "rcnn_mask": np.ones((1, k), bool)})
        writer.add_alias("dump", image_id, key)


def test_moved_and_copied_dump_adds_no_rows(tag_env, tmp_path):
    dump = tag_dump(tag_env, "moved.jsonl.gz", 30)
    out = tmp_path / "out"
    first = run_tag([dump], tag_config(tag_env, out))
    archive = tmp_path / "archive"
    archive.mkdir()
    copy = Path(shutil.copy(dump, archive / "copy.jsonl.gz"))
    moved = tmp_path / "elsewhere.jsonl.gz"
    shutil.copy(dump, moved)  # the original stays for the other tests of the module: a move is a new path
    again = run_tag([copy, moved], tag_config(tag_env, out))
    assert (again["rows"], again["skipped"], again["chunks"]) == (0, 2, 0)
    rows = tag_rows(out)
    assert len(rows) == first["rows"] == 30 and rows["id"].is_unique
    (entry,) = read_state(out)["inputs"].values()
    assert sorted(entry["paths"]) == sorted(str(p.resolve()) for p in (dump, copy, moved))


def test_reader_matrix_reads_data_folder_as_one_table(tag_env, tmp_path):
    import duckdb
    import polars as pl

    out = tmp_path / "out"
    run_tag([tag_dump(tag_env, "m1.jsonl", 30, TAG_BAD_LINES[:2]), tag_dump(tag_env, "m2.jsonl.gz", 20)], tag_config(tag_env, out))
    data = data_folder(out)
    assert len(list(data.iterdir())) == 4 and all(p.suffix == ".parquet" for p in data.iterdir())
    counts = {
        "pandas": len(pd.read_parquet(data)),
        "pyarrow.dataset": ds.dataset(data, format="parquet").count_rows(),
        "duckdb": duckdb.sql(f"SELECT count(*) FROM read_parquet('{data}')").fetchall()[0][0],
        "polars.read_parquet": pl.read_parquet(data).height,
        "polars.scan_parquet": pl.scan_parquet(data).select(pl.len()).collect().item(),
    }
    assert counts == dict.fromkeys(counts, 50), counts
    ids = duckdb.sql(f"SELECT count(DISTINCT id), count(DISTINCT source) FROM read_parquet('{data}')").fetchall()[0]
    assert ids == (30, 2)  # m2 repeats m1's ids t0..t19 under its own source
    assert pl.read_parquet(data).schema["tagged_at"] == pl.Datetime("ms", "UTC")


def test_cache_trap_exit2_then_filled_cache_retags_with_images(tag_env, tmp_path):
    dump = tag_dump(tag_env, "trap.jsonl", 30)
    out, empty = tmp_path / "out", tmp_path / "nocache"
    empty.mkdir()
    env = {**os.environ, "RPIHMIF_CACHE": str(empty)}
    args = [sys.executable, str(REPO / "cli.py"), "tag-corpus", str(dump), "--model", str(tag_env["ckpt"]),
            "--out", str(out), "--set", "chunk_records=8", "--set", "threads=1"]
    res = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 2, res.stderr
    assert "extract-features" in res.stderr and "--allow-missing-images" in res.stderr and str(empty) in res.stderr
    assert not list(data_folder(out).glob("*.parquet"))

    res = subprocess.run(args + ["--allow-missing-images", "--set", "progress_every_s=0.001"], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    summary = json.loads(res.stdout)
    assert (summary["images_missing"], summary["images_used"]) == (30, 0)
    assert "WARNING" in res.stderr and "30 tweets had an image with no cached features" in res.stderr
    assert f"feature cache {empty}" in res.stderr and f"output {out}" in res.stderr
    assert "encoder fp-tagtest (no cache folder of it)" in res.stderr
    progress = [x for x in res.stderr.splitlines() if "records in" in x and "ETA" in x]
    assert progress and "tagged 8 of ~" in progress[0]  # records tagged (not read), with a total and an ETA

    cache = tmp_path / "cache"  # extract-features fills 2 of the 3 images: every chunk with misses is re-tagged
    shutil.copytree(tag_env["cache"], cache)
    conf = tag_config(tag_env, out, cache_dir=str(cache), chunk_records=8)
    second = run_tag([dump], conf)
    assert second["retagged_chunks"] == 4 and second["rows"] == 30 and second["images_missing"] == 10
    _add_image(cache, tag_env["images"][2], "k-third")  # and then the third
    third = run_tag([dump], conf)
    assert third["retagged_chunks"] == 4 and (third["images_used"], third["images_missing"]) == (30, 0)
    rows = tag_rows(out)
    assert len(rows) == 30 and rows["id"].is_unique and rows["image_used"].all()
    assert run_tag([dump], conf)["chunks"] == 0  # nothing changed since: nothing re-tagged


def test_force_retags_every_chunk(tag_env, tmp_path):
    dump = tag_dump(tag_env, "force.jsonl", 20)
    out = tmp_path / "out"
    run_tag([dump], tag_config(tag_env, out))
    before = tag_rows(out)
    forced = run_tag([dump], tag_config(tag_env, out, force="true"))
    assert (forced["chunks"], forced["retagged_chunks"], forced["rows"]) == (2, 2, 20)
    same_tag_rows(before, tag_rows(out))
    assert len(_chunks(out)) == 2 and len(list(data_folder(out).iterdir())) == 2


def test_chunk_size_change_and_usage_errors(tag_env, tmp_path):
    dump = tag_dump(tag_env, "resize.jsonl", 20)
    out = tmp_path / "out"
    run_tag([dump], tag_config(tag_env, out))
    resized = run_tag([dump], tag_config(tag_env, out, force="true", chunk_records=7))
    assert resized["chunks"] == 3 and len(list(data_folder(out).iterdir())) == 3 and len(tag_rows(out)) == 20
    with pytest.raises(UsageError, match="chunk_records"):
        run_tag([dump], tag_config(tag_env, out, chunk_records=0))


def _spawn(args: list[str], log: Path) -> subprocess.Popen:
    with open(log, "w") as fh:
        return subprocess.Popen(args, cwd=REPO, stdout=subprocess.DEVNULL, stderr=fh)


def test_sigterm_logs_one_line_keeps_committed_chunks(tag_env, tmp_path):
    dump = tag_dump(tag_env, "term.jsonl", 400)
    ref, out, log = tmp_path / "ref", tmp_path / "out", tmp_path / "run.log"
    run_tag([dump], tag_config(tag_env, ref, chunk_records=10))
    conf = tag_config(tag_env, out, chunk_records=10)
    proc = _spawn([sys.executable, "-c", "from pipeline.runtime.progress import setup_logging; setup_logging(); "
                   + TAG_RUNNER, str(dump), json.dumps(conf.to_dict())], log)
    deadline = time.monotonic() + 240
    while len(_chunks(out)) < 2 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert proc.poll() is None, "finished before SIGTERM; use a bigger dump"
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) == 1
    text = log.read_text()
    assert len([x for x in text.splitlines() if "SIGTERM" in x and "WARNING" in x]) == 1, text[-3000:]
    kept = len(_chunks(out))
    assert 2 <= kept < 40
    assert not list((out / STAGING_DIR).iterdir()) and all(p.suffix == ".parquet" for p in data_folder(out).iterdir())
    rerun = run_tag([dump], conf)
    assert rerun["chunks"] == 40 - kept
    same_tag_rows(tag_rows(ref), tag_rows(out))


@pytest.mark.slow
def test_kill9_at_random_moments_then_rerun_equals_uninterrupted(tag_env, tmp_path):
    dump = tag_dump(tag_env, "kill9.jsonl.gz", 600)
    ref, out, log = tmp_path / "ref", tmp_path / "out", tmp_path / "run.log"
    run_tag([dump], tag_config(tag_env, ref, chunk_records=20))
    conf = tag_config(tag_env, out, chunk_records=20)
    rng = random.Random(11)
    for attempt in range(3):
        proc = _spawn([sys.executable, "-c", TAG_RUNNER, str(dump), json.dumps(conf.to_dict())], log)
        target = len(_chunks(out)) + rng.randint(1, 6)
        deadline = time.monotonic() + 240
        while len(_chunks(out)) < target and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(rng.uniform(0, 0.1))  # somewhere inside the next chunk: reading, tagging, writing or committing
        assert proc.poll() is None, f"attempt {attempt}: finished before the kill; use a bigger dump"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    kept = len(_chunks(out))
    assert all(p.suffix == ".parquet" for p in data_folder(out).iterdir())
    summary = run_tag([dump], conf)
    assert summary["chunks"] == 30 - kept  # only what was not committed is redone
    assert not list((out / STAGING_DIR).iterdir())
    same_tag_rows(tag_rows(ref), tag_rows(out))


def _kill_first_worker(staging: Path, stop: threading.Event, killed: list[int], accept=lambda pid: True) -> None:
    """SIGKILL the process writing the first temp part seen (its pid is in the temp name)."""
    while not stop.is_set():
        for p in staging.glob(".*.tmp-*") if staging.exists() else []:
            pid = int(p.name.split(".tmp-", 1)[1].split("-", 1)[0])
            if pid != os.getpid() and accept(pid):
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
                return
        time.sleep(0.005)


@pytest.mark.slow
def test_ray_worker_sigkilled_mid_run_gives_exact_rows(tag_env, tmp_path):
    dump = tag_dump(tag_env, "raykill.jsonl", 300, TAG_BAD_LINES[:2])
    ref, out = tmp_path / "ref", tmp_path / "out"
    run_tag([dump], tag_config(tag_env, ref, chunk_records=30))
    stop, killed = threading.Event(), []
    killer = threading.Thread(target=_kill_first_worker, args=(out / STAGING_DIR, stop, killed), daemon=True)
    killer.start()
    try:
        summary = run_tag([dump], tag_config(tag_env, out, chunk_records=30, workers=2))
    finally:
        stop.set()
    assert killed, "no worker was killed"
    assert (summary["rows"], summary["rejects"], summary["chunks"]) == (300, 2, 11)
    same_tag_rows(tag_rows(ref), tag_rows(out))
    assert (out / "_rejects.jsonl").read_text() == (ref / "_rejects.jsonl").read_text()


def _parent(pid: int) -> int:
    with open(f"/proc/{pid}/status") as fh:
        return next(int(x.split()[1]) for x in fh if x.startswith("PPid:"))


@pytest.mark.slow
def test_ray_node_removed_mid_run_gives_exact_rows(tag_env, tmp_path):
    import ray
    from ray.cluster_utils import Cluster

    dump = tag_dump(tag_env, "node.jsonl", 240)
    ref, out = tmp_path / "ref", tmp_path / "out"
    run_tag([dump], tag_config(tag_env, ref, chunk_records=30))
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2})
    node = cluster.add_node(num_cpus=2)
    raylet = node.all_processes["raylet"][0].process.pid
    stop, removed = threading.Event(), []

    def remove_node_of_a_worker() -> None:
        while not stop.is_set():
            for p in (out / STAGING_DIR).glob(".*.tmp-*") if (out / STAGING_DIR).exists() else []:
                pid = int(p.name.split(".tmp-", 1)[1].split("-", 1)[0])
                try:
                    on_node = _parent(pid) == raylet
                except (OSError, StopIteration):
                    continue
                if on_node:
                    removed.append(pid)
                    cluster.remove_node(node)
                    return
            time.sleep(0.005)

    try:
        ray.init(address=cluster.address, log_to_driver=False)
        thread = threading.Thread(target=remove_node_of_a_worker, daemon=True)
        thread.start()
        summary = run_tag([dump], tag_config(tag_env, out, chunk_records=30, workers=2, ray_address=cluster.address))
    finally:
        stop.set()
        ray.shutdown()
        cluster.shutdown()
    assert removed, "no worker ran on the second node"
    assert (summary["rows"], summary["chunks"]) == (240, 8)
    same_tag_rows(tag_rows(ref), tag_rows(out))


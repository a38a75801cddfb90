"""A full disk during extract-features: one line naming the path and the disk, exit 1, no temp shard, a clean rerun.

In-process, the full disk is simulated by an `os.fsync` that fails with ENOSPC for shard files (portable); the slow
case fills a real 1 MiB tmpfs mounted in a user namespace (`unshare -rm`), skipped where that is not allowed.
"""
from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import helpers
import pytest
from rel_helpers import cli, sets

from cache import verify_cache

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, tiny_clip_dir):
    root = tmp_path_factory.mktemp("nospace")
    helpers.make_dataset(root / "data", n_images=6)
    return root, tiny_clip_dir


def _args(root: Path, clip: Path, cache: Path) -> list[str]:
    return ["extract-features", *sets(data_dir=root / "data", dataset="twitter2015", vit_name=clip, cache_dir=cache,
                                      workers=0, precision="fp32", shard_size=2, device="cpu")]


def _leftovers(cache: Path) -> list[str]:
    return [p.name for p in cache.rglob(".*") if ".tmp-" in p.name]


def test_enospc_while_committing_a_shard_is_one_line_and_a_rerun_completes(inputs, tmp_path, monkeypatch, capfd):
    root, clip = inputs
    cache = tmp_path / "cache"
    real_fsync = os.fsync

    def full_disk(fd):
        if "shard-" in os.readlink(f"/proc/self/fd/{fd}"):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_fsync(fd)

    monkeypatch.setattr(os, "fsync", full_disk)
    res = cli(*_args(root, clip, cache))
    err = capfd.readouterr().err + res.stderr
    assert res.exit_code == 1
    (line,) = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert "No space left on device, disk /" in line and "MiB free" in line and "/shard-" in line
    assert "Exception ignored" not in err and "Traceback" not in err
    assert _leftovers(cache) == [] and not list(cache.rglob("shard-*.h5"))
    monkeypatch.setattr(os, "fsync", real_fsync)
    again = cli(*_args(root, clip, cache))
    assert again.exit_code == 0, again.stderr
    assert json.loads(again.stdout)["computed"] >= 6 and verify_cache(cache)["broken"] == []


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("unshare") is None, reason="needs unshare(1)")
def test_a_real_full_tmpfs(inputs, tmp_path):
    root, clip = inputs
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    probe = subprocess.run(["unshare", "-rm", "sh", "-c", f"mount -t tmpfs -o size=64k tmpfs {mnt}"],
                           capture_output=True)
    if probe.returncode:
        pytest.skip(f"cannot mount a tmpfs in a user namespace: {probe.stderr.decode()[:100]}")
    run = " ".join(f"'{a}'" for a in [sys.executable, str(REPO / "cli.py"), *_args(root, clip, mnt / "cache")])
    script = (f"mount -t tmpfs -o size=1m tmpfs {mnt} && head -c 900000 /dev/zero > {mnt}/filler; "
              f"{run} > {tmp_path}/out1 2> {tmp_path}/err1; echo $? > {tmp_path}/rc1; "
              f"find {mnt} -name '.*tmp-*' > {tmp_path}/left; rm {mnt}/filler; "
              f"{run} > {tmp_path}/out2 2> {tmp_path}/err2; echo $? > {tmp_path}/rc2")
    subprocess.run(["unshare", "-rm", "sh", "-c", script], env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=300)
    err = (tmp_path / "err1").read_text()
    assert (tmp_path / "rc1").read_text().strip() == "1", err
    assert f"No space left on device, disk {mnt}" in err and err.count("error:") == 1
    assert "Exception ignored" not in err and "Traceback" not in err and "Segmentation" not in err
    assert (tmp_path / "left").read_text() == ""
    assert (tmp_path / "rc2").read_text().strip() == "0", (tmp_path / "err2").read_text()
    summary = json.loads((tmp_path / "out2").read_text())  # the shards committed before the disk filled are kept
    assert summary["computed"] >= 1 and summary["computed"] + summary["reused"] == summary["unique_images"] >= 6

"""`cache info | verify | prune` end to end on a cache that two tiny CLIP encoders filled through extract-features."""
from __future__ import annotations

import json
import os
import time

import pytest
from helpers import make_dataset, make_tiny_clip
from typer.testing import CliRunner

from cache.durable import FileLock
from cli import app


def cli(*args) -> "object":
    return CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture(scope="module")
def two_encoders(tmp_path_factory):
    """A cache root with the folders of two tiny CLIP encoders (seed 0 older, seed 1 newer) over one dataset."""
    tmp = tmp_path_factory.mktemp("cachecli")
    make_dataset(tmp / "data", n_images=3)
    cache = tmp / "cache"
    ids = []
    for seed in (0, 1):
        clip = make_tiny_clip(tmp / f"clip{seed}", seed=seed)
        res = cli("extract-features", "--set", f"data_dir={tmp / 'data'}", "--set", "dataset=twitter2015",
                  "--set", f"cache_dir={cache}", "--set", f"vit_name={clip}", "--set", "workers=0",
                  "--set", "precision=fp32")
        assert res.exit_code == 0, res.output
        ids.append(json.loads(res.stdout)["fingerprint_id"])
    old = time.time() - 10 * 86400
    for p in (cache / ids[0]).iterdir():
        os.utime(p, (old, old), follow_symlinks=False)
    return cache, ids


def test_info_lists_both_encoders(two_encoders):
    cache, (old, new) = two_encoders
    res = cli("cache", "info", "--cache-dir", cache)
    assert res.exit_code == 0, res.output
    lines = res.stdout.splitlines()
    assert lines[0].split()[:4] == ["fingerprint", "images", "bytes", "shards"]
    assert lines[1].startswith(new) and lines[2].startswith(old)  # most recently used first
    assert f"CLIPVisionModel from {cache.parent / 'clip0'}" in lines[2]
    assert lines[-1].startswith("2 fingerprint folder(s)")
    data = json.loads(cli("cache", "info", "--set", f"cache_dir={cache}", "--json").stdout)
    assert [f["fingerprint"] for f in data["folders"]] == [new, old]
    assert all(f["images"] == 3 and f["shards"] >= 1 and f["bytes"] > 0 for f in data["folders"])


def test_verify_passes_then_names_a_broken_shard(two_encoders, tmp_path):
    cache, (old, _) = two_encoders
    res = cli("cache", "verify", "--cache-dir", cache)
    assert res.exit_code == 0 and res.stdout.startswith("ok: "), res.output
    copy = tmp_path / "c"
    os.system(f"cp -a {cache} {copy}")
    shard = sorted((copy / old).glob("shard-*.h5"))[0]
    shard.write_bytes(shard.read_bytes()[:4000])
    res = cli("cache", "verify", "--cache-dir", copy)
    assert res.exit_code == 1
    assert f"error: {shard}:" in res.stderr and "rerun extract-features" in res.stderr


def test_prune_dry_run_then_keep_one_and_a_held_lock(two_encoders, tmp_path):
    cache, (old, new) = two_encoders
    copy = tmp_path / "c"
    os.system(f"cp -a {cache} {copy}")
    res = cli("cache", "prune", "--cache-dir", copy, "--keep", "1", "--dry-run")
    assert res.exit_code == 0, res.output
    assert res.stdout.splitlines()[0].startswith(f"would remove {old}") and f"kept: {new}" in res.stdout
    assert (copy / old).is_dir()
    with FileLock(copy / old, "extract-features run"):
        res = cli("cache", "prune", "--cache-dir", copy, "--keep", "1")
    assert res.exit_code == 3 and f"pid {os.getpid()}" in res.stderr and (copy / old).is_dir()
    res = cli("cache", "prune", "--cache-dir", copy, "--keep", "1")
    assert res.exit_code == 0 and res.stdout.startswith(f"removed {old}"), res.output
    assert sorted(p.name for p in copy.iterdir() if not p.name.startswith(".")) == [new]
    assert cli("cache", "prune", "--cache-dir", copy).exit_code == 2  # no criterion: bad usage
    assert cli("cache", "info", "--set", "no_such_key=1").exit_code == 2

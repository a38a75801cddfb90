"""cache.manage and cache.memo: info, verify and prune of fingerprint folders, the read stamp, the one stamp memo."""
from __future__ import annotations

import os
import time

import numpy as np
import pytest
from helpers import fake_fingerprint

from cache import CacheWriter, FeatureCache, StampMemo, cache_info, find_cache, prune_cache, repair_folder, verify_cache
from cache.durable import FileLock
from cache.format import read_fingerprint
from cache.memo import READ_STAMP, last_read
from exit_codes import LockHeldError, UsageError


def _fill(root, fid: str, n: int = 3) -> dict:
    fp = fake_fingerprint(fid)
    spec, k = fp["info"]["spec"], fp["info"]["spec"]["max_crops"]
    rng = np.random.default_rng(0)
    with CacheWriter(root, fp, shard_size=2) as w:
        w.add_rows({"key": [f"{fid}-{i}" for i in range(n)],
                    "orig": rng.normal(size=(n, spec["orig_tokens"], spec["dim"])), "orig_mask": np.ones(n, bool),
                    "grounding": rng.normal(size=(n, k, spec["grounding_tokens"], spec["dim"])),
                    "grounding_mask": np.ones((n, k), bool),
                    "rcnn": rng.normal(size=(n, k, spec["rcnn_tokens"], spec["dim"])), "rcnn_mask": np.ones((n, k), bool)})
        for i in range(n):
            w.add_alias("dump", f"img{i}.jpg", f"{fid}-{i}")
    return fp


def _age(folder, days: float) -> None:
    """Make every file of `folder` (and its read stamp) look `days` old."""
    t = time.time() - days * 86400
    for p in folder.iterdir():
        os.utime(p, (t, t), follow_symlinks=False)


@pytest.fixture
def two(tmp_path):
    root = tmp_path / "cache"
    _fill(root, "aaaaaaaaaaaaaaaa", n=3)
    _fill(root, "bbbbbbbbbbbbbbbb", n=5)
    _age(root / "aaaaaaaaaaaaaaaa", 40)  # the older one
    _age(root / "bbbbbbbbbbbbbbbb", 2)
    return root


def test_info_lists_both_encoders_with_counts_and_stamps(two):
    info = cache_info(two)
    got = {f["fingerprint"]: f for f in info["folders"]}
    assert list(got) == ["bbbbbbbbbbbbbbbb", "aaaaaaaaaaaaaaaa"]  # most recently used first
    assert got["aaaaaaaaaaaaaaaa"]["images"] == 3 and got["bbbbbbbbbbbbbbbb"]["images"] == 5
    assert got["aaaaaaaaaaaaaaaa"]["shards"] == 2 and got["bbbbbbbbbbbbbbbb"]["shards"] == 3
    assert got["bbbbbbbbbbbbbbbb"]["encoder"] == "test encoder bbbbbbbbbbbbbbbb"
    assert got["aaaaaaaaaaaaaaaa"]["last_read"] is None and got["aaaaaaaaaaaaaaaa"]["last_written"]
    assert info["bytes"] == sum(f["bytes"] for f in info["folders"]) > 0
    assert not (two / "aaaaaaaaaaaaaaaa" / READ_STAMP).exists()  # info is not a read


def test_a_reader_stamps_last_read_once_and_never_in_a_read_only_cache(two, monkeypatch):
    folder = two / "aaaaaaaaaaaaaaaa"
    cache = FeatureCache(folder)
    assert cache.get("aaaaaaaaaaaaaaaa-1") is not None
    first = last_read(folder)
    assert first and abs(first - time.time()) < 60
    os.utime(folder / READ_STAMP, (1, 1))
    FeatureCache(folder).get("aaaaaaaaaaaaaaaa-2")  # same process: not stamped again
    assert last_read(folder) == 1
    other = two / "bbbbbbbbbbbbbbbb"
    real_open = os.open

    def read_only(path, flags, *args):  # what a read-only mount or folder answers (the tests may run as root)
        if str(path).endswith(READ_STAMP):
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, flags, *args)

    monkeypatch.setattr(os, "open", read_only)
    assert FeatureCache(other).get("bbbbbbbbbbbbbbbb-0") is not None  # no PermissionError
    assert last_read(other) is None


def test_prune_dry_run_lists_the_older_and_removes_nothing(two):
    before = sorted(p.name for p in two.iterdir())
    result = prune_cache(two, keep=1, dry_run=True)
    assert [f["fingerprint"] for f in result["removed"]] == ["aaaaaaaaaaaaaaaa"]
    assert result["kept"] == ["bbbbbbbbbbbbbbbb"]
    assert result["bytes_freed"] == cache_info(two)["folders"][1]["bytes"] > 0
    assert sorted(p.name for p in two.iterdir()) == before


def test_prune_keep_one_removes_the_older_and_its_memo(two):
    assert StampMemo(two).verified(two / "aaaaaaaaaaaaaaaa")
    prune_cache(two, keep=1)
    assert [f["fingerprint"] for f in cache_info(two)["folders"]] == ["bbbbbbbbbbbbbbbb"]
    assert not StampMemo(two).verified(two / "aaaaaaaaaaaaaaaa") and StampMemo(two).verified(two / "bbbbbbbbbbbbbbbb")
    assert [p.name for p in two.iterdir() if p.name.startswith(".aaaa")] == []  # no half-removed folder left
    assert len(find_cache(two)) == 5


def test_unused_since_follows_the_read_stamp(two):
    assert [f["fingerprint"] for f in prune_cache(two, unused_since_days=30, dry_run=True)["removed"]] == \
        ["aaaaaaaaaaaaaaaa"]
    assert prune_cache(two, unused_since_days=60, dry_run=True)["removed"] == []
    stamp = two / "aaaaaaaaaaaaaaaa" / READ_STAMP  # read 1 day ago though written 40 days ago: in use
    stamp.touch()
    os.utime(stamp, (time.time() - 86400,) * 2)
    assert [f["fingerprint"] for f in prune_cache(two, unused_since_days=1.5, dry_run=True)["removed"]] == \
        ["bbbbbbbbbbbbbbbb"]


def test_prune_by_fingerprint_and_bad_requests(two):
    with pytest.raises(UsageError, match="say what to remove"):
        prune_cache(two)
    with pytest.raises(UsageError, match="no fingerprint folder 'cccc'.*aaaaaaaaaaaaaaaa"):
        prune_cache(two, fingerprint="cccc")
    with pytest.raises(UsageError, match="cache root"):
        prune_cache(two / "aaaaaaaaaaaaaaaa", keep=0)
    prune_cache(two, fingerprint="bbbbbbbbbbbbbbbb")
    assert [f["fingerprint"] for f in cache_info(two)["folders"]] == ["aaaaaaaaaaaaaaaa"]


def test_prune_under_a_held_lock_removes_nothing(two):
    with FileLock(two / "aaaaaaaaaaaaaaaa", "extract-features run"):
        with pytest.raises(LockHeldError, match=f"pid {os.getpid()}") as err:
            prune_cache(two, keep=0)
    assert err.value.exit_code == 3
    assert len(cache_info(two)["folders"]) == 2


def test_verify_names_a_damaged_shard_and_the_memo_is_one_file(two):
    assert verify_cache(two)["broken"] == [] and verify_cache(two)["shards"] == 5
    folder = two / "bbbbbbbbbbbbbbbb"
    shard = sorted(folder.glob("shard-*.h5"))[1]
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) // 2])
    broken = verify_cache(two)["broken"]
    assert [b["file"] for b in broken] == [str(shard)]
    assert shard.exists()  # verify moves nothing
    assert not list(two.rglob("verified.json"))  # shard stamps live in the one memo
    assert repair_folder(folder, read_fingerprint(folder))["damaged"][0]["shard"] == shard.name


def test_memo_keeps_other_sections_of_a_concurrent_writer(tmp_path, monkeypatch):
    import cache.memo

    monkeypatch.setattr(cache.memo, "RACY_NS", -10**12)  # the folder counts as settled
    a, b = StampMemo(tmp_path), StampMemo(tmp_path)
    a.remember("/img.jpg", os.stat(tmp_path), "0" * 64)
    a.save()
    b.set_verified(tmp_path / "fp", {"shard-1.h5": [1, 2, 3, 4]})
    b.save()  # b never saw a's hash: it writes only its shards section
    fresh = StampMemo(tmp_path)
    assert "/img.jpg" in fresh.hashes and fresh.verified(tmp_path / "fp") == {"shard-1.h5": [1, 2, 3, 4]}
    ro = StampMemo(tmp_path, read_only=True)
    ro.set_verified(tmp_path / "fp", {})
    ro.save()
    assert StampMemo(tmp_path).verified(tmp_path / "fp")  # a read-only memo never writes


def test_find_cache_writes_nothing_and_fingerprints_only_when_a_cache_exists(two, tmp_path):
    calls = []
    assert find_cache(tmp_path / "none", lambda: calls.append(1) or "x") is None
    assert calls == [] and not (tmp_path / "none").exists()
    memo = two / ".extract_memo.json"
    before = (memo.stat().st_mtime_ns, sorted(p.name for p in two.iterdir()))
    cache = find_cache(two, lambda: "aaaaaaaaaaaaaaaa")
    assert cache.fingerprint_id == "aaaaaaaaaaaaaaaa" and len(cache) == 3
    assert (memo.stat().st_mtime_ns, sorted(p.name for p in two.iterdir())) == before
    with pytest.raises(UsageError, match="no features of encoder cccc"):
        find_cache(two, "cccc")

"""Silent cache corruption (issue 13 class 3): a flipped byte, a shard cut in half, a garbage index.

Readers name the damaged shard and the fix (exit 2, never wrong values); a rerun of extract-features verifies the
shards, sets damaged ones aside, recomputes their entries and says so; the repaired cache equals the original.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
from helpers import fake_fingerprint, fake_rows
from rel_helpers import assert_same_cache, cache_snapshot, cli, sets

from cache.format import SHARD_GLOB
from cache.integrity import repair_folder
from cache.memo import StampMemo
from cache import CacheWriter, FeatureCache
from exit_codes import DamagedCacheError


def flip_feature_byte(shard: Path, name: str = "orig", row: int = 0) -> None:
    """Flip one byte in the middle of the stored chunk of `name`'s row `row` (the mtime moves, as any write does)."""
    with h5py.File(shard, "r") as f:
        ds = f[name]
        info = ds.id.get_chunk_info_by_coord((row,) + (0,) * (ds.ndim - 1))
    with open(shard, "r+b") as fh:
        fh.seek(info.byte_offset + info.size // 2)
        byte = fh.read(1)
        fh.seek(-1, os.SEEK_CUR)
        fh.write(bytes([byte[0] ^ 0x5A]))


def truncate_half(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def garbage(path: Path) -> None:
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())


DAMAGE = {"flipped_byte": flip_feature_byte, "truncated": truncate_half}


# ---- the cache alone (fake rows: fast) -----------------------------------------------------------------------------
@pytest.fixture
def fake_cache(tmp_path) -> tuple[Path, dict]:
    fp = fake_fingerprint()
    with CacheWriter(tmp_path / "c", fp, shard_size=4) as w:
        w.add_rows(fake_rows([f"k{i}" for i in range(10)]))
        for i in range(10):
            w.add_alias("ds", f"{i}.jpg", f"k{i}")
    return tmp_path / "c" / fp["id"], fp


def test_shards_store_fletcher32_on_every_feature_dataset(fake_cache):
    folder, _ = fake_cache
    for shard in folder.glob(SHARD_GLOB):
        with h5py.File(shard, "r") as f:
            for name in ("keys", "orig", "orig_mask", "grounding", "grounding_mask", "rcnn", "rcnn_mask"):
                assert f[name].fletcher32 and f[name].chunks, (shard.name, name)
            assert f["alias_id"].attrs["sha256"]  # string tables: a digest (filters cannot apply to them)
    with h5py.File(folder / "index.h5", "r") as f:
        assert all(f[n].fletcher32 for n in ("key", "key_shard", "key_row"))


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_reader_names_the_damaged_shard_and_the_fix(fake_cache, damage):
    folder, fp = fake_cache
    cache = FeatureCache(folder)
    shard = folder / cache.index.shards[cache.index.keys["k5"][0]]
    if damage == "flipped_byte":
        flip_feature_byte(shard, "orig", cache.index.keys["k5"][1])
    else:
        truncate_half(shard)
    cache = FeatureCache(folder).refresh()
    with pytest.raises(DamagedCacheError) as err:
        cache.get("k5")
    assert shard.name in str(err.value) and "rerun extract-features" in str(err.value)
    assert err.value.exit_code == 2
    assert cache.get("k0") is not None  # other shards still read


def test_flipped_alias_string_fails_its_digest(fake_cache):
    folder, _ = fake_cache
    shard = sorted(folder.glob(SHARD_GLOB))[-1]  # the aliases were committed with the last shard
    with h5py.File(shard, "r+") as f:  # a tampered string table, rewritten in place
        values = [v.decode() for v in f["alias_key"][()]]
        values[0] = "k9"
        f["alias_key"][0] = values[0]
    (folder / "index.h5").unlink()
    with pytest.raises(DamagedCacheError, match=shard.name):
        FeatureCache(folder).index


def test_repair_sets_damaged_shards_aside_and_remembers_verified_ones(fake_cache):
    folder, fp = fake_cache
    shards = sorted(folder.glob(SHARD_GLOB))
    assert StampMemo(folder.parent).verified(folder).keys() == {s.name for s in shards}  # written by the writer
    assert repair_folder(folder, fp)["verified"] == 0  # nothing changed: nothing read again
    flip_feature_byte(shards[1], "rcnn", 1)
    result = repair_folder(folder, fp)
    assert result["verified"] == 1 and [d["shard"] for d in result["damaged"]] == [shards[1].name]
    assert not shards[1].exists() and shards[1].with_name(shards[1].name + ".damaged").exists()
    cache = FeatureCache(folder)
    assert len(cache) == 10 - 4 and all(cache.get(k) is not None for k in cache.keys())  # the rest is intact
    # a change that restores the mtime is still seen: ctime and inode are part of the stamp
    st = shards[0].stat()
    flip_feature_byte(shards[0], "orig", 0)
    os.utime(shards[0], ns=(st.st_atime_ns, st.st_mtime_ns))
    assert [d["shard"] for d in repair_folder(folder, fp)["damaged"]] == [shards[0].name]
    assert repair_folder(folder, fp, full=True)["verified"] == 1  # full: every shard read again


def test_garbage_index_is_never_wrong_only_slower_and_rebuilt_by_repair(fake_cache):
    folder, fp = fake_cache
    want = {k: FeatureCache(folder).get(k)["orig"] for k in FeatureCache(folder).keys()}
    garbage(folder / "index.h5")
    cache = FeatureCache(folder)
    assert {k: cache.get(k)["orig"].tolist() for k in cache.keys()} == {k: v.tolist() for k, v in want.items()}
    assert repair_folder(folder, fp)["index_rebuilt"]
    with h5py.File(folder / "index.h5", "r") as f:
        assert len(f["key"]) == 10


# ---- through the CLI: extract repairs, train and tag refuse --------------------------------------------------------
def _copy_cache(world: dict, tmp_path: Path) -> tuple[Path, Path]:
    """A private copy of the world's cache; returns (cache_dir, the shard holding the first training image)."""
    cache_dir = tmp_path / "cache"
    shutil.copytree(world["root"] / "cache", cache_dir)
    (folder,) = [p for p in cache_dir.iterdir() if p.is_dir()]
    cache = FeatureCache(folder)
    first = (world["root"] / "data/twitter2015/train.txt").read_text().split("\n", 1)[0].split(":", 1)[1]
    key = cache.key_for("twitter2015", f"{first}.jpg")
    return cache_dir, folder / cache.index.shards[cache.index.keys[key][0]]


def _with_cache(args: list, cache_dir: Path, **extra) -> list[str]:
    return [*map(str, args), *sets(cache_dir=cache_dir, **extra)]


@pytest.mark.slow
@pytest.mark.parametrize("damage", ["flipped_byte", "truncated", "garbage_index"])
def test_extract_rerun_repairs_the_cache(world, tmp_path, damage, caplog):
    cache_dir, shard = _copy_cache(world, tmp_path)
    want = cache_snapshot(world["root"] / "cache")
    if damage == "garbage_index":
        garbage(shard.parent / "index.h5")
    else:
        DAMAGE[damage](shard)
    res = cli(*_with_cache(world["extract"], cache_dir))
    assert res.exit_code == 0, res.stderr
    summary = json.loads(res.stdout)
    if damage == "garbage_index":
        assert summary["damaged_shards"] == [] and summary["computed"] == 0
    else:
        assert [d["shard"] for d in summary["damaged_shards"]] == [shard.name]
        assert summary["computed"] >= 1  # its images were encoded again
        assert shard.with_name(shard.name + ".damaged").exists()
        assert f"{shard.name}" in caplog.text and "recomputed" in caplog.text
    assert_same_cache(want, cache_snapshot(cache_dir))  # nothing lost: every key, alias and reject is back
    again = cli(*_with_cache(world["extract"], cache_dir))
    assert again.exit_code == 0 and json.loads(again.stdout)["computed"] == 0
    assert json.loads(again.stdout)["shards_verified"] == 0  # verified once, remembered


@pytest.mark.slow
@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_train_on_a_damaged_cache_exits_2_naming_the_shard(world, tmp_path, damage):
    cache_dir, shard = _copy_cache(world, tmp_path)
    DAMAGE[damage](shard)
    res = cli(*_with_cache(world["train"], cache_dir, save_path=tmp_path / "run"))
    assert res.exit_code == 2, (res.stdout, res.stderr)
    assert shard.name in res.stderr and "rerun extract-features" in res.stderr
    assert "Traceback" not in res.stderr and not (tmp_path / "run" / "best").exists()


@pytest.mark.slow
@pytest.mark.parametrize("damage, workers", [("flipped_byte", 0), ("truncated", 0), ("flipped_byte", 2)])
def test_tag_on_a_damaged_cache_exits_2_naming_the_shard(world, tmp_path, damage, workers):
    cache_dir, shard = _copy_cache(world, tmp_path)
    DAMAGE[damage](shard)
    out = tmp_path / "out"
    res = cli("tag-corpus", world["root"] / "data" / "tweets.jsonl.gz", "--model", world["ckpt"], "--out", out,
              *sets(cache_dir=cache_dir, device="cpu", workers=workers, batch_size=8))  # 0: in-process, 2: Ray actors read it
    assert res.exit_code == 2, (res.stdout, res.stderr)
    assert shard.name in res.stderr and "rerun extract-features" in res.stderr
    assert not list(out.glob("*.parquet")) and [p.name for p in out.iterdir() if p.name.startswith(".")] == [".lock"]


@pytest.mark.slow
def test_train_and_tag_on_a_garbage_index_read_the_shards_with_the_same_results(world, tmp_path):
    cache_dir, shard = _copy_cache(world, tmp_path)
    garbage(shard.parent / "index.h5")
    res = cli(*_with_cache(world["train"], cache_dir, save_path=tmp_path / "run"))
    assert res.exit_code == 0, res.stderr
    got = json.loads((tmp_path / "run" / "metrics.json").read_text())["epochs"][0]["dev"]
    assert got == json.loads((world["root"] / "run" / "metrics.json").read_text())["epochs"][0]["dev"]
    assert "index.h5" in res.stderr  # said, once per reader: "ignoring unreadable index; scanning shards"

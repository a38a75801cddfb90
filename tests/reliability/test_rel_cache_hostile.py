"""Hostile feature-cache files: HDF5 objects that point elsewhere, metadata that declares huge sizes, wrong dtypes.

Every case is refused before any read: the reader and `cache verify` name the file, nothing outside the cache is
opened (the targets are FIFOs: opening one would hang, an alarm turns that into a failure), memory stays small,
and extract-features' repair sets the file aside so a rerun recomputes what it held.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import tracemalloc
from contextlib import contextmanager
from pathlib import Path

import h5py
import helpers
import numpy as np
import pytest
from rel_helpers import cli, sets

from cache import FeatureCache, repair_folder, verify_cache
from cache.format import FEATURE_NAMES, read_fingerprint
from exit_codes import DamagedCacheError, UsageError
from rpihmif.visual import VisualLayout

SPEC = VisualLayout(dim=8, orig_tokens=5, grounding_tokens=3, rcnn_tokens=2, max_crops=2)
SHARD_DATASETS = ("keys",) + FEATURE_NAMES + ("alias_source", "alias_id", "alias_key", "rejects")
BIG = 2 ** 34


@contextmanager
def no_hang(seconds: int = 20):
    """Fail instead of hanging when something opens a FIFO target."""
    def boom(*_):
        raise TimeoutError("blocked: something opened a file outside the cache")
    old = signal.signal(signal.SIGALRM, boom)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


@pytest.fixture
def env(tmp_path):
    """A one-shard cache of 4 keys, and outside it a FIFO and a valid shard-like file to point at."""
    root = tmp_path / "cache"
    helpers.make_feature_cache(root, SPEC, [f"i{i}.jpg" for i in range(4)])
    (folder,) = [p for p in root.iterdir() if p.is_dir()]
    (shard,) = folder.glob("shard-*.h5")
    outside = tmp_path / "outside"
    outside.mkdir()
    os.mkfifo(outside / "fifo")
    shutil.copy(shard, outside / "other.h5")
    (folder / "index.h5").unlink()  # the shard itself is read (the index is tested on its own below)
    return {"root": root, "folder": folder, "shard": shard, "fifo": outside / "fifo", "other": outside / "other.h5"}


def _replace(path: Path, name: str, make) -> None:
    """Delete dataset `name` of `path` and let `make(f, name, old)` put something else there."""
    with h5py.File(path, "r+") as f:
        old = f[name]
        info = {"shape": old.shape, "dtype": old.dtype, "data": old[()]}
        del f[name]
        make(f, name, info)


def soft(f, name, _):
    f[name] = h5py.SoftLink("/elsewhere/" + name)


def external_fifo(target):
    return lambda f, name, _: f.__setitem__(name, h5py.ExternalLink(str(target), "/" + name))


def virtual(target):
    def make(f, name, info):
        layout = h5py.VirtualLayout(shape=info["shape"], dtype=info["dtype"] if info["dtype"].kind != "O" else "S8")
        layout[...] = h5py.VirtualSource(str(target), name, shape=info["shape"])
        f.create_virtual_dataset(name, layout)
    return make


def external_storage(target):
    def make(f, name, info):
        dt = info["dtype"] if info["dtype"].kind != "O" else np.dtype("S8")
        f.create_dataset(name, shape=info["shape"], dtype=dt, external=[(str(target), 0, h5py.h5f.UNLIMITED)])
    return make


def _refused(env, path: Path | None = None) -> str:
    """The reader and verify both refuse, naming the file, without opening anything outside; returns the reason."""
    path = path or env["shard"]
    with no_hang():
        with pytest.raises(DamagedCacheError) as err:
            cache = FeatureCache(env["folder"])
            cache.get(cache.keys()[0]) if cache.index.keys else None
        assert str(path) in str(err.value) and "rerun extract-features" in str(err.value)
        broken = verify_cache(env["root"])["broken"]
    assert [b["file"] for b in broken] == [str(path)]
    return err.value.reason


LINKS = {"soft link": lambda env: soft, "external link to a FIFO": lambda env: external_fifo(env["fifo"]),
         "external link to a valid shard": lambda env: external_fifo(env["other"]),
         "virtual dataset over a FIFO": lambda env: virtual(env["fifo"]),
         "virtual dataset over a valid shard": lambda env: virtual(env["other"]),
         "external raw storage on a FIFO": lambda env: external_storage(env["fifo"]),
         "external raw storage on a valid file": lambda env: external_storage(env["other"])}


@pytest.mark.parametrize("name", SHARD_DATASETS)
@pytest.mark.parametrize("kind", sorted(LINKS))
def test_shard_objects_pointing_elsewhere_are_refused_before_any_read(env, kind, name):
    _replace(env["shard"], name, LINKS[kind](env))
    reason = _refused(env)
    assert name in reason and any(w in reason for w in ("Link", "virtual", "external"))


@pytest.mark.parametrize("kind", ["symlink to a valid shard", "FIFO", "hard-linked folder entry is fine"])
def test_a_shard_file_that_is_not_a_regular_file(env, kind):
    shard = env["shard"]
    if kind == "hard-linked folder entry is fine":
        os.link(shard, env["other"].with_name("hard.h5"))  # same inode: the file's own bytes, nothing elsewhere
        assert len(FeatureCache(env["folder"])) == 4
        return
    shard.unlink()
    os.symlink(env["other"], shard) if kind.startswith("symlink") else os.mkfifo(shard)
    assert "not a regular file" in _refused(env)


def _declare(f, name, info, shape, dtype=None):
    """`name` as a chunked dataset declaring `shape` with nothing allocated (a tiny file)."""
    chunks = (1,) + tuple(min(s, 64) for s in shape[1:]) if len(shape) > 1 else (1024,)
    f.create_dataset(name, shape=shape, maxshape=(None,) * len(shape), chunks=chunks, dtype=dtype or info["dtype"])


def _rows_attr(path, rows):
    with h5py.File(path, "r+") as f:
        f.attrs["rows"] = rows


BOMBS = {
    "keys of 2^34 rows": ("keys", lambda f, n, i: _declare(f, n, i, (BIG,))),
    "orig of (N, 2^15, 2^15)": ("orig", lambda f, n, i: _declare(f, n, i, (4, 2 ** 15, 2 ** 15))),
    "grounding of 2^34 rows": ("grounding", lambda f, n, i: _declare(f, n, i, (BIG,) + i["shape"][1:])),
    "rcnn_mask of 2^34 rows": ("rcnn_mask", lambda f, n, i: _declare(f, n, i, (BIG, 2))),
    "alias_id of 2^34 strings": ("alias_id", lambda f, n, i: _declare(f, n, i, (BIG,), h5py.string_dtype())),
    "rejects of 2^34 strings": ("rejects", lambda f, n, i: _declare(f, n, i, (BIG,), h5py.string_dtype())),
    "orig as int64": ("orig", lambda f, n, i: f.create_dataset(n, data=i["data"].astype(np.int64))),
    "orig_mask as float": ("orig_mask", lambda f, n, i: f.create_dataset(n, data=i["data"].astype(np.float32))),
    "keys as ints": ("keys", lambda f, n, i: f.create_dataset(n, data=np.arange(4))),
    "keys as object references": ("keys", lambda f, n, i: f.create_dataset(n, shape=(4,), dtype=h5py.ref_dtype)),
    "alias_key as floats": ("alias_key", lambda f, n, i: f.create_dataset(n, data=np.zeros(len(i["data"])))),
    "grounding missing a crop axis": ("grounding", lambda f, n, i: f.create_dataset(n, data=i["data"][:, 0])),
    "orig as a group": ("orig", lambda f, n, i: f.create_group(n)),
    "gzip filter": ("orig", lambda f, n, i: f.create_dataset(n, data=i["data"], compression="gzip")),
}


@pytest.mark.parametrize("case", sorted(BOMBS))
def test_shard_metadata_bombs_and_bad_dtypes_are_refused_without_allocating(env, case):
    name, make = BOMBS[case]
    _replace(env["shard"], name, make)
    assert env["shard"].stat().st_size < 1 << 20  # the declared sizes live in a tiny file
    tracemalloc.start()
    try:
        reason = _refused(env)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 32 << 20, peak
    assert name in reason


def test_every_dataset_declaring_2_40_rows_with_a_matching_rows_attribute(env):
    with h5py.File(env["shard"], "r+") as f:
        for name in SHARD_DATASETS:
            old = f[name]
            shape, dtype = (2 ** 40,) + old.shape[1:], old.dtype
            del f[name]
            _declare(f, name, {"dtype": dtype}, shape)
        f.attrs["rows"] = 2 ** 40
    assert "declares shape" in _refused(env)


def test_a_rows_attribute_that_disagrees_with_the_datasets(env):
    _rows_attr(env["shard"], 2 ** 40)
    assert "shape" in _refused(env)


@pytest.mark.parametrize("field, value", [("dim", 2 ** 20), ("orig_tokens", 0), ("max_crops", "3"), ("rcnn_tokens", 2 ** 40)])
def test_fingerprint_spec_out_of_bounds_is_one_exit_2_line_naming_the_file(env, field, value):
    path = env["folder"] / "fingerprint.json"
    data = json.loads(path.read_text())
    data["info"]["spec"][field] = value
    path.write_text(json.dumps(data))
    with pytest.raises(UsageError) as err:
        read_fingerprint(env["folder"])
    assert err.value.exit_code == 2 and str(path) in str(err.value) and field in str(err.value)
    res = cli("cache", "verify", "--cache-dir", env["root"])
    assert res.exit_code == 1 and str(path) in res.stderr and "Traceback" not in res.stderr


# ---- index.h5 -----------------------------------------------------------------------------------------------------
def _with_index(env) -> Path:
    from cache.index import load_index, write_index

    fp = read_fingerprint(env["folder"])
    return write_index(env["folder"], load_index(env["folder"], fp), fp)


INDEX_CASES = {
    "key_shard out of range": ("key_shard", lambda f, n, i: f.create_dataset(n, data=i["data"] + 7)),
    "negative key_row": ("key_row", lambda f, n, i: f.create_dataset(n, data=i["data"] - 9)),
    "key_row as floats": ("key_row", lambda f, n, i: f.create_dataset(n, data=i["data"].astype(float))),
    "key of 2^34 rows": ("key", lambda f, n, i: _declare(f, n, i, (BIG,))),
    "key_shard shorter than key": ("key_shard", lambda f, n, i: f.create_dataset(n, data=i["data"][:1])),
    "key as an external link to a FIFO": ("key", "fifo"),
    "key_row as a virtual dataset": ("key_row", "virtual"),
    "shards as external storage": ("shards", "external"),
}


@pytest.mark.parametrize("case", sorted(INDEX_CASES))
def test_a_hostile_index_is_ignored_the_shards_are_read_and_repair_rebuilds_it(env, case, caplog):
    index = _with_index(env)
    name, make = INDEX_CASES[case]
    make = {"fifo": external_fifo(env["fifo"]), "virtual": virtual(env["fifo"]),
            "external": external_storage(env["fifo"])}.get(make, make)
    _replace(index, name, make)
    with no_hang():
        cache = FeatureCache(env["folder"])
        assert len(cache) == 4 and cache.get(cache.key_for("dump", "i2.jpg")) is not None  # never wrong
        assert str(index) in caplog.text and "ignoring unreadable index" in caplog.text
        assert [b["file"] for b in verify_cache(env["root"])["broken"]] == [str(index)]
        assert repair_folder(env["folder"], read_fingerprint(env["folder"]))["index_rebuilt"]
        assert verify_cache(env["root"])["broken"] == []


@pytest.mark.parametrize("kind", ["symlink", "FIFO"])
def test_an_index_that_is_not_a_regular_file_is_never_opened(env, kind):
    index = env["folder"] / "index.h5"
    os.symlink(env["fifo"], index) if kind == "symlink" else os.mkfifo(index)
    with no_hang():
        assert len(FeatureCache(env["folder"])) == 4
        assert [b["file"] for b in verify_cache(env["root"])["broken"]] == [str(index)]


# ---- extract-features repairs ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["dataset external link", "bomb", "FIFO shard"])
def test_repair_sets_a_hostile_shard_aside(env, kind):
    if kind == "FIFO shard":
        env["shard"].unlink()
        os.mkfifo(env["shard"])
    else:
        _replace(env["shard"], "orig", external_fifo(env["fifo"]) if kind.endswith("link") else BOMBS["keys of 2^34 rows"][1])
    with no_hang():
        result = repair_folder(env["folder"], read_fingerprint(env["folder"]))
    assert [d["shard"] for d in result["damaged"]] == [env["shard"].name]
    assert env["shard"].with_name(env["shard"].name + ".damaged").exists() and not env["shard"].exists()
    assert len(FeatureCache(env["folder"])) == 0  # what it held is missing: the next plan recomputes it


@pytest.mark.slow
@pytest.mark.parametrize("attack", ["external link", "virtual", "bomb"])
def test_extract_rerun_repairs_and_tag_exits_2_on_a_hostile_shard(world, tmp_path, attack):
    cache_dir = tmp_path / "cache"
    shutil.copytree(world["root"] / "cache", cache_dir)
    (folder,) = [p for p in cache_dir.iterdir() if p.is_dir()]
    shard = sorted(folder.glob("shard-*.h5"))[0]
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    make = {"external link": external_fifo(fifo), "virtual": virtual(fifo),
            "bomb": lambda f, n, i: _declare(f, n, i, (BIG,) + i["shape"][1:])}[attack]
    _replace(shard, "orig", make)
    out = tmp_path / "out"
    with no_hang(120):
        res = cli("tag-corpus", world["root"] / "data" / "tweets.jsonl.gz", "--model", world["ckpt"], "--out", out,
                  *sets(cache_dir=cache_dir, device="cpu", workers=0, batch_size=8))
        assert res.exit_code == 2 and shard.name in res.stderr and "Traceback" not in res.stderr, res.stderr
        res = cli(*map(str, world["extract"]), *sets(cache_dir=cache_dir))
    assert res.exit_code == 0, res.stderr
    summary = json.loads(res.stdout)
    assert [d["shard"] for d in summary["damaged_shards"]] == [shard.name] and summary["computed"] >= 1
    assert verify_cache(cache_dir)["broken"] == []
    with no_hang(120):
        again = cli(*map(str, world["extract"]), *sets(cache_dir=cache_dir))
    assert again.exit_code == 0 and json.loads(again.stdout)["computed"] == 0


def test_declared_but_never_written_data_is_caught_by_verify_and_repair(env):
    _replace(env["shard"], "orig", lambda f, n, i: _declare(f, n, i, i["shape"]))  # right shape, no chunk stored
    assert len(FeatureCache(env["folder"])) == 4  # within the file's size: the reader's cheap bound lets it pass
    (bad,) = verify_cache(env["root"])["broken"]
    assert bad["file"] == str(env["shard"]) and "stores 0" in bad["reason"]
    result = repair_folder(env["folder"], read_fingerprint(env["folder"]))
    assert [d["shard"] for d in result["damaged"]] == [env["shard"].name]

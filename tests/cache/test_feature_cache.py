"""HDF5 feature cache: round trip, aliases and "no image", fingerprint checks, shard atomicity, lock, dedup."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import helpers
import h5py
import numpy as np
import pytest
from helpers import fake_fingerprint, fake_rows

from cache import CacheWriter, open_cache
from cache.writer import OWN_FILES
from exit_codes import LockHeldError, UsageError

REPO = helpers.ROOT


def _keys(n, prefix="a"):
    return [f"{prefix}{i:063d}" for i in range(n)]


def test_round_trip_aliases_and_no_image(tmp_path):
    assert open_cache(tmp_path / "nothing") is None
    fp = fake_fingerprint()
    keys = _keys(5)
    rows = fake_rows(keys)
    with CacheWriter(tmp_path, fp, shard_size=2, dtype="float16") as w:
        w.add_rows({k: v[:3] for k, v in rows.items()})
        w.add_rows({k: v[3:] for k, v in rows.items()})
        for i, k in enumerate(keys):
            w.add_alias("twitter2015", f"{i}.jpg", k)
        w.add_alias("dump", "img/copy.jpg", keys[0])
        w.add_alias("twitter2015", "bad.jpg", None)
        w.add_reject({"source": "twitter2015", "image_id": "bad.jpg", "path": "x", "kind": "image",
                      "reason": "truncated", "key": "f" * 64})
    cache = open_cache(tmp_path)
    assert cache is not None and cache.fingerprint_id == fp["id"]
    assert cache.spec.dim == 8 and cache.spec.max_crops == 2
    assert len(sorted(cache.folder.glob("shard-*.h5"))) == 3
    assert sorted(cache.keys()) == sorted(keys)
    for i, k in enumerate(keys):
        got = cache.get(k)
        assert got["orig"].dtype == np.float16
        np.testing.assert_allclose(got["orig"], rows["orig"][i], atol=2e-3, rtol=2e-3)
        np.testing.assert_array_equal(got["grounding_mask"], rows["grounding_mask"][i])
        assert bool(got["orig_mask"])
    assert cache.key_for("dump", "img/copy.jpg") == keys[0]
    assert cache.key_for("twitter2015", "bad.jpg") is None
    assert cache.alias_status("twitter2015", "bad.jpg") == "no image"
    assert cache.alias_status("twitter2015", "nope.jpg") == "unknown"
    out = cache.lookup([("twitter2015", "1.jpg"), ("twitter2015", "bad.jpg"), ("x", "y")])
    assert out[0] is not None and out[1] is None and out[2] is None
    assert cache.rejected_keys() == {"f" * 64: "truncated"}
    rejects = [json.loads(line) for line in (cache.folder / "rejects.jsonl").read_text().splitlines()]
    assert rejects[0]["reason"] == "truncated"
    # the collate function of the model accepts what the cache returns
    from rpihmif.visual import collate_visual
    vb = collate_visual(out, cache.spec)
    assert vb.orig.shape == (3, 5, 8) and vb.orig_mask.tolist() == [True, False, False]
    # same answers from the index file and from a bare shard scan
    (cache.folder / "index.h5").unlink()
    again = open_cache(tmp_path)
    assert sorted(again.keys()) == sorted(keys) and again.aliases() == cache.aliases()


def test_index_misses_shards_after_crash_still_correct(tmp_path):
    fp = fake_fingerprint()
    with CacheWriter(tmp_path, fp, shard_size=4) as w:
        w.add_rows(fake_rows(_keys(2)))
    w2 = CacheWriter(tmp_path, fp, shard_size=4)
    w2.add_rows(fake_rows(_keys(2, "b")))
    w2.commit()  # renamed but index.h5 not rewritten (as if killed here)
    w2.abort()
    cache = open_cache(tmp_path)
    assert sorted(cache.keys()) == sorted(_keys(2) + _keys(2, "b"))


def test_fingerprint_mismatch_is_clear_usage_error(tmp_path):
    fp_a, fp_b = fake_fingerprint("aaaaaaaaaaaaaaaa"), fake_fingerprint("bbbbbbbbbbbbbbbb")
    with CacheWriter(tmp_path, fp_a) as w:
        w.add_rows(fake_rows(_keys(1)))
    with pytest.raises(UsageError) as err:
        open_cache(tmp_path, "bbbbbbbbbbbbbbbb")
    assert "aaaaaaaaaaaaaaaa" in str(err.value) and "bbbbbbbbbbbbbbbb" in str(err.value)
    assert open_cache(tmp_path, "aaaaaaaaaaaaaaaa").fingerprint_id == "aaaaaaaaaaaaaaaa"
    # a shard of encoder B copied into A's folder is refused on read, naming both encoders
    with CacheWriter(tmp_path, fp_b) as w:
        w.add_rows(fake_rows(_keys(1, "c")))
    with pytest.raises(UsageError, match="several encoders"):
        open_cache(tmp_path)
    shard_b = next((tmp_path / fp_b["id"]).glob("shard-*.h5"))
    os.replace(shard_b, tmp_path / fp_a["id"] / shard_b.name)
    with pytest.raises(UsageError) as err:
        open_cache(tmp_path, fp_a["id"]).keys()
    assert "test encoder aaaaaaaaaaaaaaaa" in str(err.value) and "test encoder bbbbbbbbbbbbbbbb" in str(err.value)
    # the writer refuses a folder whose fingerprint.json is of another encoder
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / fp_a["id"]).mkdir()
    (tmp_path / "x" / fp_a["id"] / "fingerprint.json").write_text(json.dumps(fp_b))
    with pytest.raises(UsageError, match="not"):
        CacheWriter(tmp_path / "x", fp_a)


def test_second_writer_is_locked_out(tmp_path):
    fp = fake_fingerprint()
    w = CacheWriter(tmp_path, fp)
    with pytest.raises(LockHeldError):
        CacheWriter(tmp_path, fp)
    w.close()
    CacheWriter(tmp_path, fp).close()


def test_killed_writer_leaves_no_visible_half_shard(tmp_path):
    """A writer SIGKILLed mid-shard leaves nothing of that shard (it is built in memory); readers see the committed
    shards only."""
    script = textwrap.dedent(f"""
        import os, signal, sys
        sys.path[:0] = [{str(REPO)!r}, {str(REPO / 'tests')!r}]
        from helpers import fake_fingerprint, fake_rows
        from cache import CacheWriter
        w = CacheWriter({str(tmp_path)!r}, fake_fingerprint(), shard_size=3)
        w.add_rows(fake_rows(["a" * 64, "b" * 64, "c" * 64]))   # one full shard: committed
        w.add_rows(fake_rows(["d" * 64, "e" * 64]))             # half a shard, in memory
        w._file.flush()
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=120)
    assert proc.returncode == -9, proc.stderr.decode()
    folder = tmp_path / fake_fingerprint()["id"]
    assert list(folder.glob(".shard-*.tmp-*")) == []
    cache = open_cache(tmp_path)
    assert sorted(cache.keys()) == ["a" * 64, "b" * 64, "c" * 64]
    with h5py.File(next(folder.glob("shard-*.h5")), "r") as f:
        assert f.attrs["rows"] == 3
    # a run killed while writing any of its own files (fingerprint.json, index.h5, ...) leaves such a temp too
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    planted = [folder / f".{name}.tmp-{gone.pid}-x" for name in OWN_FILES]
    for path in planted:
        path.write_text("half")
    CacheWriter(tmp_path, fake_fingerprint()).close()  # the next writer removes the stale temp files
    assert not list(folder.glob(".*.tmp-*")) and not any(p.exists() for p in planted)


def test_reader_is_fork_and_pickle_safe(tmp_path):
    import pickle
    fp = fake_fingerprint()
    with CacheWriter(tmp_path, fp) as w:
        w.add_rows(fake_rows(_keys(2)))
    cache = open_cache(tmp_path)
    first = cache.get(_keys(2)[0])
    clone = pickle.loads(pickle.dumps(cache))
    assert clone._handles == {}
    np.testing.assert_array_equal(clone.get(_keys(2)[0])["orig"], first["orig"])
    pid = os.fork()
    if pid == 0:  # child: must open its own handle, not reuse the parent's
        ok = np.array_equal(cache.get(_keys(2)[0])["orig"], first["orig"])
        os._exit(0 if ok else 1)
    _, status = os.waitpid(pid, 0)
    assert os.WEXITSTATUS(status) == 0

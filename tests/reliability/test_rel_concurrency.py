"""Concurrency through the CLI: two tag-corpus runs on one output, two extract-features runs on one cache, readers mid-write.

A run is parked at an exact point (fault runner "wait") so the overlap is deterministic, then released to finish.
"""
from __future__ import annotations

import pandas as pd
import pyarrow.parquet as pq
import pytest
import helpers
from rel_helpers import (
    cache_snapshot,
    cli,
    extract_sets,
    finish,
    readable_cache_state,
    sets,
    spawn,
    tag_sets,
    wait_file,
)

from pipeline.tag.manifest import data_folder


@pytest.mark.slow
def test_second_tag_corpus_on_same_output_exits_3(tag_world, tmp_path):
    dump = helpers.write_dump(tmp_path / "d" / "a.jsonl", helpers.tweets(40, tag_world["images"]))
    out, log, ready, go = tmp_path / "out", tmp_path / "a.log", tmp_path / "ready", tmp_path / "go"
    args = ["tag-corpus", dump, "--model", tag_world["ckpt"], "--out", out, *sets(**tag_sets(tag_world, out))]
    proc = spawn(args, log, {"target": "pipeline.tag.parquet_parts:PartWriter.add", "nth": 2, "when": "after",
                             "action": "wait", "ready": str(ready), "until": str(go)})
    try:
        wait_file(ready, proc, log)  # first run holds the lock, mid-file
        res = cli(*args)
        assert res.exit_code == 3 and f"pid {proc.pid}" in res.stderr and "wait for it" in res.stderr, res.stderr
        for part in data_folder(out).iterdir():  # a reader sees committed chunks only, each whole
            assert pq.read_table(part).num_rows == 16
    finally:
        go.touch()
    assert finish(proc, log) == 0, log.read_text()[-3000:]
    assert sorted(pd.read_parquet(data_folder(out))["id"]) == sorted(f"t{i}" for i in range(40))


@pytest.mark.slow
def test_two_extract_runs_on_one_cache(tiny_clip_dir, extract_inputs, tmp_path):
    cache, log, ready, go = tmp_path / "cache", tmp_path / "a.log", tmp_path / "ready", tmp_path / "go"
    args = ["extract-features", *sets(**extract_sets(tiny_clip_dir, extract_inputs, cache)),
            "--dump", extract_inputs["dump"]]
    # A: parked mid-shard, lock held, one shard already committed
    proc = spawn(args, log, {"target": "cache.writer:CacheWriter.add_rows", "nth": 2, "when": "after",
                             "action": "wait", "ready": str(ready), "until": str(go)})
    try:
        wait_file(ready, proc, log)
        assert readable_cache_state(cache) == 3  # readers see the finished shard only, never the temp one
        res = cli(*args)  # B: same cache while A writes -> the writer lock refuses it
        assert res.exit_code == 3 and "another extract-features run" in res.stderr, res.stderr
    finally:
        go.touch()
    assert finish(proc, log) == 0, log.read_text()[-3000:]
    complete = cache_snapshot(cache)

    # C planned its work before A finished and takes the lock after: it must not store A's rows a second time
    cache2, ready2, go2 = tmp_path / "cache2", tmp_path / "ready2", tmp_path / "go2"
    args2 = [a.replace(str(cache), str(cache2)) for a in map(str, args)]
    proc = spawn(args2, log, {"target": "cache.writer:CacheWriter.__init__", "nth": 1, "when": "before",
                              "action": "wait", "ready": str(ready2), "until": str(go2)})
    try:
        wait_file(ready2, proc, log)
        assert cli(*args2).exit_code == 0  # another run fills the cache meanwhile
    finally:
        go2.touch()
    assert finish(proc, log) == 0, log.read_text()[-3000:]
    snap = cache_snapshot(cache2)  # asserts every key is stored once and no reject is recorded twice
    assert {k: set(v["features"]) for k, v in snap.items()} == {k: set(v["features"]) for k, v in complete.items()}

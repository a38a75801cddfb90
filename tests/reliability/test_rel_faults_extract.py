"""Fault injection on extract-features: SIGKILL early, mid-shard, during the shard rename and before the index update.

One killed CLI run after another on the same cache, then a rerun: keys, values, aliases and rejects equal an uninterrupted run.
"""
from __future__ import annotations

from pathlib import Path

import pytest
from rel_helpers import (
    assert_same_cache,
    cache_snapshot,
    cli,
    extract_sets,
    finish,
    hidden_leftovers,
    kill_when,
    readable_cache_state,
    sets,
    spawn,
)


def _folder(cache: Path) -> Path:
    return next(p for p in cache.iterdir() if p.is_dir())


@pytest.mark.slow
def test_extract_killed_at_each_point_then_rerun_equals_uninterrupted(tiny_clip_dir, extract_inputs, tmp_path):
    dump = extract_inputs["dump"]
    ref = tmp_path / "ref"
    res = cli("extract-features", *sets(**extract_sets(tiny_clip_dir, extract_inputs, ref)), "--dump", dump)
    assert res.exit_code == 0, res.stderr
    want = cache_snapshot(ref)

    cache = tmp_path / "cache"
    args = ["extract-features", *sets(**extract_sets(tiny_clip_dir, extract_inputs, cache)), "--dump", dump]
    log = tmp_path / "run.log"

    # 1. early: killed as soon as the plan is memoised (before the writer exists)
    proc = spawn(args, log)
    kill_when(proc, lambda: (cache / ".extract_memo.json").exists(), log)
    assert not list(cache.glob("*/shard-*.h5"))

    # 2. mid-shard: killed while a shard's temp file is on disk but not yet fsynced (shards are built in memory and
    # written whole at commit, so this is the only moment a part of one is on disk)
    proc = spawn(args, log, {"target": "os.fsync", "match": "/.shard-", "nth": 1, "when": "before", "action": "kill"})
    assert finish(proc, log) == -9, log.read_text()[-3000:]
    seen_mid = readable_cache_state(cache)  # only finished shards are visible; every key reads back

    # 3. during the rename: killed with the next shard complete under its temp name
    proc = spawn(args, log, {"target": "os.replace", "match": "/.shard-", "nth": 1, "when": "before", "action": "kill"})
    assert finish(proc, log) == -9, log.read_text()[-3000:]
    assert list(_folder(cache).glob(".shard-*.tmp-*")), "the kill should leave a finished temp shard"
    assert readable_cache_state(cache) == seen_mid  # the finished temp shard is invisible

    # 4. after the rename, before the index: a shard index.h5 does not name yet
    proc = spawn(args, log, {"target": "os.replace", "match": "/.shard-", "nth": 1, "when": "after", "action": "kill"})
    assert finish(proc, log) == -9, log.read_text()[-3000:]
    assert readable_cache_state(cache) > seen_mid  # found by scanning the shards, without the index

    res = cli(*args)
    assert res.exit_code == 0, res.stderr
    assert_same_cache(want, cache_snapshot(cache))
    assert hidden_leftovers(cache) == []  # stale temp shards of the killed runs are gone
    again = cli(*args)  # a complete cache: nothing recomputed, nothing duplicated
    assert again.exit_code == 0 and '"to_compute": 0' in again.stdout
    assert_same_cache(want, cache_snapshot(cache))

"""Fault injection on tag-corpus: SIGKILL early, mid-row-group, between a part's rename and the manifest, during a rename.

Killed CLI runs follow each other on one output folder; the rerun redoes only uncommitted chunks and its rows and
rejects equal an uninterrupted run's.
"""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest
import helpers
from rel_helpers import cli, finish, kill_when, sets, spawn, tag_sets

from pipeline.tag.manifest import data_folder, read_state

BAD = [b'{"id": "bad1", "text": 5}', b'{"id": "bad2", "text": "cut']


def _rows(out: Path) -> pd.DataFrame:
    df = pd.read_parquet(data_folder(out))  # the data folder as any reader sees it
    return df.sort_values(["id", "source"]).drop(columns=["tagged_at"]).reset_index(drop=True)


def _visible(out: Path) -> list[str]:
    data = data_folder(out)
    return sorted(p.name for p in data.iterdir()) if data.exists() else []


def _chunks(out: Path) -> dict:
    state = read_state(out)
    return state["chunks"] if state else {}


@pytest.mark.slow
def test_tag_killed_at_each_point_then_rerun_equals_uninterrupted(tag_world, tmp_path):
    dumps = tmp_path / "dumps"
    helpers.write_dump(dumps / "a.jsonl", helpers.tweets(70, tag_world["images"]), BAD)  # 72 lines: 5 chunks of 16
    helpers.write_dump(dumps / "b.jsonl.gz", [{**r, "id": "b" + r["id"]} for r in helpers.tweets(40, seed=1)])  # 3 chunks
    ref, out, log = tmp_path / "ref", tmp_path / "out", tmp_path / "run.log"
    res = cli("tag-corpus", dumps, "--model", tag_world["ckpt"], "--out", ref, *sets(**tag_sets(tag_world, ref)))
    assert res.exit_code == 0, res.stderr
    args = ["tag-corpus", str(dumps), "--model", str(tag_world["ckpt"]), "--out", str(out),
            *sets(**tag_sets(tag_world, out))]

    # 1. early: polled until the first chunk's temp part appears (outside data/)
    proc = spawn(args, log)
    kill_when(proc, lambda: bool(list(out.glob("_staging/.a-*.parquet.tmp-*"))), log)
    assert _visible(out) == []

    # 2. mid-row-group: right after the first row group went into the temp file
    proc = spawn(args, log, {"target": "pipeline.tag.parquet_parts:PartWriter._flush", "nth": 1, "when": "after",
                             "action": "kill"})
    assert finish(proc, log) == -9, log.read_text()[-3000:]
    assert _visible(out) == [] and not _chunks(out)

    # 3. the first part renamed into data/, killed before the commit log names it: a whole file, never half
    proc = spawn(args, log, {"target": "pipeline.tag.manifest:Manifest.record_chunk", "nth": 1, "when": "before",
                             "action": "kill"})
    assert finish(proc, log) == -9, log.read_text()[-3000:]
    (orphan,) = _visible(out)
    assert pq.read_table(data_folder(out) / orphan).num_rows == 16 and not _chunks(out)

    # 4. the orphan removed, one chunk committed and recorded; killed during the second part's rename
    proc = spawn(args, log, {"target": "os.replace", "match": ".parquet.tmp-", "nth": 2, "when": "before",
                             "action": "kill"})
    assert finish(proc, log) == -9, log.read_text()[-3000:]
    assert len(_visible(out)) == 1 and [c["output"] for c in _chunks(out).values()] == _visible(out)

    res = cli(*args)
    assert res.exit_code == 0, res.stderr
    summary = json.loads(res.stdout)
    assert (summary["tagged"], summary["chunks"]) == (2, 7)  # the committed chunk was kept, only 7 were redone
    want, got = _rows(ref), _rows(out)
    assert list(got["id"]) == list(want["id"]) and len(set(got["id"])) == 110  # nothing lost or duplicated
    assert got.drop(columns=["entities"]).equals(want.drop(columns=["entities"]))
    assert [[(e["text"], e["type"]) for e in x] for x in got["entities"]] == \
        [[(e["text"], e["type"]) for e in x] for x in want["entities"]]
    rejects = sorted((out / "_rejects.jsonl").read_text().splitlines())
    assert rejects == sorted((ref / "_rejects.jsonl").read_text().splitlines()) and len(rejects) == 2
    assert not [p for p in out.rglob("*") if ".tmp-" in p.name]
    assert len(_chunks(out)) == 8 and sum(c["rows"] for c in _chunks(out).values()) == 110

"""Fault injection on tag-corpus: SIGKILL early, mid-row-group, between the Parquet rename and the manifest, during a rename.

Killed CLI runs follow each other on one output folder; the rerun's rows and rejects equal an uninterrupted run's.
"""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import tag_fixtures as tf
from rel_helpers import cli, finish, kill_when, sets, spawn, tag_sets

BAD = [b'{"id": "bad1", "text": 5}', b'{"id": "bad2", "text": "cut']


def _rows(out: Path) -> pd.DataFrame:
    df = pd.read_parquet(out)  # the folder as any reader sees it: hidden temps and _manifest/_rejects skipped
    return df.sort_values("id").reset_index(drop=True)


def _visible(out: Path) -> list[str]:
    return sorted(p.name for p in out.iterdir() if not p.name.startswith((".", "_")))


@pytest.mark.slow
def test_tag_killed_at_each_point_then_rerun_equals_uninterrupted(tag_world, tmp_path):
    dumps = tmp_path / "dumps"
    a = tf.write_dump(dumps / "a.jsonl", tf.tweets(70, tag_world["images"]), BAD)
    b = tf.write_dump(dumps / "b.jsonl.gz", [{**r, "id": "b" + r["id"]} for r in tf.tweets(40, seed=1)])
    ref, out, log = tmp_path / "ref", tmp_path / "out", tmp_path / "run.log"
    res = cli("tag-corpus", dumps, "--model", tag_world["ckpt"], "--out", ref, *sets(**tag_sets(tag_world, ref)))
    assert res.exit_code == 0, res.stderr
    args = ["tag-corpus", str(dumps), "--model", str(tag_world["ckpt"]), "--out", str(out),
            *sets(**tag_sets(tag_world, out))]

    # 1. early: polled until the temp Parquet of the first input appears
    proc = spawn(args, log)
    kill_when(proc, lambda: out.exists() and bool(list(out.glob(".a.parquet.tmp-*"))), log)
    assert _visible(out) == []

    # 2. mid-row-group: right after the first row group went into the temp file
    proc = spawn(args, log, {"target": "pipeline.tag.parquet_parts:PartWriter._flush", "nth": 1, "when": "after",
                             "action": "kill"})
    assert finish(proc, log) == -9, log.read_text()[-3000:]
    assert _visible(out) == [] and not (out / "_manifest.json").exists()

    # 3. a.parquet renamed into place, killed before the manifest names it
    proc = spawn(args, log, {"target": "os.replace", "match": "/._manifest.json.tmp-", "nth": 1, "when": "before",
                             "action": "kill"})
    assert finish(proc, log) == -9, log.read_text()[-3000:]
    assert _visible(out) == ["a.parquet"] and len(_rows(out)) == 70  # complete, never half

    # 4. a re-tagged and recorded; killed during b's rename (its temp Parquet complete)
    proc = spawn(args, log, {"target": "os.replace", "match": ".parquet.tmp-", "nth": 2, "when": "before",
                             "action": "kill"})
    assert finish(proc, log) == -9, log.read_text()[-3000:]
    assert _visible(out) == ["a.parquet"]
    assert list(json.loads((out / "_manifest.json").read_text())["inputs"]) == [str(a.resolve())]

    res = cli(*args)
    assert res.exit_code == 0, res.stderr
    summary = json.loads(res.stdout)
    assert (summary["tagged"], summary["skipped"]) == (1, 1)  # a was kept, only b was redone
    want, got = _rows(ref), _rows(out)
    assert list(got["id"]) == list(want["id"]) and len(set(got["id"])) == 110  # nothing lost or duplicated
    assert got.drop(columns=["entities"]).equals(want.drop(columns=["entities"]))
    assert [[(e["text"], e["type"]) for e in x] for x in got["entities"]] == \
        [[(e["text"], e["type"]) for e in x] for x in want["entities"]]
    rejects = sorted((out / "_rejects.jsonl").read_text().splitlines())
    assert rejects == sorted((ref / "_rejects.jsonl").read_text().splitlines()) and len(rejects) == 2
    assert [p.name for p in out.iterdir() if p.name.startswith(".") and p.name != ".lock"] == []
    manifest = json.loads((out / "_manifest.json").read_text())["inputs"]
    assert {k: v["rows"] for k, v in manifest.items()} == {str(a.resolve()): 70, str(b.resolve()): 40}

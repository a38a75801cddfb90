"""The tag-corpus commit log (`_state.sqlite`): one row per id per input across chunks, the input memo (an unchanged
file is not read again), rejects appended per commit and rebuilt when superseded, migration of version-2 outputs,
max_reject_rate, and date partitions read by every Parquet reader with pruning.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import sqlite3
import time

import pytest
from helpers import assert_live_rows, null_tag, records, write_dump

from exit_codes import PipelineError, UsageError
from pipeline.tag.manifest import MANIFEST_NAME, REJECTS_NAME, STATE_NAME, data_folder, read_state


def _old(path):
    """Date the file back so that its stamp is remembered (a file written this very second may still change)."""
    t = time.time() - 60
    os.utime(path, (t, t))
    return path


def test_same_id_in_two_chunks_of_one_input_is_kept_once(tmp_path):
    recs = records("t", 30)
    recs[25] = {**recs[25], "id": "t3"}  # chunk 3 repeats an id of chunk 1
    recs.append({"id": 3, "text": "integer id 3 is not t3"})
    dump = write_dump(tmp_path / "d.jsonl", recs)
    out = tmp_path / "out"
    s = null_tag([dump], out)
    assert (s["rows"], s["rejects"]) == (30, 1)
    (rej,) = [json.loads(x) for x in (out / REJECTS_NAME).read_text().splitlines()]
    assert rej["line"] == 26 and rej["id"] == "t3" and "duplicate id" in rej["reason"]
    assert_live_rows(out, [r["id"] for r in records("t", 30) if r["id"] != "t25"] + ["3"])
    # appended: the new lines see the ids of the lines before them
    with open(dump, "ab") as fh:
        fh.write(b'{"id": "t7", "text": "again"}\n{"id": "new", "text": "fresh"}\n')
    s = null_tag([dump], out)
    assert (s["rows"], s["rejects"]) == (1, 1)
    assert_live_rows(out, [r["id"] for r in records("t", 30) if r["id"] != "t25"] + ["3", "new"])
    # re-tagged with --force: the same rows, not doubled, and the rejects file rebuilt without repeats
    null_tag([dump], out, force="true")
    assert_live_rows(out, [r["id"] for r in records("t", 30) if r["id"] != "t25"] + ["3", "new"])
    assert len((out / REJECTS_NAME).read_text().splitlines()) == 2


def test_unchanged_inputs_are_not_read_again(tmp_path, monkeypatch):
    dumps = [_old(write_dump(tmp_path / "in" / f"d{i}.jsonl", records(f"d{i}-", 12))) for i in range(5)]
    out = tmp_path / "out"
    assert null_tag(dumps, out)["inputs_read"] == 5
    import builtins

    real, opened = builtins.open, []
    monkeypatch.setattr(builtins, "open", lambda f, *a, **k: (opened.append(os.fspath(f)) if isinstance(
        f, (str, os.PathLike)) else None) or real(f, *a, **k))
    again = null_tag([tmp_path / "in"], out)
    monkeypatch.undo()
    assert (again["inputs_read"], again["skipped"]) == (0, 5)
    assert not [p for p in opened if p.endswith(".jsonl")]
    # a changed stamp is read again (same bytes: nothing re-tagged)
    os.utime(dumps[0])
    third = null_tag(dumps, out)
    assert (third["inputs_read"], third["chunks"], third["skipped"]) == (1, 0, 5)


def test_rejects_are_appended_and_repaired_after_a_kill(tmp_path):
    out = tmp_path / "out"
    a = write_dump(tmp_path / "a.jsonl", records("a", 10), [b"{bad"])
    null_tag([a], out)
    b = write_dump(tmp_path / "b.jsonl", records("b", 10), [b"[1]"])
    null_tag([a, b], out)
    lines = (out / REJECTS_NAME).read_text().splitlines()
    assert [json.loads(x)["file"].rsplit("/", 1)[1] for x in lines] == ["a.jsonl", "b.jsonl"]
    with open(out / REJECTS_NAME, "r+b") as fh:  # killed between a commit and its append
        fh.truncate(len(lines[0]) + 1)
    null_tag([a, b], out)
    assert (out / REJECTS_NAME).read_text().splitlines() == lines


def test_version_2_output_is_migrated_once_in_place(tmp_path, caplog):
    dump = write_dump(tmp_path / "d.jsonl", records("t", 25), [b"{bad"])
    out = tmp_path / "out"
    null_tag([dump], out)
    state = read_state(out)
    v2 = {"version": 2, "inputs": {k: {**{c: v[c] for c in ("sha256", "size", "paths", "lines", "first_seen")},
                                       "ends_newline": bool(v["ends_newline"]), "complete": v["complete"]}
                                   for k, v in state["inputs"].items()},
          "chunks": {k: {c: v[c] for c in v if not c.startswith("part_") and c != "key"}
                     for k, v in state["chunks"].items()}}
    db = sqlite3.connect(out / STATE_NAME)
    (out / "_rejects.d").mkdir()
    for key, body in db.execute("SELECT key, body FROM rejects"):
        stem = state["chunks"][key]["output"].rsplit(".", 1)[0]
        (out / "_rejects.d" / f"{stem}.jsonl").write_text(body)
    db.close()
    (out / STATE_NAME).unlink()
    (out / MANIFEST_NAME).write_text(json.dumps(v2))
    with caplog.at_level(logging.INFO, logger="rpihmif.tag"):
        again = null_tag([dump], out)
    assert (again["chunks"], again["skipped"]) == (0, 1)
    assert len([r for r in caplog.messages if r.startswith("migrated")]) == 1
    assert (out / (MANIFEST_NAME + ".v2")).exists() and not (out / MANIFEST_NAME).exists()
    assert read_state(out)["chunks"].keys() == state["chunks"].keys()
    assert len((out / REJECTS_NAME).read_text().splitlines()) == 1
    assert_live_rows(out, [f"t{i}" for i in range(25)])


def test_mostly_rejected_input_exits_1_naming_it_and_its_reasons(tmp_path):
    good = write_dump(tmp_path / "good.jsonl", records("g", 20))
    bad = write_dump(tmp_path / "bad.jsonl", records("b", 4), [b"{bad json"] * 5 + [b'{"id": "x"}'] * 2)
    out = tmp_path / "out"
    with pytest.raises(PipelineError, match=r"bad\.jsonl: 7 of 11 records rejected \(max_reject_rate=0\.5\): "
                                            r"5 x bad JSON: .*; 2 x missing text field") as err:
        null_tag([good, bad], out)
    assert "(" not in str(err.value).split("missing text field")[1]  # reasons whole, not cut inside a parenthesis
    assert_live_rows(out, [f"g{i}" for i in range(20)] + [f"b{i}" for i in range(4)])  # the rest committed
    assert null_tag([good, bad], out, max_reject_rate=0.9)["skipped"] == 2


def test_partitioned_output_reads_as_the_live_rows_and_prunes_by_date(tmp_path):
    import duckdb
    import pandas as pd
    import polars as pl
    import pyarrow.dataset as ds

    out = tmp_path / "out"
    night1 = write_dump(tmp_path / "n1.jsonl", records("a", 25))
    null_tag([night1], out, partition_by="tagged_date")
    day = time.strftime("dt=%Y-%m-%d", time.gmtime())
    folder = data_folder(out) / day
    assert sorted(p.name for p in data_folder(out).iterdir()) == [day] and len(list(folder.iterdir())) == 3
    other = data_folder(out) / "dt=2020-01-01"  # as if an earlier night: moved with the log updated
    other.mkdir()
    db = sqlite3.connect(out / STATE_NAME)
    first = sorted(folder.iterdir())[0]
    shutil.move(first, other / first.name)
    db.execute("UPDATE chunks SET output = ? WHERE output = ?", (f"dt=2020-01-01/{first.name}", f"{day}/{first.name}"))
    db.commit()
    db.close()
    assert null_tag([night1], out, partition_by="tagged_date")["skipped"] == 1
    data = str(data_folder(out))
    want = sorted(f"a{i}" for i in range(25))
    assert sorted(pd.read_parquet(data)["id"]) == want
    assert sorted(ds.dataset(data, format="parquet", partitioning="hive").to_table()["id"].to_pylist()) == want
    assert sorted(pl.read_parquet(f"{data}/**/*.parquet", hive_partitioning=True)["id"].to_list()) == want
    con = duckdb.connect()
    scan = f"read_parquet('{data}/**/*.parquet', hive_partitioning = true)"
    assert sorted(r[0] for r in con.execute(f"SELECT id FROM {scan}").fetchall()) == want
    old = con.execute(f"SELECT count(*) FROM {scan} WHERE dt = '2020-01-01'").fetchone()[0]
    assert old == 10
    plan = "\n".join(r[1] for r in con.execute(f"EXPLAIN SELECT id FROM {scan} WHERE dt = '2020-01-01'").fetchall())
    assert "Total Files Read: 1" in plan or "File Filters" in plan or "dt" in plan, plan
    lazy = pl.scan_parquet(f"{data}/**/*.parquet", hive_partitioning=True).filter(pl.col("dt") == pl.date(2020, 1, 1))
    assert lazy.collect().height == 10 and "dt" in lazy.explain()
    hive = ds.dataset(data, format="parquet", partitioning=ds.partitioning(flavor="hive"))
    pruned = [f.path for f in hive.get_fragments(filter=ds.field("dt") == "2020-01-01")]
    assert [p.rsplit("/", 2)[1] for p in pruned] == ["dt=2020-01-01"]  # the other day's files are not opened
    assert hive.to_table(filter=ds.field("dt") == "2020-01-01").num_rows == 10
    with pytest.raises(UsageError, match="created with partition_by=tagged_date.*--set partition_by=tagged_date"):
        null_tag([night1], out, partition_by="none")

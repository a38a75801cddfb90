"""Attacks on a tag-corpus output's own state and on inputs that change under a run: crafted part paths, wrong types,
damaged parts, truncated / rewritten / cut inputs, work that explodes, an output inside its input folder.

Each case ends with the nothing-lost check: the rows are exactly the good records, every id once, and no file outside
the output folder was touched.
"""
from __future__ import annotations

import gzip
import logging
import os
import sqlite3
from pathlib import Path

import pytest
from helpers import assert_live_rows, files_outside, null_tag, records, write_dump

from exit_codes import InputError, PipelineError, UsageError
import pipeline.tag.stage as stage
from pipeline.tag.manifest import STATE_NAME, data_folder


def _ids(n: int, prefix: str = "t") -> list[str]:
    return [f"{prefix}{i}" for i in range(n)]


@pytest.fixture
def tagged(tmp_path):
    """An output of one 35-record dump (4 chunks of 10) and a victim file beside it."""
    dump = write_dump(tmp_path / "dumps" / "a.jsonl", records("t", 35))
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    out = tmp_path / "out"
    null_tag([dump], out)
    return dump, out, victim


def _sql(out: Path, sql: str, *args) -> None:
    db = sqlite3.connect(out / STATE_NAME)
    db.execute(sql, args)
    db.commit()
    db.close()


def _first_part(out: Path) -> Path:
    return sorted(data_folder(out).glob("*.parquet"))[0]


# ---- the output's own state is untrusted --------------------------------------------------------------------------
@pytest.mark.parametrize("crafted", ["../../victim.txt", "/etc/passwd", "../victim.txt", "dt=2026-01-01/../../x.parquet",
                                     ".hidden.parquet", "a/b/c.parquet", "dt=evil/x.parquet", "x.txt", ""])
def test_crafted_part_path_is_one_exit2_line_and_touches_nothing(tagged, tmp_path, crafted):
    dump, out, victim = tagged
    before = files_outside(tmp_path, out)
    _sql(out, "UPDATE chunks SET output = ? WHERE first_line = 1", crafted)
    with pytest.raises(InputError, match=f"{STATE_NAME}.*not a Parquet file inside data/"):
        null_tag([dump], out, force="true")
    assert victim.read_text() == "precious" and files_outside(tmp_path, out) == before


@pytest.mark.parametrize("column,value", [("first_line", "x"), ("rows", 1.5), ("model_id", b"\x07"), ("last_line", "y"),
                                          ("output", b"12"), ("ends_newline", b"\x01"), ("rejects", "many")])
def test_wrong_type_in_state_is_one_exit2_line_naming_the_file(tagged, column, value):
    dump, out, _ = tagged
    _sql(out, f"UPDATE chunks SET {column} = ? WHERE first_line = 11", value)
    with pytest.raises(InputError, match=f"{STATE_NAME}: column '{column}'"):
        null_tag([dump], out)


@pytest.mark.parametrize("damage", ["drop column", "drop table", "garbage", "empty meta"])
def test_damaged_state_file_is_one_exit2_line(tagged, damage):
    dump, out, _ = tagged
    if damage == "garbage":
        (out / STATE_NAME).write_bytes(b"not a database at all" * 100)
        for p in out.glob(STATE_NAME + "-*"):
            p.unlink()
    elif damage == "drop column":
        _sql(out, "ALTER TABLE chunks DROP COLUMN rows")
    elif damage == "drop table":
        _sql(out, "DROP TABLE inputs")
    else:
        _sql(out, "DELETE FROM meta")
    with pytest.raises(InputError, match=STATE_NAME):
        null_tag([dump], out)


@pytest.mark.parametrize("force", ["false", "true"])
def test_link_at_a_committed_part_is_exit2_and_never_followed(tagged, tmp_path, force):
    dump, out, victim = tagged
    part = _first_part(out)
    part.unlink()
    part.symlink_to(victim)
    with pytest.raises((InputError, UsageError), match="link"):  # both exit 2
        null_tag([dump], out, force=force)
    assert victim.read_text() == "precious" and part.is_symlink()


@pytest.mark.parametrize("damage", ["deleted", "garbage same size", "garbage other size", "another part's bytes",
                                    "truncated"])
def test_damaged_part_is_retagged_rows_never_lost_or_doubled(tagged, tmp_path, damage):
    dump, out, _ = tagged
    parts = sorted(data_folder(out).glob("*.parquet"))
    before = files_outside(tmp_path, out)
    victim = parts[1]
    if damage == "deleted":
        victim.unlink()
    elif damage == "garbage same size":
        victim.write_bytes(os.urandom(victim.stat().st_size))
    elif damage == "garbage other size":
        victim.write_bytes(b"PAR1 nope")
    elif damage == "another part's bytes":
        victim.write_bytes(parts[0].read_bytes())
    else:
        victim.write_bytes(victim.read_bytes()[:100])
    again = null_tag([dump], out)
    assert again["chunks"] == 1 and again["rows"] == 10
    assert_live_rows(out, _ids(35))
    assert files_outside(tmp_path, out) == before


def test_touched_part_is_checked_by_digest_and_kept(tagged):
    dump, out, _ = tagged
    part = _first_part(out)
    os.utime(part, ns=(1, 1))  # the stat changed, the bytes did not
    again = null_tag([dump], out)
    assert (again["chunks"], again["skipped"]) == (0, 1)
    assert_live_rows(out, _ids(35))


# ---- inputs that change under the run -----------------------------------------------------------------------------
def _change_after_planning(monkeypatch, change) -> None:
    real = stage.plan_input

    def plan_then_change(path, state, fresh):
        plan = real(path, state, fresh)
        change(path)
        return plan

    monkeypatch.setattr(stage, "plan_input", plan_then_change)


@pytest.mark.parametrize("how", ["truncated", "rewritten same size", "appended", "replaced by rename"])
def test_input_changed_after_hashing_stores_no_row_under_the_old_digest(tmp_path, monkeypatch, how):
    dump = write_dump(tmp_path / "d.jsonl", records("t", 40))
    new = records("n", 40) if how != "truncated" else records("t", 17)

    def change(path):
        if how == "replaced by rename":
            tmp = write_dump(tmp_path / "other.jsonl", new)
            os.replace(tmp, path)
        elif how == "appended":
            with open(path, "ab") as fh:
                fh.write(b'{"id": "late", "text": "late record"}\n')
        else:
            data = write_dump(tmp_path / "x.jsonl", new).read_bytes()
            if how == "rewritten same size":
                data = data[:os.path.getsize(path)].ljust(os.path.getsize(path), b"\n")
            with open(path, "r+b") as fh:
                fh.truncate(0)
                fh.write(data)

    _change_after_planning(monkeypatch, change)
    out = tmp_path / "out"
    with pytest.raises(PipelineError, match="changed while it was tagged"):
        null_tag([dump], out)
    assert not list(data_folder(out).rglob("*.parquet"))  # nothing stored under the digest taken before the change
    monkeypatch.undo()
    null_tag([dump], out)
    want = {"truncated": _ids(17), "appended": _ids(40) + ["late"]}.get(how)
    if how == "rewritten same size":
        want = sorted({r["id"] for r in records("n", 40)} & set(_ids_in(dump)))
    assert_live_rows(out, want if want is not None else _ids(40, "n"))


def _ids_in(path: Path) -> list[str]:
    import json

    found = []
    for line in path.read_bytes().splitlines():
        try:
            found.append(json.loads(line)["id"])
        except (ValueError, KeyError):
            pass
    return found


@pytest.mark.parametrize("cut", [0.3, 0.6, 0.95])
def test_cut_gzip_tail_is_not_done_the_completed_file_tags_the_rest(tmp_path, cut):
    full = gzip.compress(b"".join(f'{{"id": "g{i}", "text": "tweet number {i}"}}\n'.encode() for i in range(300)),
                         mtime=0)
    dump = tmp_path / "night.jsonl.gz"
    dump.write_bytes(full[: int(len(full) * cut)])
    out = tmp_path / "out"
    first = null_tag([dump], out, chunk=50)
    assert first["rejects"] == 1 and "ends early" in next(iter(first["reject_reasons"]))
    dump.write_bytes(full)  # the transfer completed
    null_tag([dump], out, chunk=50)
    assert_live_rows(out, _ids(300, "g"))


# ---- work bounded by the records ----------------------------------------------------------------------------------
def test_blank_lines_make_no_parts(tmp_path):
    dump = tmp_path / "blank.jsonl.gz"
    dump.write_bytes(gzip.compress(b"\n" * 2_000_000 + b'{"id": "x", "text": "only one"}\n' + b"\n" * 1000))
    out = tmp_path / "out"
    s = null_tag([dump], out, chunk=100_000)
    assert s["rows"] == 1 and len(list(data_folder(out).rglob("*.parquet"))) == 1
    assert_live_rows(out, ["x"])


def test_chunk_of_only_rejects_makes_no_part_but_keeps_its_rejects(tmp_path):
    dump = write_dump(tmp_path / "d.jsonl", records("t", 10), [b"{bad"] * 10 + [b'{"id": 1}'] * 5)
    out = tmp_path / "out"
    s = null_tag([dump], out, chunk=10, max_reject_rate=1.0)
    assert (s["rows"], s["rejects"], s["chunks"]) == (10, 15, 3)
    assert len(list(data_folder(out).glob("*.parquet"))) == 1
    assert len((out / "_rejects.jsonl").read_text().splitlines()) == 15
    assert null_tag([dump], out, chunk=10, max_reject_rate=1.0)["skipped"] == 1


# ---- an output inside its input folder ----------------------------------------------------------------------------
@pytest.mark.parametrize("inside", ["tagged", "deep/er/out", "_hidden_out"])
def test_output_inside_input_folder_never_reads_its_own_files(tmp_path, inside):
    dumps = tmp_path / "dumps"
    write_dump(dumps / "a.jsonl", records("t", 25), [b"{bad json"])
    out = dumps / inside
    for _ in range(3):
        s = null_tag([dumps], out)
        assert s["inputs"] == 1
    (out / "data" / "extra.jsonl").write_text('{"id": "own", "text": "planted in the output"}\n')
    assert null_tag([dumps], out)["inputs"] == 1
    (out / "data" / "extra.jsonl").unlink()
    assert_live_rows(out, _ids(25))


def test_workers_far_over_the_cpus_are_capped_with_a_warning(tmp_path, caplog, monkeypatch):
    asked = {}

    class OneProcess:  # stands in for the Ray executor: records how many workers it was given, tags in-process
        def __init__(self, cls, kwargs, workers, in_process, **_):
            asked["workers"], self.tagger = workers, cls(**kwargs)
            self.workers, self.in_process, self.description = 1, True, "in-process"

        def map_unordered(self, tasks):
            return map(self.tagger, tasks)

        def close(self):
            pass

    monkeypatch.setattr(stage, "Executor", OneProcess)
    dump = write_dump(tmp_path / "d.jsonl", records("t", 30))
    out = tmp_path / "out"
    with caplog.at_level(logging.WARNING, logger="rpihmif.tag"):
        s = null_tag([dump], out, workers=10000)
    assert s["rows"] == 30 and asked["workers"] == os.cpu_count()
    assert any("workers=10000 asks for more CPUs than this machine has" in m for m in caplog.messages)
    assert_live_rows(out, _ids(30))

"""tag-corpus end to end with a trained tiny checkpoint: Parquet rows, rejects, manifest, lock, crash safety, Ray.

Slow tests (Ray embedded and a real `ray start --head` on loopback) are marked; kills are in test_tag_scale.py.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import helpers
import pandas as pd
import pyarrow.parquet as pq
import pytest
from helpers import TAG_BAD_LINES, TAG_RUNNER, same_tag_rows, tag_config, tag_dump, tag_rows

from cache.durable import FileLock
from exit_codes import LockHeldError, UsageError
from pipeline.tag.manifest import REJECTS_NAME, data_folder, read_state
from pipeline.tag.parquet_parts import SCHEMA
from pipeline.tag.report import write_report
from pipeline.tag.stage import run_tag
from rpihmif.errors import ModelError

REPO = helpers.ROOT
def test_end_to_end_rows_rejects_and_schema(tag_env, tmp_path):
    dump = tag_dump(tag_env, "e2e.jsonl.gz", 40, TAG_BAD_LINES)
    summary = run_tag([dump], tag_config(tag_env, tmp_path / "out"))
    assert (summary["rows"], summary["rejects"], summary["tagged"]) == (40, len(TAG_BAD_LINES), 1)
    assert summary["images_missing"] > 0 and summary["images_used"] > 0
    assert sum(summary["reject_reasons"].values()) == 5 and len(summary["reject_reasons"]) == 5  # counted per reason
    parts = sorted(data_folder(tmp_path / "out").iterdir())
    assert [p.name.split("-")[0] for p in parts] == ["e2e"] * 3  # 45 lines in chunks of 16: 3 parts
    table = pq.read_table(parts[0])
    assert table.schema.remove_metadata().equals(SCHEMA)
    meta = pq.ParquetFile(parts[0]).schema_arrow.metadata
    assert meta[b"rpihmif.model_id"].decode() == summary["model_id"] and meta[b"rpihmif.schema_version"] == b"2"
    assert meta[b"rpihmif.encoder_fingerprint"] == helpers.FINGERPRINT_ID.encode() and b"B-PER" in meta[b"rpihmif.labels"]
    assert pq.ParquetFile(parts[0]).metadata.num_row_groups > 1  # 16 rows in groups of ~4000 bytes
    assert pq.ParquetFile(parts[0]).metadata.row_group(0).column(0).compression == "ZSTD"
    df = pd.read_parquet(data_folder(tmp_path / "out")).sort_values("line")
    assert list(df["id"]) == [f"t{i}" for i in range(40)] and len(df) == 40
    assert set(df["source"]) == {str(dump.resolve())} and list(df["line"]) == list(range(1, 41))
    assert df["tagged_at"].notna().all()
    n_ents = 0
    for row in df.itertuples():
        assert len(row.tokens) > 0 and all(tok in row.text for tok in row.tokens)
        for ent in row.entities:
            n_ents += 1
            assert row.text[ent["start_char"]:ent["end_char"]] == ent["text"]
            assert " ".join(row.tokens[ent["start_token"]:ent["end_token"]]).replace(" ", "") == \
                ent["text"].replace(" ", "")
            assert 0.0 < ent["score"] <= 1.0
            assert (ent["routing_orig"] is None) == (not row.image_used)
        cached = row.image in tag_env["images"][:2]
        assert row.image_used == cached
    assert n_ents > 20
    rejects = [json.loads(x) for x in (tmp_path / "out" / REJECTS_NAME).read_text().splitlines()]
    assert [r["line"] for r in rejects] == [41, 42, 43, 44, 45]
    assert [r["id"] for r in rejects] == [None, "b2", None, "b4", None]
    for r, word in zip(rejects, ["bad JSON", "missing text", "invalid UTF-8", "empty text", "max_record_bytes"]):
        assert word in r["reason"]
    manifest = read_state(tmp_path / "out")
    (entry,) = manifest["inputs"].values()
    assert entry["paths"] == [str(dump.resolve())] and entry["complete"] and entry["lines"] == 45
    chunks = sorted(manifest["chunks"].values(), key=lambda e: e["first_line"])
    assert [(c["first_line"], c["last_line"], c["rows"]) for c in chunks] == [(1, 16, 16), (17, 32, 16), (33, 45, 8)]
    assert sorted(c["output"] for c in chunks) == [p.name for p in parts]


def test_scores_lower_for_ambiguous_tokens_and_long_tweets_windowed(tag_env, tmp_path):
    recs = [{"id": "a", "text": "paris in london today"}, {"id": "b", "text": "rt paris is at the game today"},
            {"id": "long", "text": "the game " * 40 + "obama in london today"}]  # 84 words > max_seq 48
    dump = helpers.write_dump(tmp_path / "amb.jsonl", recs)
    run_tag([dump], tag_config(tag_env, tmp_path / "out"))
    rows = tag_rows(tmp_path / "out").set_index("id")
    ents = {(i, e["text"]): e["score"] for i, r in rows.iterrows() for e in r.entities}
    assert ents[("a", "london")] > 0.9
    assert ents[("a", "paris")] < ents[("a", "london")] - 0.15
    assert len(rows.loc["long", "tokens"]) == 84  # never cut: the tail is tagged from a later window
    tail = [e for e in rows.loc["long", "entities"] if e["start_token"] >= 80]
    assert [(e["text"], e["type"]) for e in tail] == [("obama", "PER"), ("london", "LOC")]


def test_rerun_skips_and_appended_dump_tags_only_new_records(tag_env, tmp_path):
    dump = tag_dump(tag_env, "inc.jsonl", 40)
    out = tmp_path / "out"
    first = run_tag([dump], tag_config(tag_env, out))
    parts = {p.name: p.stat().st_mtime_ns for p in data_folder(out).iterdir()}
    again = run_tag([dump], tag_config(tag_env, out))
    assert (again["tagged"], again["skipped"], again["rows"]) == (0, 1, 0)
    assert {p.name: p.stat().st_mtime_ns for p in data_folder(out).iterdir()} == parts
    with open(dump, "ab") as fh:  # appended by 10%: only the 4 new records are tagged
        for i in range(4):
            fh.write(json.dumps({"id": f"new{i}", "text": "obama in london"}).encode() + b"\n")
    third = run_tag([dump], tag_config(tag_env, out))
    assert (third["tagged"], third["rows"], third["chunks"]) == (1, 4, 1)
    assert {p.name: p.stat().st_mtime_ns for p in data_folder(out).iterdir() if p.name in parts} == parts
    rows = tag_rows(out)
    assert len(rows) == first["rows"] + 4 and rows["id"].is_unique
    assert sorted(rows[rows["id"].str.startswith("new")]["line"]) == [41, 42, 43, 44]


def test_require_images_rejects_uncached(tag_env, tmp_path):
    dump = tag_dump(tag_env, "req.jsonl", 9)
    summary = run_tag([dump], tag_config(tag_env, tmp_path / "out", require_images="true"))
    assert summary["rows"] == 6 and summary["rejects"] == 3
    assert all(tag_rows(tmp_path / "out")["image_used"])


def test_usage_errors(tag_env, tmp_path):
    dump = tag_dump(tag_env, "u.jsonl", 2)
    with pytest.raises(ModelError, match="not a checkpoint folder"):
        run_tag([dump], tag_config(tag_env, tmp_path / "o", load_path=str(tmp_path)))
    with pytest.raises(UsageError, match="--out"):
        run_tag([dump], tag_config(tag_env, ""))


def test_second_concurrent_run_exits_3(tag_env, tmp_path):
    out = tmp_path / "out"
    dump = tag_dump(tag_env, "lock.jsonl", 3)
    holder = subprocess.Popen([sys.executable, "-c", "import sys,time; from cache.durable import FileLock; "
                               f"l = FileLock({str(out)!r}).acquire(); print('held', flush=True); time.sleep(60)"],
                              cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(LockHeldError, match=f"pid {holder.pid}") as err:
            run_tag([dump], tag_config(tag_env, out))
        assert err.value.exit_code == 3
        cli = subprocess.run([sys.executable, "cli.py", "tag-corpus", str(dump), "--model", str(tag_env["ckpt"]),
                              "--out", str(out)], cwd=REPO, capture_output=True, text=True, timeout=120)
        assert cli.returncode == 3, cli.stderr
        assert f"pid {holder.pid}" in cli.stderr
    finally:
        holder.kill()
        holder.wait()
    assert run_tag([dump], tag_config(tag_env, out))["rows"] == 3  # the lock died with its holder
    with FileLock(out):  # and the API refuses a second holder in-process as well
        with pytest.raises(LockHeldError):
            FileLock(out).acquire()


@pytest.mark.parametrize("workers, in_process", [(0, True), (1, False), (2, False)])
def test_workers_zero_runs_in_process_as_in_extract(tag_env, tmp_path, monkeypatch, workers, in_process):
    """`workers: 0` = this process without Ray, N >= 1 = N Ray actors: the same rule as extract-features."""
    import pipeline.tag.stage as stage

    seen, real = {}, stage.Executor

    def recording(cls, kwargs, workers, in_process, **options):
        seen.update(workers=workers, in_process=in_process)
        return real(cls, kwargs, workers=1, in_process=True)  # tags here either way: the choice is what is checked

    monkeypatch.setattr(stage, "Executor", recording)
    dump = tag_dump(tag_env, "w.jsonl", 4)
    assert run_tag([dump], tag_config(tag_env, tmp_path / "o", workers=workers))["rows"] == 4
    assert seen == {"workers": max(1, workers), "in_process": in_process}


@pytest.mark.slow
def test_ray_embedded_matches_in_process(tag_env, tmp_path):
    dump = tag_dump(tag_env, "ray.jsonl", 60, TAG_BAD_LINES[:2])
    run_tag([dump], tag_config(tag_env, tmp_path / "local"))
    summary = run_tag([dump], tag_config(tag_env, tmp_path / "ray", workers=2))
    assert summary["rows"] == 60 and summary["rejects"] == 2
    same_tag_rows(tag_rows(tmp_path / "local"), tag_rows(tmp_path / "ray"))


@pytest.mark.slow
def test_real_ray_cluster_on_loopback_matches_embedded(tag_env, tmp_path):
    dump = tag_dump(tag_env, "cluster.jsonl", 40)
    run_tag([dump], tag_config(tag_env, tmp_path / "embedded", workers=2))
    env = {**os.environ, "RAY_ADDRESS": ""}
    with helpers.ray_head() as address:
        conf = tag_config(tag_env, tmp_path / "cluster", workers=2, ray_address=address)
        for _ in range(60):  # the head needs a few seconds before it accepts drivers
            run = subprocess.run([sys.executable, "-c", TAG_RUNNER, str(dump), json.dumps(conf.to_dict())], cwd=REPO,
                                 env=env, capture_output=True, text=True, timeout=300)
            if run.returncode == 0 or "ConnectionError" not in run.stderr + run.stdout:
                break
            time.sleep(2)
        assert run.returncode == 0, run.stderr[-3000:]
    same_tag_rows(tag_rows(tmp_path / "embedded"), tag_rows(tmp_path / "cluster"))


def test_report_is_self_contained(tag_env, tmp_path):
    dump = tag_dump(tag_env, "rep.jsonl", 12, TAG_BAD_LINES[:1])
    run_tag([dump], tag_config(tag_env, tmp_path / "out"))
    page = write_report(tmp_path / "out").read_text(encoding="utf-8")
    assert page.startswith("<!DOCTYPE html>") and "data:image/jpeg;base64," in page
    assert "http://" not in page.split("<body>")[1].replace("http://t.co", "")  # nothing fetched from outside
    for word in ("Entities per type", "Top entities", "coupling mass", "<figcaption>grounding", "RCNN crops",
                 "bad JSON", "Least confident", "Random sample", helpers.FINGERPRINT_ID, "(tagged_at column)"):
        assert word in page
    assert "<script" not in page
    assert len(pd.read_parquet(data_folder(tmp_path / "out"))) == 12  # the report does not disturb Parquet readers

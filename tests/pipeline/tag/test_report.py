"""The tag-corpus HTML report: vectorized aggregates against a hand count, seeded random and least confident tweets,
escaping of every field read back from Parquet, hostile images (FIFO, bomb, link out) and bad output folders.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import zlib
from collections import Counter
from html.parser import HTMLParser
from pathlib import Path

import helpers
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from helpers import png_bytes
from PIL import Image

from exit_codes import UsageError
from pipeline.tag.manifest import REJECTS_NAME, data_folder
from pipeline.tag.parquet_parts import SCHEMA
from pipeline.tag.report import REPORT_NAME, write_report
from pipeline.tag.report_data import fetch_rows, find_parts
from pipeline.tag.report_stats import aggregate

REPO = helpers.ROOT
XSS = '<script>alert(1)</script>"><img src=x onerror=alert(2)>'
TYPES = ["PER", "LOC", "ORG", "MISC"]


def _ent(text, etype, score, start=0, routing=None):
    r = routing or (None, None, None)
    return {"text": text, "type": etype, "start_char": start, "end_char": start + len(text), "start_token": 0,
            "end_token": 1, "score": score, "routing_orig": r[0], "routing_grounding": r[1], "routing_rcnn": r[2]}


def _row(i, entities, image_used=False, text=None, **extra):
    return {"id": f"t{i}", "text": text or f"tweet {i} " + " ".join(e["text"] for e in entities or []),
            "tokens": ["tweet"], "entities": entities, "image_used": image_used, "model_id": "m1", "line": i + 1,
            **extra}


def _part(out, name, rows, meta=None, row_group_size=5):
    folder = data_folder(out)
    folder.mkdir(parents=True, exist_ok=True)
    schema = SCHEMA.with_metadata({f"rpihmif.{k}": v for k, v in (meta or {"model_id": "m1"}).items()})
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), folder / name, row_group_size=row_group_size)
    return folder / name


def _corpus(n=60, seed=0):
    """n rows with entities of every type, varied scores and routing; every 7th row has none, every 11th null."""
    import random

    rng = random.Random(seed)
    rows = []
    for i in range(n):
        if i % 11 == 5:
            rows.append(_row(i, None))
            continue
        ents, pos = [], 0
        for _ in range(0 if i % 7 == 3 else rng.randint(1, 3)):
            word = rng.choice(["obama", "nba", "london", "paris", "apple"])
            used = i % 2 == 0
            a = rng.random()
            ents.append(_ent(word, rng.choice(TYPES), round(rng.uniform(0.05, 1.0), 3), pos,
                             (a, (1 - a) / 2, (1 - a) / 2) if used else None))
            pos += len(word) + 1
        rows.append(_row(i, ents, image_used=i % 2 == 0 and bool(ents), text=" ".join(e["text"] for e in ents) or "x"))
    return rows


@pytest.fixture
def dataset(tmp_path):
    rows = _corpus(60)
    _part(tmp_path, "a.parquet", rows[:25])
    _part(tmp_path, "b.parquet", rows[25:], row_group_size=7)
    return tmp_path, rows


def _parse(page):
    """Tags with their attributes, and the text data, of a page (the stdlib parser a browser-like tokenizer)."""

    class P(HTMLParser):
        tags, data = [], []

        def handle_starttag(self, tag, attrs):
            self.tags.append((tag, dict(attrs)))

        def handle_data(self, d):
            self.data.append(d)

    p = P()
    p.tags, p.data = [], []
    p.feed(page)
    return p.tags, "".join(p.data)


def test_aggregates_equal_a_hand_count(dataset):
    out, rows = dataset
    a = aggregate(find_parts(out).batches(batch_size=8), top=100)
    ents = [e for r in rows for e in r["entities"] or []]
    assert (a.rows, a.entities) == (60, len(ents))
    assert a.with_entities == sum(bool(r["entities"]) for r in rows)
    assert a.with_image == sum(r["image_used"] for r in rows)
    assert {t: v["n"] for t, v in a.types.items()} == dict(Counter(e["type"] for e in ents))
    for t in TYPES:
        scores = [e["score"] for e in ents if e["type"] == t]
        f32 = [float(pa.scalar(s, pa.float32()).as_py()) for s in scores]
        assert a.types[t]["sum"] / a.types[t]["scored"] == pytest.approx(sum(scores) / len(scores), abs=1e-6)
        assert a.hist[t] == [sum(min(9, int(s * 10)) == b for s in f32) for b in range(10)]
        routed = [e for e in ents if e["type"] == t and e["routing_orig"] is not None]
        assert a.types[t]["routing_orig_count"] == len(routed)
        assert a.types[t]["routing_rcnn_sum"] == pytest.approx(sum(e["routing_rcnn"] for e in routed), abs=1e-5)
    counts = Counter((e["text"], e["type"]) for e in ents)
    assert {(e.text, t): e.n for t, top in a.top.items() for e in top} == dict(counts) and a.top_exact
    for top in a.top.values():
        assert [e.n for e in top] == sorted((e.n for e in top), reverse=True)


def test_top_entities_are_per_type_and_case_folded_with_the_most_common_spelling(tmp_path):
    ents = [("NBA", "ORG", 0.9)] * 3 + [("nba", "ORG", 0.5)] * 2 + [("Nba", "ORG", 0.1)] + [("nba", "PER", 0.4)] + \
        [("Paris", "LOC", 0.8)] * 2 + [("PARIS", "LOC", 0.6)] * 2 + [("Obama", "PER", 0.7)] * 2
    rows = [_row(i, [_ent(t, ty, s)]) for i, (t, ty, s) in enumerate(ents)]
    _part(tmp_path, "p.parquet", rows)
    a = aggregate(find_parts(tmp_path).batches(), top=5)
    org = a.top["ORG"][0]
    assert (org.text, org.n, org.spellings, org.forms) == ("NBA", 6, 3, [("NBA", 3), ("nba", 2), ("Nba", 1)])
    assert org.mean == pytest.approx((3 * 0.9 + 2 * 0.5 + 0.1) / 6, abs=1e-6)
    assert [(e.text, e.n) for e in a.top["PER"]] == [("Obama", 2), ("nba", 1)]  # another type: its own row
    assert [(e.text, e.n) for e in a.top["LOC"]] == [("PARIS", 4)]  # a 2-2 tie: the first in code point order
    _, text = _parse(write_report(tmp_path).read_text())
    assert "NBA +2 spellings" in " ".join(text.split()) and "nba" not in text.split("Random sample")[0].split(
        "Top entities")[1].split("PER")[0]


def test_top_entities_stay_bounded_and_keep_the_frequent_ones():
    rows = [_row(i, [_ent(f"rare{i}", "PER", 0.5), _ent("obama", "PER", 0.9)]) for i in range(400)]
    batch = pa.RecordBatch.from_pylist(rows, schema=SCHEMA).select(["entities", "image_used"])
    a = aggregate([batch.slice(i, 20) for i in range(0, 400, 20)], top=3, max_distinct=50)
    assert (a.top["PER"][0].text, a.top["PER"][0].n) == ("obama", 400) and not a.top_exact


def test_sample_is_random_seeded_and_independent_of_batching(dataset):
    out, rows = dataset
    parts = find_parts(out)
    ids = lambda a: [r["id"] for r in fetch_rows(parts, a.sample).values()]
    a1 = aggregate(parts.batches(batch_size=64), seed=1, sample=10)
    assert ids(a1) == ids(aggregate(parts.batches(batch_size=3), seed=1, sample=10))
    a2 = aggregate(parts.batches(), seed=2, sample=10)
    assert len(set(a1.sample)) == 10 and a1.sample != a2.sample
    assert a1.sample != list(range(10))  # not the first rows
    mean_index = sum(sum(aggregate(parts.batches(), seed=s, sample=10).sample) / 10 for s in range(40)) / 40
    assert 22 < mean_index < 37  # uniform over 0..59 has mean 29.5
    img = aggregate(parts.batches(), seed=1, image_sample=5).image_sample
    assert len(img) == 5 and all(rows[i]["image_used"] and rows[i]["entities"] for i in img)


def test_fetch_rows_maps_global_indices_across_files_and_row_groups(dataset):
    out, rows = dataset
    parts = find_parts(out)
    aggregate(parts.batches(batch_size=4))
    got = fetch_rows(parts, [59, 0, 24, 25, 31])
    assert {i: r["id"] for i, r in got.items()} == {i: rows[i]["id"] for i in (59, 0, 24, 25, 31)}
    assert got[25]["_part"] == "b.parquet"


def test_least_confident_are_the_lowest_entity_scores(tmp_path):
    scores = [[0.9, 0.8], [0.2], [], [0.5, 0.05], None, [0.7], [0.2, 0.99], [float("nan")], [0.3]]
    rows = [_row(i, None if s is None else [_ent("x", "PER", v) for v in s]) for i, s in enumerate(scores)]
    _part(tmp_path, "p.parquet", rows, row_group_size=2)
    a = aggregate(find_parts(tmp_path).batches(batch_size=3), least=4)
    assert [r for r, _ in a.least] == [3, 1, 6, 8]  # 0.05, then the 0.2 tie by row order, then 0.3
    assert [round(s, 2) for _, s in a.least] == [0.05, 0.2, 0.2, 0.3]
    page = write_report(tmp_path, least=2).read_text()
    least = page.split("Least confident tweets")[1]
    assert least.index("id t3") < least.index("id t1") and "id t6" not in least


@pytest.mark.timeout(60)
def test_every_field_read_back_is_escaped(tmp_path):
    meta = {"model_id": XSS, "source": f"/nowhere/{XSS}.jsonl", "encoder_fingerprint": f"rand-{XSS}",
            f"x{XSS}": XSS, "labels": XSS}
    rows = [_row(i, [_ent(XSS, XSS, 0.5, 0, (0.2, 0.3, 0.5)), _ent("ok", "PER", 0.4, len(XSS) + 1)],
                 image_used=True, text=XSS + " ok", id=XSS, image=XSS, crops=[XSS], rcnn_crops=[XSS]) for i in range(3)]
    _part(tmp_path, "p.parquet", rows, meta)
    data_folder(tmp_path).joinpath(f"z{XSS}.parquet".replace("/", "_")).write_bytes(b"not parquet")
    (tmp_path / REJECTS_NAME).write_text(json.dumps({"file": XSS, "line": 1, "reason": XSS}) + "\n")
    (tmp_path / "_manifest.json").write_text(json.dumps({"inputs": {XSS: {"output": XSS, "image_root": XSS}}}))
    page = write_report(tmp_path, sample_size=3).read_text()
    tags, text = _parse(page)
    assert not [t for t, _ in tags if t == "script"] and "<script" not in page.lower()
    for tag, attrs in tags:
        assert not [k for k in attrs if k.startswith("on")], (tag, attrs)
        if tag == "img":
            assert attrs["src"].startswith("data:image/jpeg;base64,")
        if "style" in attrs:
            assert set(attrs["style"]) <= set("abcdefghijklmnopqrstuvwxyz0123456789#:;-"), attrs
    assert text.count(XSS) >= 10  # shown as text: entity text and type, id, tweet, model id, source, reason, ...
    assert "random-init encoder" in text and "z<script>" in text  # the set-aside part is named, escaped


def _png_bomb(path, side=9000):
    """A grayscale PNG of side x side pixels (81M: under Pillow's own warning threshold) in a few hundred KB."""
    comp, body = zlib.compressobj(9), b""
    row = b"\0" * (side + 1)
    for _ in range(side):
        body += comp.compress(row)
    body += comp.flush()
    path.write_bytes(png_bytes(side, side, idat=body, color=0))


@pytest.mark.timeout(60)
def test_hostile_images_become_placeholders(tmp_path):
    root, outside = tmp_path / "dumps", tmp_path / "outside"
    (root / "img").mkdir(parents=True)
    outside.mkdir()
    Image.new("RGB", (40, 30), "red").save(root / "img" / "ok.jpg")
    Image.new("RGB", (7000, 5000), "red").save(root / "img" / "big.jpg", quality=60)  # 35M pixels: JPEG draft
    Image.new("RGB", (20, 20), "blue").save(outside / "secret.png")
    Image.new("RGB", (400, 300), "green").save(root / "img" / "cut.jpg", quality=95)
    data = (root / "img" / "cut.jpg").read_bytes()
    (root / "img" / "cut.jpg").write_bytes(data[: len(data) // 3])
    os.mkfifo(root / "img" / "fifo.png")
    _png_bomb(root / "img" / "bomb.png")
    os.symlink(outside / "secret.png", root / "img" / "link.png")
    (root / "img" / "dir.png").mkdir()
    cases = {"fifo.png": "not a regular file", "bomb.png": "decompression bomb", "link.png": "outside the image folder",
             "gone.png": "missing file", "cut.jpg": "unreadable image", "dir.png": "not a regular file",
             "../outside/secret.png": "outside the image folder"}
    rows = [_row(i, [_ent("obama", "PER", 0.9, 0, (0.5, 0.25, 0.25))], image_used=True, text="obama",
                 image="img/ok.jpg", crops=[f"img/{name}" if "/" not in name else name], rcnn_crops=["img/big.jpg"])
            for i, name in enumerate(cases)]
    _part(tmp_path / "out", "p.parquet", rows)
    os.mkfifo(data_folder(tmp_path / "out") / "f.parquet")
    os.mkfifo(tmp_path / "out" / REJECTS_NAME)
    os.mkfifo(tmp_path / "out" / "_manifest.json")
    page = write_report(tmp_path / "out", sample_size=len(cases), image_root=str(root)).read_text()
    _, text = _parse(page)
    for reason in cases.values():
        assert f'<span class="ph">{reason}' in page, reason
    assert '<figure title="img/big.jpg"><img' in page and "<figcaption>RCNN 1</figcaption>" in page
    assert "<figcaption>grounding 1</figcaption>" in page and "img/big.jpg</figcaption>" not in page  # path: title only
    assert page.count('alt="image"') >= len(cases)
    assert "f.parquet" in text and "_rejects.jsonl: not a regular file" in text


def test_report_through_a_planted_link_exits_2_and_keeps_the_target(dataset, tmp_path_factory):
    out, _ = dataset
    victim = tmp_path_factory.mktemp("victim") / "precious.txt"
    victim.write_text("keep me")
    os.symlink(victim, out / REPORT_NAME)
    run = subprocess.run([sys.executable, str(REPO / "cli.py"), "report", str(out)],
                         check=False, capture_output=True, text=True)
    assert run.returncode == 2 and REPORT_NAME in run.stderr and "symbolic link" in run.stderr
    assert victim.read_text() == "keep me"


def test_empty_or_missing_output_exits_2_with_the_fix(tmp_path):
    run = subprocess.run([sys.executable, str(REPO / "cli.py"), "report", str(tmp_path / "nothing")],
                         check=False, capture_output=True, text=True)
    assert run.returncode == 2 and "output folder not found" in run.stderr and "nothing" in run.stderr, run.stderr
    with pytest.raises(UsageError, match="--image-root .*nowhere is not a folder"):
        write_report(tmp_path, image_root=str(tmp_path / "nowhere"))
    data_folder(tmp_path).mkdir()
    with pytest.raises(UsageError, match=f"{data_folder(tmp_path)}: no readable Parquet parts.*run tag-corpus"):
        write_report(tmp_path)
    with pytest.raises(UsageError, match="not a readable Parquet file"):
        data_folder(tmp_path).joinpath("x.parquet").write_bytes(b"PAR1 broken")
        write_report(tmp_path)


def test_zero_rows_still_report_the_rejects(tmp_path):
    _part(tmp_path, "p.parquet", [])
    (tmp_path / REJECTS_NAME).write_text("".join(json.dumps({"file": "d.jsonl", "line": i, "reason": "bad JSON (x)"})
                                                 + "\n" for i in range(3)) + "{damaged\n")
    _, text = _parse(write_report(tmp_path).read_text())
    flat = "".join(text.split())
    assert "0tweetsin1Parquetpart(s)" in flat and "bad JSON: 3" in text and "(damaged line in the rejects file): 1" in text


def test_tagged_at_range_and_encoder_from_footers(tmp_path):
    import datetime as dt

    schema = SCHEMA if "tagged_at" in SCHEMA.names else SCHEMA.append(pa.field("tagged_at", pa.timestamp("us", tz="UTC")))
    times = [dt.datetime(2026, 1, d, tzinfo=dt.timezone.utc) for d in (3, 1, 2)]
    rows = [{**_row(i, [_ent("x", "PER", 0.5)]), "tagged_at": t} for i, t in enumerate(times)]
    folder = data_folder(tmp_path)
    folder.mkdir(parents=True)
    meta = {"rpihmif.model_id": "m-7", "rpihmif.encoder_fingerprint": "3fa9c0d1e2b4a5c6"}
    pq.write_table(pa.Table.from_pylist(rows, schema=schema.with_metadata(meta)), folder / "p.parquet")
    _part(tmp_path, "q.parquet", [_row(9, [])], {"model_id": "m-7"})  # an older part without tagged_at
    _, text = _parse(write_report(tmp_path).read_text())
    assert "2026-01-01 00:00 UTC to 2026-01-03 00:00 UTC" in text
    assert "3fa9c0d1e2b4a5c6" in text and "random-init" not in text and "m-7 (2 part(s))" in text


def test_encoder_from_the_checkpoint_the_manifest_names_flags_random_init(dataset, tmp_path_factory):
    out, _ = dataset
    from rpihmif.config import ModelConfig

    ckpt = tmp_path_factory.mktemp("ckpt")
    model = ModelConfig().to_dict()
    model["visual"]["fingerprint"] = "rand-0123abcd"
    config = {"model_type": "rpihmif", "rpihmif": model, "encoder": {"model_type": "bert"}}
    (ckpt / "config.json").write_text(json.dumps(config))
    (out / "_manifest.json").write_text(json.dumps({"version": 1, "inputs": {"/d.jsonl": {"load_path": str(ckpt)}}}))
    _, text = _parse(write_report(out).read_text())
    assert f"rand-0123abcd (from the checkpoint {ckpt})" in text and "random-init encoder, not a pretrained" in text


def test_odd_column_types_and_huge_values_do_not_break_the_page(tmp_path):
    ent = pa.struct([("text", pa.string()), ("type", pa.string()), ("score", pa.float64()),
                     ("routing_orig", pa.string())])  # a crafted part: routing as text, no char offsets
    schema = pa.schema([("id", pa.string()), ("text", pa.string()), ("entities", pa.list_(ent)),
                        ("image_used", pa.bool_()), ("tagged_at", pa.list_(pa.int64()))])
    rows = [{"id": "x" * 1_000_000, "text": "y" * 1_000_000, "image_used": False, "tagged_at": [1],
             "entities": [{"text": "z" * 1_000_000, "type": "PER", "score": 0.5, "routing_orig": "high"}]}]
    data_folder(tmp_path).mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), data_folder(tmp_path) / "odd.parquet")
    page = write_report(tmp_path).read_text()
    assert len(page) < 100_000 and "1tweetsin1Parquetpart(s)" in "".join(_parse(page)[1].split())
    assert "(part file times" in page


def test_hive_partitioned_parts_read_as_one_table(dataset, tmp_path_factory):
    out, rows = dataset
    hive = tmp_path_factory.mktemp("hive")
    for name, day in (("a.parquet", "2026-01-01"), ("b.parquet", "2026-01-02")):
        (data_folder(hive) / f"dt={day}").mkdir(parents=True)
        os.replace(data_folder(out) / name, data_folder(hive) / f"dt={day}" / name)
    (data_folder(hive) / "_tmp").mkdir()
    (data_folder(hive) / "_tmp" / "x.parquet").write_bytes(b"half")  # '_' folders: skipped as readers do
    parts = find_parts(hive)
    assert parts.names == ["dt=2026-01-01/a.parquet", "dt=2026-01-02/b.parquet"] and not parts.skipped
    a = aggregate(parts.batches(batch_size=8), sample=60)
    assert a.rows == 60 and a.entities == sum(len(r["entities"] or []) for r in rows)
    got = fetch_rows(parts, [0, 59])
    assert (got[0]["id"], got[59]["id"], got[59]["_part"]) == ("t0", "t59", "dt=2026-01-02/b.parquet")
    _, text = _parse(write_report(hive).read_text())
    assert "60tweetsin2Parquetpart(s)" in "".join(text.split())

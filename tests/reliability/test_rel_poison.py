"""Poison records (issue 13 class 4): one unusable line never stops tag-corpus or extract-features.

Every poison line becomes a reject with file, line and reason; the good lines around it and the inputs after it are
processed; a rerun does not abort again. Ids are strings: 1 and "1" are the same id, a repeat is a reject.
"""
from __future__ import annotations

import json
from pathlib import Path

import helpers
import pandas as pd
import pytest
from rel_helpers import cli, sets

from cache.reader import open_cache

BOM = b"\xef\xbb\xbf"


def _rec(rid, text="john smith in london today", **extra) -> bytes:
    return json.dumps({"id": rid, "text": text, **extra}).encode()


# (line bytes, expected reject-reason word or None for a good record, its id as tagged)
POISON = [
    (BOM + _rec("bom", image="img/0.jpg"), None, "bom"),  # a BOM before the first record is not an error
    (b"[" * 40_000 + b"]" * 40_000, "nested too deeply", None),
    (b'{"id": ' + b'{"a": ' * 10_000 + b"1" + b"}" * 10_000 + b', "text": "x"}', "nested too deeply", None),
    (_rec("nul-image", image="img/\u0000.jpg"), "NUL", None),
    (_rec("nul-crop", image="img/1.jpg", crops=["img/1_crop0.png\u0000"]), "NUL", None),
    (_rec("surrogate-image", image="img/\ud800.jpg"), "surrogate", None),
    (_rec("surrogate-text", text="london \ud83d"), "surrogate", None),
    (b'{"id": "surrogate-id-\\udc80", "text": "a"}', "surrogate", None),
    (b'{"id": ' + b"9" * 5000 + b', "text": "obama"}', "4300 digits", None),
    (_rec(2**70, text="obama in paris"), None, str(2**70)),  # a big but readable integer id
    (_rec(1.5), "must be a string or integer", None),
    (_rec(True), "must be a string or integer", None),
    (_rec(["a"]), "must be a string or integer", None),
    (b'{"id": 1e999, "text": "x"}', "must be a string or integer", None),
    (_rec(None), "missing id", None),
    (_rec("x" * 300), "longer than", None),
    (b'"just a string"', "expected a JSON object", None),
    (b'{"id": "bad-utf8", "text": "caf\xe9"}', "invalid UTF-8", None),
    (b'{"id": "half', "bad JSON", None),
    (_rec(1, text="google in new york", image="img/1.jpg"), None, "1"),
    (_rec("1", text="apple in london"), "duplicate id", None),  # ids 1 and "1" are one id: the first is kept
    (_rec("nul-text", text="obama\u0000 in paris"), None, "nul-text"),  # NUL in text is data, not poison
    (_rec("last", text="the nba in london", image="img/2.jpg"), None, "last"),
]


def _write_poison(folder: Path) -> tuple[Path, Path]:
    helpers.draw_images(folder, 3)
    poison = folder / "poison.jsonl"
    poison.write_bytes(b"\n".join(line for line, _, _ in POISON) + b"\n")
    after = helpers.write_dump(folder / "after.jsonl.gz", [{"id": f"a{i}", "text": "obama in london", "image": "img/2.jpg"}
                                                     for i in range(5)])
    return poison, after


def _expected_rejects() -> dict[int, str]:
    return {n: word for n, (_, word, _) in enumerate(POISON, 1) if word}


@pytest.mark.slow
def test_tag_corpus_rejects_each_poison_line_and_goes_on(world, tmp_path):
    poison, after = _write_poison(tmp_path / "dumps")
    out = tmp_path / "out"
    args = ["tag-corpus", poison, after, "--model", world["ckpt"], "--out", out,
            *sets(cache_dir=world["root"] / "cache", device="cpu", workers=0)]
    res = cli(*args)  # mostly poison: everything is committed, then exit 1 naming the input (max_reject_rate)
    assert res.exit_code == 1 and f"{poison.resolve()}: 18 of 23 records rejected" in res.stderr, res.stderr[-3000:]
    rows = pd.read_parquet(next(out.rglob("poison*.parquet")))
    assert list(rows["id"]) == [rid for _, word, rid in POISON if not word]  # every good record, in order
    assert rows[rows["id"] == "bom"]["line"].item() == 1
    assert len(pd.read_parquet(next(out.rglob("after*.parquet")))) == 5  # the input after the poison one is tagged
    rejects = [json.loads(x) for x in (out / "_rejects.jsonl").read_text().splitlines()]
    assert {r["line"] for r in rejects} == set(_expected_rejects())
    for r in rejects:  # file:line:reason for each
        assert r["file"] == str(poison.resolve()) and _expected_rejects()[r["line"]] in r["reason"], r
    again = cli(*args)  # a rerun does not abort again (skips what is done: the rate was reported once)
    assert again.exit_code == 0 and json.loads(again.stdout)["skipped"] == 2, again.stderr[-2000:]


@pytest.mark.slow
def test_extract_rejects_each_poison_line_and_goes_on(world, tmp_path):
    poison, after = _write_poison(tmp_path / "dumps")
    cache = tmp_path / "cache"
    args = ["extract-features", *sets(dataset="", vit_name=world["clip"], cache_dir=cache, workers=0, device="cpu",
                                      batch_size=2), "--dump", poison, "--dump", after]
    res = cli(*args)
    assert res.exit_code == 0, res.stderr[-3000:]
    index = open_cache(cache).index
    for image in ("img/0.jpg", "img/1.jpg", "img/2.jpg"):  # the BOM line's image, and those of later lines
        assert index.aliases[("dump", image)] in index.keys, image
    records = [r for r in index.rejects if r["kind"] == "record"]
    want = {n: w for n, w in _expected_rejects().items() if w != "duplicate id"}  # extract reads no ids
    assert {r["line"] for r in records} == set(want)
    for r in records:
        assert r["file"] == str(poison) and want[r["line"]] in r["reason"], r
    again = cli(*args)
    assert again.exit_code == 0 and json.loads(again.stdout)["computed"] == 0, again.stderr[-2000:]


def test_nul_in_a_benchmark_imgid_is_a_reject_not_a_crash(world, tmp_path):
    import shutil

    data = tmp_path / "data"
    shutil.copytree(world["root"] / "data" / "twitter2015", data / "twitter2015")
    train = data / "twitter2015" / "train.txt"
    train.write_text("IMGID:bad\x00id\nRT\tO\n\n" + train.read_text(), encoding="utf-8")
    res = cli("extract-features", *sets(data_dir=data, dataset="twitter2015", splits="train", vit_name=world["clip"],
                                        cache_dir=tmp_path / "cache", workers=0, device="cpu", batch_size=8))
    assert res.exit_code == 0, res.stderr[-3000:]
    (bad,) = [r for r in open_cache(tmp_path / "cache").index.rejects if r["kind"] == "record"]
    assert bad["file"] == str(train) and bad["line"] == 1 and "NUL" in bad["reason"]


def test_damaged_rejects_file_does_not_block_later_runs(world, tmp_path, caplog):
    dump = helpers.write_dump(tmp_path / "d" / "t.jsonl", helpers.tweets(6), [b'{"id": "bad", "text": 5}'])
    out = tmp_path / "out"
    args = ["tag-corpus", dump, "--model", world["ckpt"], "--out", out,
            *sets(cache_dir=world["root"] / "cache", device="cpu", workers=0)]
    assert cli(*args).exit_code == 0
    rejects = out / "_rejects.jsonl"
    rejects.write_bytes(rejects.read_bytes() + b'{"file": "x", "line": 3, "reas\n\xff\xfe garbage\n')
    dump2 = helpers.write_dump(tmp_path / "d" / "u.jsonl.gz", helpers.tweets(4), [b"not json"])
    res = cli("tag-corpus", dump, dump2, *args[2:])
    assert res.exit_code == 0, res.stderr[-2000:]
    # rebuilt from the committed chunks' own rejects (_rejects.d): the damaged lines are simply gone
    lines = [json.loads(x) for x in rejects.read_text().splitlines()]
    assert sorted(r["id"] or r["reason"][:8] for r in lines) == ["bad", "bad JSON"]

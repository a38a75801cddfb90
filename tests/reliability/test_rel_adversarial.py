"""Adversarial inputs through the CLI stages: broken/odd images, escaping paths, a hostile .pth, bad CoNLL and JSONL.

One mixed input per stage; each bad case must give a named error or a reject line, and every good record is processed.
"""
from __future__ import annotations

import gzip
import io
import json
import os
import re
from pathlib import Path

import helpers
import pandas as pd
from helpers import draw_image, encoded, make_dataset, png_header, tiny_overrides, write_split
from PIL import Image
from rel_helpers import cli, extract_sets, sets, tag_sets


from pipeline.tag.manifest import data_folder, read_state


def _bad_images(tmp: Path) -> dict[str, bytes]:
    jpg = draw_image(tmp / "a.jpg", seed=1, size=(120, 90), fmt="JPEG").read_bytes()
    png = draw_image(tmp / "a.png", seed=2, size=(120, 90), fmt="PNG").read_bytes()
    pal = Image.new("P", (40, 30), 1)
    pal.putpalette([0, 0, 0, 255, 0, 0] * 128)
    frames = [Image.new("RGB", (30, 30), c) for c in ((255, 0, 0), (0, 0, 255))]
    gif = io.BytesIO()
    frames[0].save(gif, "GIF", save_all=True, append_images=frames[1:], duration=50, loop=0)
    return {"trunc_jpg": jpg[: len(jpg) // 2], "trunc_png": png[: len(png) // 2], "zero": b"",
            "text": b"this is a text file named .jpg\n", "bomb": encoded(Image.new("1", (10000, 9000)), "PNG"),
            "header": png_header(20000, 20000, pixels=True),
            "cmyk": encoded(Image.new("CMYK", (40, 30), (0, 255, 0, 0)), "JPEG"),
            "png16": encoded(Image.new("I;16", (40, 30), 40000), "PNG"),
            "palette": encoded(pal, "PNG", transparency=0), "gif": gif.getvalue()}


BAD_REASON = {"trunc_jpg": {"truncated", "corrupt"}, "trunc_png": {"truncated", "corrupt"}, "zero": {"empty"},
              "text": {"not_an_image"}, "bomb": {"decompression_bomb"}, "header": {"decompression_bomb"},
              "sym": {"unsafe_path"}, "../../outside": {"unsafe_path"}}
GOOD_ODD = ["cmyk", "png16", "palette", "gif"]


def _dump_lines(good: list[dict]) -> list[bytes]:
    """Good records interleaved with one bad line per case; returns raw JSONL lines."""
    bad = [b'{"id": "u8", "text": "caf\xe9 bad utf-8"}', b'{"id": 7, "text": 12}', b'{"text": "no id here"}',
           b'{"id": "big", "text": "' + b"x" * 1_000_000 + b'"}', b'{"id": "img", "text": "t", "image": 5}',
           b'{"id": "crp", "text": "t", "crops": {"a": 1}}', b'{"id": "sur", "text": "bad \\ud800 half"}',
           b'["not", "an", "object"]']
    lines = []
    for i, rec in enumerate(good):
        lines.append(json.dumps(rec).encode())
        if i < len(bad):
            lines.append(bad[i])
    return lines


DUMP_REASONS = ["invalid UTF-8", "must be a string", "missing id field", "max_record_bytes", "must be a path string",
                "must be a list of path strings", "unpaired surrogate", "expected a JSON object"]


def test_extract_mixed_adversarial_dataset_and_dumps(tiny_clip_dir, tmp_path):
    outside = draw_image(tmp_path / "outside.jpg", seed=9, fmt="JPEG")
    root = make_dataset(tmp_path / "data", n_images=2, bad=_bad_images(tmp_path))
    images = root / "twitter2015_images"
    os.symlink(outside, images / "sym.jpg")  # a link out of the dataset folder
    with open(root / "test.txt", "a", encoding="utf-8") as fh:
        fh.write("IMGID:sym\nx\tO\n\nIMGID:../../outside\nx\tO\n\n")
    ddir = tmp_path / "dump"
    good = [{"id": f"g{i}", "text": "ok", "image": f"img/{i}.jpg"} for i in range(8)]
    for i in range(8):
        draw_image(ddir / f"img/{i}.jpg", seed=70 + i, fmt="JPEG")
    good[0].update(image="../outside.jpg")
    good[1].update(crops=["../../outside.jpg"])
    main = ddir / "main.jsonl"
    main.write_bytes(b"\n".join(_dump_lines(good)) + b"\n")
    (ddir / "empty.jsonl").write_bytes(b"")
    full = gzip.compress(b"".join(json.dumps({"id": f"z{i}", "text": "t", "image": f"img/{i}.jpg"}).encode() + b"\n"
                                  for i in range(2, 8)) * 40, mtime=0)
    (ddir / "cut.jsonl.gz").write_bytes(full[: len(full) * 2 // 3])
    cache = tmp_path / "cache"
    res = cli("extract-features", *sets(**extract_sets(tiny_clip_dir, {"data_dir": root.parent, "dataset": root.name},
                                                       cache, batch_size=4, shard_size=8)),
              "--dump", main, "--dump", ddir / "empty.jsonl", "--dump", ddir / "cut.jsonl.gz")
    assert res.exit_code == 0, res.stderr
    from cache.reader import open_cache

    opened = open_cache(cache)
    index = opened.index
    rejects = [json.loads(x) for x in (opened.folder / "rejects.jsonl").read_text().splitlines()]
    by_image = {r["image_id"]: r["reason"] for r in rejects if r["kind"] == "image"}
    for bid, reasons in BAD_REASON.items():
        assert by_image.get(f"{bid}.jpg") in reasons, (bid, by_image)
    for gid in GOOD_ODD + ["100", "101"]:  # odd-but-valid images and the plain ones all have features
        assert index.aliases[("twitter2015", f"{gid}.jpg")] in index.keys, gid
    assert by_image["../outside.jpg"] == "unsafe_path"
    assert any(r["kind"] == "grounding" and r["reason"] == "unsafe_path" for r in rejects)
    for i in range(1, 8):  # every good dump image is cached, crops or not
        assert index.aliases[("dump", f"img/{i}.jpg")] in index.keys
    records = [r for r in rejects if r["kind"] == "record"]
    main_rejects = [r for r in records if r["file"] == str(main)]
    assert len(main_rejects) == len(DUMP_REASONS)
    for r, word in zip(sorted(main_rejects, key=lambda r: r["line"]), DUMP_REASONS):
        assert word in r["reason"] and r["line"] > 0
    cut = [r for r in records if r["file"].endswith("cut.jsonl.gz")]
    assert len(cut) == 1 and "ends early" in cut[0]["reason"]


class _Evil:
    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_extract_refuses_pickle_that_runs_code(tiny_clip_dir, tmp_path):
    import torch

    root = make_dataset(tmp_path / "data", n_images=2)
    marker = tmp_path / "pwned"
    torch.save({"100.jpg": _Evil(marker)}, root / "twitter2015_train_dict.pth")
    res = cli("extract-features", *sets(**extract_sets(tiny_clip_dir, {"data_dir": root.parent, "dataset": root.name},
                                                       tmp_path / "cache")))
    assert res.exit_code == 1
    assert "twitter2015_train_dict.pth" in res.stderr and "refused" in res.stderr and "Traceback" not in res.stderr
    assert not marker.exists()  # weights_only refused to unpickle: the file was never created


def test_train_malformed_conll_strict_names_line_lenient_keeps_good(tiny_bert_dir, tmp_path):
    data = tmp_path / "data" / "tiny"
    data.mkdir(parents=True)
    write_split(data / "train.txt", 10, 1)
    write_split(data / "valid.txt", 4, 2)
    good = (data / "train.txt").read_bytes()
    (data / "train.txt").write_bytes(good + b"IMGID:77\ncaf\xe9\tO\nparis\tB-LOC\n\nIMGID:78\nrome\tB-PERS\n\n")
    args = ["train", *[a for o in tiny_overrides(tiny_bert_dir, data, tmp_path / "run", num_epochs=1)
                       for a in ("--set", o)]]
    res = cli(*args)
    assert res.exit_code == 1 and "train.txt:" in res.stderr, res.stderr
    res = cli(*args, "--lenient")
    assert res.exit_code == 0, res.stderr
    log = (tmp_path / "run" / "train.log").read_text()
    trained = re.search(r"\btrain (\d+) tweets, valid (\d+) tweets", log)
    assert trained and trained.groups() == ("12", "4"), log  # the 10 good tweets and both repaired ones
    assert re.search(r"\bepoch 1/1: loss \d", log), log  # exactly epoch 1 of 1 ran


def test_tag_mixed_adversarial_dumps(tag_world, tmp_path):
    good = [{"id": f"g{i}", "text": helpers.TEXTS[i % 5], "image": tag_world["images"][i % 3]} for i in range(10)]
    dumps = tmp_path / "dumps"
    dumps.mkdir()
    (dumps / "main.jsonl").write_bytes(b"\n".join(_dump_lines(good)) + b"\n")
    (dumps / "empty.jsonl").write_bytes(b"")
    full = gzip.compress(b"".join(json.dumps({"id": f"z{i}", "text": "obama in london"}).encode() + b"\n"
                                  for i in range(300)), mtime=0)
    (dumps / "cut.jsonl.gz").write_bytes(full[: len(full) // 2])
    out = tmp_path / "out"
    res = cli("tag-corpus", dumps, "--model", tag_world["ckpt"], "--out", out, *sets(**tag_sets(tag_world, out)))
    assert res.exit_code == 0, res.stderr
    df = pd.read_parquet(data_folder(out))
    ids = list(df["id"])
    assert sorted(i for i in ids if i.startswith("g")) == sorted(r["id"] for r in good)
    zs = sorted(int(i[1:]) for i in ids if i.startswith("z"))
    assert zs == list(range(len(zs))) and 0 < len(zs) < 300  # every record before the cut, none twice
    rejects = [json.loads(x) for x in (out / "_rejects.jsonl").read_text().splitlines()]
    main = sorted((r for r in rejects if r["file"].endswith("main.jsonl")), key=lambda r: r["line"])
    assert len(main) == len(DUMP_REASONS)
    for r, word in zip(main, DUMP_REASONS):
        assert word in r["reason"], (r, word)
    cut = [r for r in rejects if r["file"].endswith("cut.jsonl.gz")]
    assert len(cut) == 1 and "ends early" in cut[0]["reason"]
    manifest = read_state(out)
    assert {Path(v["paths"][0]).name: v["complete"] for v in manifest["inputs"].values()} == {
        "main.jsonl": True, "empty.jsonl": True, "cut.jsonl.gz": True}
    rows: dict[str, int] = {}
    for c in manifest["chunks"].values():
        rows[Path(c["source"]).name] = rows.get(Path(c["source"]).name, 0) + c["rows"]
    assert rows == {"main.jsonl": 10, "cut.jsonl.gz": len(zs)}

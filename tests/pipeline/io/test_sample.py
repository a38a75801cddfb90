"""Tests of the sample generator: complete DeepKE layout, weights_only dictionaries, determinism, image-decided types.

One full-size sample per module (a few seconds); determinism runs on a smaller one.
"""
from __future__ import annotations

import gzip
import json
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from exit_codes import UsageError
from pipeline.data_stats import data_stats
from pipeline.io.conll import read_conll
from pipeline.io.dataset import BenchmarkDataset, load_crop_dict
from pipeline.io.sample import CUE_SOURCES, CUES_FILE, SIZES, TYPE_STYLE, make_sample

SMALL = {"train": 30, "valid": 12, "test": 12}


@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    out = tmp_path_factory.mktemp("sample")
    return out, make_sample(out, seed=0)


def _colour(path: Path) -> tuple[str, float]:
    """The type whose colour direction the picture's mean colour points to, and how far from grey it is."""
    m = np.asarray(Image.open(path).convert("RGB"), dtype=np.float32).reshape(-1, 3).mean(0)
    v = m - m.mean()
    sims = {t: float(v @ (np.array(c) - np.mean(c))) / np.linalg.norm(np.array(c) - np.mean(c))
            for t, (c, _) in TYPE_STYLE.items()}
    return max(sims, key=sims.get), float(np.linalg.norm(v))


def _cue(path: Path) -> str | None:
    """The type cue a picture shows (None for a grey, neutral-looking picture)."""
    etype, strength = _colour(path)
    return etype if strength >= 8 else None


def test_layout_complete(sample):
    out, summary = sample
    root = out / "twitter2015"
    for rel in ["train.txt", "valid.txt", "test.txt", "twitter2015_images", "twitter2015_train_dict.pth",
                "twitter2015_val_dict.pth", "twitter2015_test_dict.pth", "twitter15_detect/twitter15_img2crop.pth",
                "twitter2015_aux_images/train/crops", "twitter2015_aux_images/val/crops",
                "twitter2015_aux_images/test/crops", "sample.json"]:
        assert (root / rel).exists(), rel
    ds = BenchmarkDataset(out, "twitter2015")
    assert ds.splits() == ["train", "valid", "test"]
    for split, tag in [("train", "train"), ("valid", "val"), ("test", "test")]:
        tweets = ds.read(split)
        assert len(tweets) == SIZES[split] == summary["splits"][split]["tweets"]
        d = torch.load(root / f"twitter2015_{tag}_dict.pth", weights_only=True)
        assert d == load_crop_dict(root / f"twitter2015_{tag}_dict.pth") and all(k.endswith(".jpg") for k in d)
        assert set(d) <= {f"{t.image_id}.jpg" for t in tweets}
        assert any(len(v) > 3 for v in d.values())  # more than 3 listed: only 3 are used
    rcnn = torch.load(ds.img2crop_path, weights_only=True)
    assert all(isinstance(v, list) and all(p.startswith("twitter15_detect/") for p in v) for v in rcnn.values())
    with Image.open(next((root / "twitter2015_images").glob("*.jpg"))) as im:
        assert max(im.size) <= 256 and im.mode == "RGB"
    ids = [t.image_id for s in ds.splits() for t in ds.read(s)]
    assert len(set(ids)) == len(ids) == 500
    # the tag-corpus dump: one record per tweet, paths relative to the dump folder
    with gzip.open(out / "tweets.jsonl.gz", "rt", encoding="utf-8") as f:
        records = [json.loads(line) for line in f]
    assert [r["id"] for r in records] == ids and set(records[0]) == {"id", "text", "image", "crops", "rcnn_crops"}
    with_image = [r for r in records if r["image"]]
    assert all((out / r["image"]).is_file() for r in with_image) and len(with_image) < len(records)
    assert all(len(r["crops"]) <= 3 and len(r["rcnn_crops"]) <= 3 for r in records)
    missing_crops = [c for r in records for c in r["crops"] + r["rcnn_crops"] if not (out / c).is_file()]
    assert missing_crops and len(missing_crops) < 0.2 * sum(len(r["crops"]) for r in records)


def test_image_decided_share_and_cues(sample):
    out, summary = sample
    ds = BenchmarkDataset(out, "twitter2015")
    assert summary["image_decided_share"] >= 0.5
    for split in ds.splits():
        tweets = ds.read(split)
        by_words = defaultdict(set)
        for t in tweets:
            by_words[tuple(t.words)].add(tuple(t.labels))
        ambiguous = [t for t in tweets if len(by_words[tuple(t.words)]) > 1]
        assert len(ambiguous) / len(tweets) >= 0.5  # same words, different types: text alone cannot decide
        cues = json.loads((out / "twitter2015" / CUES_FILE).read_text())
        for t in ambiguous:
            etype = next((x[2:] for x in t.labels if x.startswith("B-")), None)  # None: a decoy, no entity
            assert cues[t.image_id]["type"] == etype  # the picture decides (sources checked below)
        s = summary["splits"][split]
        decoys = [t for t in ambiguous if cues[t.image_id]["type"] is None]
        assert len(decoys) == s["decoys"] == {"train": 45, "valid": 15, "test": 15}[split]  # one per two pairs
        # every decoy repeats the words of an image-decided tweet with an entity: "no cue" is O, not a type
        assert all(any(x.startswith("B-") for labels in by_words[tuple(t.words)] for x in labels) for t in decoys)
        assert s["text_decided"] > 0 and s["images_missing"] > 0 and s["images_missing_crops"] > 0
        assert s["retweets"] > 0 and s["neutral_images"] > 0


def test_cue_in_one_source_only(sample):
    """Each image-decided entity shows its type in exactly its recorded cue source; the other sources look neutral,
    and a decoy (no entity) looks neutral in every source."""
    out, summary = sample
    ds = BenchmarkDataset(out, "twitter2015")
    cues = json.loads((out / "twitter2015" / CUES_FILE).read_text())
    assert all(set(c) == {"type", "cue_source"} and (c["cue_source"] in CUE_SOURCES) == (c["type"] in TYPE_STYLE)
               and c["cue_source"] in (*CUE_SOURCES, None) for c in cues.values())
    for split in ds.splits():
        tweets = {t.image_id: t for t in ds.read(split)}
        decided = [i for i in tweets if i in cues]
        assert len(decided) == summary["splits"][split]["image_decided"]
        counts = summary["splits"][split]["cue_sources"]
        assert sum(counts.values()) + summary["splits"][split]["decoys"] == len(decided)
        assert max(counts.values()) - min(counts.values()) <= 6  # even
        for image_id in decided:
            t, cue = tweets[image_id], cues[image_id]
            assert next((x[2:] for x in t.labels if x.startswith("B-")), None) == cue["type"]
            views = {"orig": [ds.image_path(image_id)], "grounding": ds.grounding_crops(split, image_id),
                     "rcnn": ds.rcnn_crops(image_id)}
            if cue["cue_source"] is not None:
                assert views[cue["cue_source"]], f"{image_id}: the {cue['cue_source']} crops with the cue are missing"
            for source, paths in views.items():
                for path in paths:
                    etype, strength = _colour(path)
                    if source == cue["cue_source"]:
                        assert etype == cue["type"] and strength > (30 if source == "orig" else 12), (path, strength)
                    else:  # neutral: a grey picture (at most a few-pixel cue object) or a grey object
                        assert strength < (20 if source == "orig" else 10), (path, strength)
    # retweets repeat their original's image bytes and cue
    by_bytes = defaultdict(list)
    for image_id, cue in cues.items():
        by_bytes[ds.image_path(image_id).read_bytes()].append((cue["type"], cue["cue_source"]))
    shared = [v for v in by_bytes.values() if len(v) > 1]
    assert len(shared) >= 3 and all(len(set(v)) == 1 for v in shared)


def test_retweets_share_image_bytes(sample):
    out, _ = sample
    digests = defaultdict(list)
    for p in sorted((out / "twitter2015" / "twitter2015_images").glob("*.jpg")):
        digests[p.read_bytes()].append(p.name)
    assert sum(len(v) - 1 for v in digests.values()) >= 3


def test_data_stats_on_sample(sample):
    out, summary = sample
    stats = data_stats(out / "twitter2015")
    assert list(stats["splits"]) == ["train", "valid", "test"]
    for split, got in stats["splits"].items():
        want = summary["splits"][split]
        assert got["tweets"] == want["tweets"] and got["entities"]["total"] == want["entities"]
        assert got["images"] == {"found": want["images_found"], "missing": want["images_missing"], "unsafe": 0}
        assert (got["grounding_crops"]["found"], got["grounding_crops"]["missing"]) == (
            want["grounding_found"], want["grounding_missing"])
        assert (got["rcnn_crops"]["found"], got["rcnn_crops"]["missing"]) == (want["rcnn_found"], want["rcnn_missing"])
        assert all(got["entities"][t] > 0 for t in TYPE_STYLE)
    json.dumps(stats)


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_deterministic_by_seed(tmp_path):
    a, b, c = (make_sample(tmp_path / n, seed=s, sizes=SMALL) for n, s in [("a", 3), ("b", 3), ("c", 4)])
    fa, fb, fc = _files(tmp_path / "a"), _files(tmp_path / "b"), _files(tmp_path / "c")
    assert fa == fb and {k: v for k, v in a.items() if k not in ("out", "dataset_dir", "dump")} == {
        k: v for k, v in b.items() if k not in ("out", "dataset_dir", "dump")}
    assert fa != fc
    train = [read_conll(tmp_path / n / "twitter2015" / "train.txt") for n in ("a", "c")]
    assert train[0] != train[1]
    make_sample(tmp_path / "a", seed=3, sizes=SMALL)  # a rerun replaces its own sample with the same bytes
    assert _files(tmp_path / "a") == fa
    (tmp_path / "d" / "twitter2015").mkdir(parents=True)
    with pytest.raises(UsageError, match="not a generated sample"):
        make_sample(tmp_path / "d", seed=0, sizes=SMALL)

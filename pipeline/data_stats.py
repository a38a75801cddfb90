"""Counts of a benchmark dataset folder: tweets, tokens, entities per type, images and crops found or missing.

Backs `python cli.py data-stats DIR`; the result is a JSON-able dict with one entry per present split.
"""
from __future__ import annotations

import os
from pathlib import Path

from pipeline.io.conll import read_conll_report
from pipeline.io.dataset import BenchmarkDataset
from pipeline.io.safe_paths import UnsafePathError
from rpihmif.labels import ENTITY_TYPES, bio_spans

__all__ = ["data_stats"]


def _count_crops(entries_fn, counts: dict[str, int]) -> None:
    """Add found/missing/unsafe counts of one image's crop entries (first MAX_CROPS listed)."""
    try:
        entries = entries_fn()
    except UnsafePathError:
        counts["unsafe"] += 1  # the image's entry list holds a path escaping the dataset folder
        return
    counts["listed_images"] += 1 if entries else 0
    for _, path in entries:
        counts["found" if path.is_file() else "missing"] += 1


def data_stats(dataset_dir: str | os.PathLike, lenient: bool = False, fix_bio: bool = True) -> dict:
    """Per-split counts of a dataset folder (e.g. `data/twitter2015`).

    Per split: `file`, `tweets`, `tokens`, `entities` (per type and `total`; a dangling I- counts as an entity,
    as seqeval reads it), `bio_repaired`, `images` (found / missing / unsafe per tweet), `grounding_crops` and
    `rcnn_crops` (found / missing among the first 3 listed per tweet, `listed_images` = tweets with any entry,
    `unsafe` = tweets whose entries escape the folder). Top level: `dataset`, `root`, `splits`, `dictionaries`.
    """
    ds = BenchmarkDataset.from_folder(dataset_dir)
    out: dict = {"dataset": ds.name, "root": str(ds.root), "splits": {}, "dictionaries": {
        "images_dir": ds.images_dir.is_dir(),
        "grounding": {s: ds.grounding_dict_path(s).is_file() for s in ("train", "valid", "test")},
        "rcnn": ds.img2crop_path.is_file(),
    }}
    for split in ds.splits():
        tweets, report = read_conll_report(ds.split_file(split), lenient=lenient, fix_bio=fix_bio)
        entities = {t: 0 for t in ENTITY_TYPES}
        images = {"found": 0, "missing": 0, "unsafe": 0}
        grounding = {"found": 0, "missing": 0, "listed_images": 0, "unsafe": 0}
        rcnn = {"found": 0, "missing": 0, "listed_images": 0, "unsafe": 0}
        for tweet in tweets:
            for etype, _, _ in bio_spans(tweet.labels):
                entities[etype] += 1
            try:
                images["found" if ds.image_path(tweet.image_id) is not None else "missing"] += 1
            except UnsafePathError:
                images["unsafe"] += 1
            _count_crops(lambda: ds.grounding_entries(split, tweet.image_id), grounding)
            _count_crops(lambda: ds.rcnn_entries(tweet.image_id), rcnn)
        entities["total"] = sum(entities.values())
        out["splits"][split] = {
            "file": Path(ds.split_file(split)).name,
            "tweets": report.tweets,
            "tokens": report.tokens,
            "entities": entities,
            "bio_repaired": report.bio_repaired,
            "images": images,
            "grounding_crops": grounding,
            "rcnn_crops": rcnn,
        }
    return out

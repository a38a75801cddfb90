"""Generator of a small multimodal Twitter-2015-style sample in the exact DeepKE layout, deterministic by seed.

For most tweets the image decides: the same ambiguous name in the same words is PER, LOC, ORG or MISC by what one
visual source shows (a colour + shape per type: the original, the grounding or the RCNN crops), and no entity at all
(a decoy) when no source shows a cue, so every type needs its own cue, never the absence of the others'.
"""
from __future__ import annotations

import gzip
import json
import os
import random
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from cache.durable import atomic_file, ensure_dir, file_mode, refuse_link, remove_stale_temps
from exit_codes import UsageError
from pipeline.io.conll import Tweet, write_conll
from pipeline.io.sample_pictures import IMAGE_SIZE, TYPE_STYLE, closeup, crop_boxes, draw_scene, encode_image
from rpihmif.labels import ENTITY_TYPES

__all__ = ["make_sample", "TYPE_STYLE", "DATASET", "SIZES", "CUE_SOURCES", "CUES_FILE"]

DATASET = "twitter2015"
SIZES = {"train": 300, "valid": 100, "test": 100}  # tweets per split
GROUNDING_SIZE, RCNN_SIZE = 64, 48  # px of the crops (small: generation takes seconds)
IMAGE_DECIDED_SHARE = 0.6  # tweets whose entity type only the image tells
DECOYS_PER_PAIR = 0.5  # decoys (same words as a pair, neutral image, the name labelled O) per image-decided pair
MARKER = "sample.json"  # written into the dataset folder; a rerun replaces only a folder that has it
CUES_FILE = "sample_cues.json"  # {"<image_id>": {"type", "cue_source"}} of image-decided tweets (not DeepKE layout);
# both null for a decoy
CUE_SOURCES = ("orig", "grounding", "rcnn")  # the one visual source that shows an image-decided tweet's type cue
_DICT_TAG = {"train": "train", "valid": "val", "test": "test"}


AMBIGUOUS = ["Jordan", "Phoenix", "Apple", "Paris", "Washington", "Jackson", "Chelsea", "Madison", "Lincoln",
             "Amazon", "Orlando", "Georgia", "Victoria", "Austin", "Dallas", "Mercury", "Genesis", "Savannah",
             "Aurora", "Florence", "Sydney", "Chase", "Santa Clara", "Golden State", "Milky Way"]
NEUTRAL_TEMPLATES = ["Can't stop thinking about {X} today", "{X} is trending again !",
                     "Everyone is talking about {X} right now", "{X} never disappoints #blessed",
                     "Throwback to {X} {URL}", "Look at {X} ! {URL}", "So proud of {X} this week",
                     "Is {X} the best ? #poll", "Morning with {X} :)", "Nothing beats {X} , trust me"]
TEXT_TEMPLATES = {
    "PER": ["Happy birthday to {X} !", "{X} scored twice last night", "Great interview with {X} on TV",
            "{X} just posted a new selfie"],
    "LOC": ["Heavy snow in {X} this morning", "Just landed in {X} , what a view", "Traffic is crazy in {X} today",
            "Road trip to {X} tonight"],
    "ORG": ["{X} announced record profits", "Just got hired at {X} !", "{X} shares fell after the report",
            "Customer service at {X} is terrible"],
    "MISC": ["Watching the {X} with friends", "{X} tickets sold out in minutes", "Who is ready for the {X} ?",
             "Best {X} ever #fun"],
}
NAMES = {
    "PER": ["Barack Obama", "Taylor Swift", "LeBron James", "Serena Williams", "Emma Watson", "Lionel Messi", "Adele"],
    "LOC": ["Berlin", "Tokyo", "Nairobi", "Lake Tahoe", "Buenos Aires", "Toronto", "Mumbai", "Cape Town"],
    "ORG": ["Microsoft", "UNICEF", "BBC News", "Real Madrid", "Toyota", "NASA", "Starbucks", "Red Cross"],
    "MISC": ["Super Bowl", "World Cup", "Olympics", "Grammys", "Christmas", "Champions League", "Eurovision"],
}
PAIR_TEMPLATES = [("{X} visits {Y} next week", "PER", "LOC"), ("{X} signs with {Y}", "PER", "ORG"),
                  ("{X} will host the {Y}", "LOC", "MISC")]
NO_ENTITY = ["Good morning everyone", "This weather is unreal lol", "Cannot wait for the weekend !",
             "Who else is tired today ?"]
USERS = ["@news_now", "@fan_club", "@daily_pics", "@jen_k", "@tweetbot"]


@dataclass
class _PlannedTweet:
    """One generated tweet before writing: words, labels, how its type is decided, and its image recipe."""

    words: list[str]
    labels: list[str]
    kind: str  # image | decoy (image-decided: no cue, no entity) | text | none (no entity) | retweet
    image: str | None  # PER/LOC/ORG/MISC (type cue), "neutral", or None (no image file)
    cue_source: str | None = None  # image-decided: orig | grounding | rcnn, the only source showing the cue
    copy_of: int | None = None  # index of the item whose image bytes a retweet reuses
    n_grounding: int = 0  # crops listed in the dictionary
    n_rcnn: int = 0
    missing: set = field(default_factory=set)  # {"grounding_files", "grounding_entry", "rcnn_files", "rcnn_entry"}
    image_id: str = ""


def _fill(template: str, slots: dict[str, tuple[str, str]], rng: random.Random) -> tuple[list[str], list[str]]:
    """Words and BIO labels of a template; `slots` maps "{X}" -> (name, type or "" for an unlabelled name)."""
    words, labels = [], []
    for tok in template.split(" "):
        if tok in slots:
            name, etype = slots[tok]
            parts = name.split(" ")
            words += parts
            labels += [f"B-{etype}"] + [f"I-{etype}"] * (len(parts) - 1) if etype else ["O"] * len(parts)
        elif tok == "{URL}":
            words.append("http://t.co/" + "".join(rng.choice("abcdefghijkmnpqrstuvwxyzABCDEFGH23456789")
                                                   for _ in range(10)))
            labels.append("O")
        else:
            words.append(tok)
            labels.append("O")
    if rng.random() < 0.25:  # retweet-style prefix as in the real data
        words, labels = ["RT", rng.choice(USERS), ":"] + words, ["O", "O", "O"] + labels
    return words, labels


def _plan_split(n: int, rng: random.Random) -> list[_PlannedTweet]:
    """The tweets of one split: pairs of image-decided tweets (same words, two types; every other pair also a decoy
    with those words, a neutral image and no entity), text-decided and others."""
    items: list[_PlannedTweet] = []
    n_pairs = int(n * IMAGE_DECIDED_SHARE) // 2
    n_decoys = int(n_pairs * DECOYS_PER_PAIR)
    n_retweets = max(1, n // 40)
    # cue sources of the image-decided tweets: evenly orig / grounding / rcnn, in a seeded random order
    cue_sources = [CUE_SOURCES[i % len(CUE_SOURCES)] for i in range(2 * n_pairs)]
    rng.shuffle(cue_sources)
    decoys: list[_PlannedTweet] = []
    for p in range(n_pairs):
        template, name = rng.choice(NEUTRAL_TEMPLATES), rng.choice(AMBIGUOUS)
        pair_seed = rng.random()
        for etype in rng.sample(ENTITY_TYPES, 2):  # same words, two types: only the image tells them apart
            rng_words = random.Random(pair_seed)  # identical URLs / prefixes for both tweets of the pair
            words, labels = _fill(template, {"{X}": (name, etype)}, rng_words)
            items.append(_PlannedTweet(words, labels, "image", etype, cue_sources[len(items)]))
        if p < n_decoys:  # the same words again, no cue in any source: the name is no entity here
            decoys.append(_PlannedTweet(words, ["O"] * len(words), "decoy", "neutral"))
    for _ in range(n_retweets):
        src = rng.randrange(2 * n_pairs)  # an image-decided original with an entity, never another retweet
        orig = items[src]
        items.append(_PlannedTweet(["RT", rng.choice(USERS), ":"] + orig.words, ["O"] * 3 + orig.labels, "retweet",
                           orig.image, orig.cue_source, copy_of=src))
    items += decoys
    while len(items) < n:
        r = rng.random()
        if r < 0.1:
            words, labels = _fill(rng.choice(NO_ENTITY), {}, rng)
            kind, etype = "none", None
        elif r < 0.25:
            template, t1, t2 = rng.choice(PAIR_TEMPLATES)
            words, labels = _fill(template, {"{X}": (rng.choice(NAMES[t1]), t1),
                                             "{Y}": (rng.choice(NAMES[t2]), t2)}, rng)
            kind, etype = "text", t1
        else:
            etype = rng.choice(ENTITY_TYPES)
            words, labels = _fill(rng.choice(TEXT_TEMPLATES[etype]), {"{X}": (rng.choice(NAMES[etype]), etype)}, rng)
            kind = "text"
        u = rng.random()  # text-decided tweets: a matching picture, an unrelated one, or none at all
        image = (etype if etype and u < 0.4 else "neutral") if u < 0.7 else None
        items.append(_PlannedTweet(words, labels, kind, image))
    for item in items:
        if item.image is None:
            continue
        item.n_grounding, item.n_rcnn = rng.choice([1, 2, 3, 3, 4]), rng.choice([1, 2, 3, 3, 5])
        u = rng.random()
        # images with missing crops: listed but absent files, or no dictionary entry at all; never the crops
        # that carry an image-decided tweet's cue (its type must stay decidable from the sample)
        kinds = [k for k in ("grounding", "rcnn") if k != item.cue_source]
        if u < 0.2:
            item.missing = {f"{rng.choice(kinds)}_{rng.choice(['files', 'entry'])}"}
        elif u < 0.25:
            item.missing = {f"{k}_entry" for k in kinds}
    order = list(range(len(items)))
    rng.shuffle(order)
    pos = {old: new for new, old in enumerate(order)}
    out = [items[i] for i in order]
    for item in out:
        if item.copy_of is not None:
            item.copy_of = pos[item.copy_of]
    return out


def _write_images(root: Path, split: str, items: list[_PlannedTweet], seed: int, split_no: int,
                  hard: bool = False) -> tuple[dict, dict, dict]:
    """Write a split's images and crops; return its grounding dict, its RCNN entries and found/missing counts.
    hard: a crop-cued tweet's original is a plain neutral picture (no few-pixel cue object in it)."""
    images_dir, detect = root / f"{DATASET}_images", root / "twitter15_detect"
    crops_dir = root / f"{DATASET}_aux_images" / _DICT_TAG[split] / "crops"
    for d in (images_dir, crops_dir, detect / "crops"):
        d.mkdir(parents=True, exist_ok=True)
    grounding: dict[str, list[str]] = {}
    rcnn: dict[str, list[str]] = {}
    counts = {"images_found": 0, "images_missing": 0, "grounding_found": 0, "grounding_missing": 0,
              "rcnn_found": 0, "rcnn_missing": 0}
    drawn: dict[int, tuple[Image.Image, tuple, bytes]] = {}
    for k, item in enumerate(items):
        if item.image is None:
            counts["images_missing"] += 1  # IMGID present, no image file (as happens in the benchmark)
            continue
        if k not in drawn and item.copy_of is None:
            rng = np.random.default_rng([seed, split_no, k])
            if item.cue_source in ("grounding", "rcnn"):  # a neutral-looking original: the cue is in the crops
                img, box = draw_scene("neutral", rng, tiny=None if hard else item.image)
            else:
                img, box = draw_scene(item.image, rng)
            drawn[k] = (img, box, encode_image(img, "JPEG"))
    for k, item in enumerate(items):
        if item.image is None:
            continue
        src = item.copy_of if item.copy_of is not None else k
        img, box, jpeg = drawn[src]
        (images_dir / f"{item.image_id}.jpg").write_bytes(jpeg)  # a retweet shares the exact image bytes
        counts["images_found"] += 1
        rng = np.random.default_rng([seed, split_no, k, 1])

        def crop_of(kind: str, b: tuple[int, int, int, int], size: int) -> Image.Image:
            if item.cue_source is None and item.kind != "decoy":  # text-decided: plain crops of the original
                return img.crop(b).resize((size, size), Image.BILINEAR)
            # image-decided: only the crops of the cue source show the cue object; the others (all of a decoy's)
            # neutral objects
            return closeup(item.image if kind == item.cue_source else None, size, rng)

        def write_crops(kind: str, names: list[str], folder: Path, size: int, fmt: str) -> None:
            for n, b in zip(names, crop_boxes(box, len(names), rng)):
                listed = n in names[:3]
                if f"{kind}_files" in item.missing:
                    counts[f"{kind}_missing"] += listed
                    continue
                (folder / n).write_bytes(encode_image(crop_of(kind, b, size), fmt))
                counts[f"{kind}_found"] += listed

        if "grounding_entry" not in item.missing:
            names = [f"{item.image_id}_pred_yolo_crop_{n}.png" for n in range(item.n_grounding)]
            grounding[f"{item.image_id}.jpg"] = names
            write_crops("grounding", names, crops_dir, GROUNDING_SIZE, "PNG")
        if "rcnn_entry" not in item.missing:
            rels = [f"twitter15_detect/crops/{item.image_id}_{n}.jpg" for n in range(item.n_rcnn)]
            rcnn[item.image_id] = rels
            write_crops("rcnn", rels, root, RCNN_SIZE, "JPEG")
    return grounding, rcnn, counts


def _save_dict(path: Path, obj: dict[str, list[str]]) -> None:
    import torch

    torch.save({str(k): [str(x) for x in v] for k, v in obj.items()}, path)  # plain str: weights_only loads it


def _write_dump(path: Path, records: list[dict]) -> None:
    """tweets.jsonl.gz with a fixed gzip header (no name, mtime 0) so the bytes depend on the seed only."""
    with atomic_file(path) as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as gz:
        for rec in records:
            gz.write((json.dumps(rec, ensure_ascii=False, sort_keys=False) + "\n").encode("utf-8"))


def _split_summary(items: list, counts: dict[str, int]) -> dict:
    """The counts of one split in sample.json."""
    kinds = {k: sum(1 for i in items if i.kind == k) for k in ("image", "decoy", "retweet", "text", "none")}
    return {
        "tweets": len(items), "image_decided": kinds["image"] + kinds["retweet"] + kinds["decoy"],
        "retweets": kinds["retweet"], "decoys": kinds["decoy"], "text_decided": kinds["text"],
        "no_entity": kinds["none"],
        "entities": sum(1 for i in items for x in i.labels if x.startswith("B-")),
        "neutral_images": sum(1 for i in items if i.image == "neutral"), **counts,
        "images_missing_crops": sum(1 for i in items if i.image is not None and i.missing),
        "cue_sources": {c: sum(1 for i in items if i.cue_source == c) for c in CUE_SOURCES},
    }


def _dump_records(split: str, items: list, grounding: dict[str, list[str]], rcnn: dict[str, list[str]]) -> list[dict]:
    """The split's tweets as dump records, image and crop paths relative to OUT (what tag-corpus reads)."""
    base = f"{DATASET}/{DATASET}_aux_images/{_DICT_TAG[split]}/crops/"
    return [{"id": i.image_id, "text": " ".join(i.words),
             "image": f"{DATASET}/{DATASET}_images/{i.image_id}.jpg" if i.image is not None else None,
             "crops": [base + n for n in grounding.get(f"{i.image_id}.jpg", [])[:3]],
             "rcnn_crops": [f"{DATASET}/{r}" for r in rcnn.get(i.image_id, [])[:3]]} for i in items]


def make_sample(out: str | os.PathLike, seed: int = 0, sizes: dict[str, int] | None = None, hard: bool = False) -> dict:
    """Write `out/twitter2015/` (DeepKE layout) and `out/tweets.jsonl.gz`; return a JSON-able summary.

    Layout: {train,valid,test}.txt, twitter2015_images/<id>.jpg, twitter2015_{train,val,test}_dict.pth with
    grounding crops under twitter2015_aux_images/<train|val|test>/crops/, twitter15_detect/twitter15_img2crop.pth
    with RCNN crops under twitter15_detect/crops/, sample.json (the summary without paths) and sample_cues.json
    ({"<image_id>": {"type", "cue_source"}} of the image-decided tweets, retweets included; both null for a decoy).
    Image-decided tweets come in pairs with the same words and two entity types; each shows its type cue in one
    visual source only, drawn evenly from orig / grounding / rcnn (orig: a tinted picture with a large shape, crops
    of neutral grey objects; grounding or rcnn: a neutral picture with a few-pixel cue object, the crops of that
    kind zoom on it, the other kind shows neutral objects; the cue crops are never among the missing ones). Every
    other pair has a decoy: the same words, a neutral picture and neutral crops, the name labelled O, so no type
    can be read from the absence of the other types' cues. Text-decided tweets
    have a matching, unrelated or no image; some images lack crops (listed files absent or no entry); retweets
    share image bytes. hard: exactly one source holds an image-decided tweet's cue, the other two show neutral
    pictures (a crop-cued tweet's original has no few-pixel cue object either); summary["hard"] is then true.
    Same seed -> byte-identical files. An existing out/twitter2015 is replaced only if it holds sample.json.
    """
    out = Path(out)
    sizes = dict(SIZES if sizes is None else sizes)
    root = out / DATASET
    if root.is_symlink():
        raise UsageError(f"{root} is a symbolic link where make-sample writes its own folder; remove it")
    if root.exists() and not (root / MARKER).is_file():
        raise UsageError(f"{root} exists and is not a generated sample (no {MARKER}); choose another OUT folder")
    ensure_dir(out, "OUT")
    refuse_link(out / "tweets.jsonl.gz")
    remove_stale_temps(out, DATASET)
    tmp_root = Path(tempfile.mkdtemp(prefix=f".{DATASET}.tmp-{os.getpid()}-", dir=out))  # unguessable, O_EXCL
    os.chmod(tmp_root, file_mode(directory=True))
    rng = random.Random(seed)
    next_id = 1_000_000 + 1000 * (seed % 1000)
    summary: dict = {"dataset": DATASET, "seed": seed, "image_size": IMAGE_SIZE, "splits": {}, **({"hard": True} if hard else {})}
    records: list[dict] = []
    rcnn_all: dict[str, list[str]] = {}
    cues: dict[str, dict[str, str]] = {}
    try:
        for split_no, split in enumerate(("train", "valid", "test")):
            items = _plan_split(sizes[split], rng)
            for item in items:
                item.image_id, next_id = str(next_id), next_id + rng.randint(1, 9)
            grounding, rcnn, counts = _write_images(tmp_root, split, items, seed, split_no, hard)
            rcnn_all.update(rcnn)
            _save_dict(tmp_root / f"{DATASET}_{_DICT_TAG[split]}_dict.pth", grounding)
            write_conll(tmp_root / f"{split}.txt", [Tweet(i.image_id, i.words, i.labels, 0) for i in items])
            cues.update({i.image_id: {"type": i.cue_source and i.image, "cue_source": i.cue_source}
                         for i in items if i.cue_source is not None or i.kind == "decoy"})
            summary["splits"][split] = _split_summary(items, counts)
            records += _dump_records(split, items, grounding, rcnn)
        _save_dict(tmp_root / "twitter15_detect" / "twitter15_img2crop.pth", rcnn_all)
        n_all = sum(s["tweets"] for s in summary["splits"].values())
        summary["tweets"] = n_all
        summary["image_decided_share"] = round(sum(s["image_decided"] for s in summary["splits"].values()) / n_all, 4)
        (tmp_root / CUES_FILE).write_text(json.dumps(cues, indent=1, sort_keys=True) + "\n")
        (tmp_root / MARKER).write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
        if root.exists():
            shutil.rmtree(root)
        os.replace(tmp_root, root)
    finally:
        shutil.rmtree(tmp_root, ignore_errors=True)
    _write_dump(out / "tweets.jsonl.gz", records)
    return {**summary, "out": str(out), "dataset_dir": str(root), "dump": str(out / "tweets.jsonl.gz"),
            "files": sum(1 for p in root.rglob("*") if p.is_file()) + 1}

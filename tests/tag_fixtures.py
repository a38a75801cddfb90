"""Builders for the tag-corpus tests: a trained tiny checkpoint, a feature cache of dump images, and dumps.

Everything is made on the fly (tiny BERT from conftest, images drawn with Pillow); nothing binary is committed.
"""
from __future__ import annotations

import dataclasses
import gzip
import json
import random
from pathlib import Path

import numpy as np

FINGERPRINT_ID = "fp-tagtest"
PER, LOC, ORG = ["john smith", "obama"], ["london", "new york"], ["google", "apple", "nba"]
# "paris" is a person in half of the training tweets and a place in the other half: an ambiguous token
TEMPLATES = ["rt {} is at the game today", "love {} and the nba", "{} in {} today", "the game of {} is new"]


def _tweet(rng: random.Random) -> tuple[list[str], list[str]]:
    kinds = [("PER", rng.choice(PER + ["paris"])), ("LOC", rng.choice(LOC + ["paris"])), ("ORG", rng.choice(ORG))]
    words, labels = [], []
    template = rng.choice(TEMPLATES)
    slots = iter(rng.sample(kinds, 2))
    for part in template.split():
        if part == "{}":
            etype, name = next(slots)
            for j, w in enumerate(name.split()):
                words.append(w)
                labels.append(("B-" if j == 0 else "I-") + etype)
        else:
            words.append(part)
            labels.append("B-ORG" if part == "nba" else "O")
    return words, labels


def train_tiny_checkpoint(model_config, folder: Path, steps: int = 150, seed: int = 0) -> Path:
    """Train the tiny model on templated tweets for `steps` AdamW steps and save it with a cache fingerprint."""
    import torch

    from rpihmif.alignment import TweetEncoder
    from rpihmif.checkpoint import save_checkpoint
    from rpihmif.labels import LABEL2ID
    from rpihmif.model import build_model

    cfg = dataclasses.replace(model_config, visual=dataclasses.replace(model_config.visual,
                                                                         fingerprint=FINGERPRINT_ID))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matrices: one thread is fastest, and the 2 cores are shared
    torch.manual_seed(seed)
    rng = random.Random(seed)
    model, tokenizer = build_model(cfg)
    enc = TweetEncoder.for_model(tokenizer, cfg)
    opt = torch.optim.AdamW(model.param_groups(3e-3, 3e-3, 3e-2, 0.0))
    model.train()
    for _ in range(steps):
        tweets = [_tweet(rng) for _ in range(16)]
        batch = enc.collate([enc.encode_train(w)[0] for w, _ in tweets],
                            labels=[[LABEL2ID[x] for x in labels] for _, labels in tweets])
        loss = model(batch, None).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    torch.set_num_threads(threads)
    return save_checkpoint(folder, model, tokenizer)


def fingerprint(spec) -> dict:
    return {"id": FINGERPRINT_ID, "hashed": {"encoder": "random test features", "dtype": "float16"},
            "info": {"encoder": "random test features", "spec": dataclasses.asdict(spec)}}


def draw_images(folder: Path, n: int) -> list[str]:
    """n small JPEGs (with two PNG crops each) under folder/img; returns the image paths relative to folder."""
    from PIL import Image, ImageDraw

    (folder / "img").mkdir(parents=True, exist_ok=True)
    names = []
    for i in range(n):
        img = Image.new("RGB", (96, 64), (40 + 30 * i % 200, 90, 160))
        ImageDraw.Draw(img).ellipse((20, 10, 60, 50), fill=(230, 200, 40))
        img.save(folder / f"img/{i}.jpg")
        for c in range(2):
            img.crop((c * 30, 0, c * 30 + 40, 40)).save(folder / f"img/{i}_crop{c}.png")
        names.append(f"img/{i}.jpg")
    return names


def make_feature_cache(cache_dir: Path, spec, image_ids: list[str], seed: int = 0) -> None:
    """Random features for each dump image id, aliased as ("dump", id) in a cache of FINGERPRINT_ID."""
    from cache.reader import CacheWriter

    rng = np.random.default_rng(seed)
    n, k = len(image_ids), spec.max_crops
    with CacheWriter(cache_dir, fingerprint(spec), shard_size=64) as writer:
        writer.add_rows({
            "key": [f"k{i:04d}" for i in range(n)],
            "orig": rng.normal(size=(n, spec.orig_tokens, spec.dim)), "orig_mask": np.ones(n, bool),
            "grounding": rng.normal(size=(n, k, spec.grounding_tokens, spec.dim)), "grounding_mask": np.ones((n, k), bool),
            "rcnn": rng.normal(size=(n, k, spec.rcnn_tokens, spec.dim)), "rcnn_mask": np.ones((n, k), bool),
        })
        for i, image_id in enumerate(image_ids):
            writer.add_alias("dump", image_id, f"k{i:04d}")


TEXTS = ["RT @fan: john smith is at the game today in london 👍🏽 http://t.co/x1",
         "love google and the nba ❤️ #gameday", "obama in new york today… 👨‍👩‍👧",
         "the game of paris is new: Zoë’s café 日本 😂😂", "apple in london today!!!"]


def tweets(n: int, images: list[str] | None = None, seed: int = 0) -> list[dict]:
    """n dump records cycling TEXTS; record i gets images[i % len] when images are given (some uncached)."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        rec = {"id": f"t{i}", "text": TEXTS[i % len(TEXTS)] + (" x" * rng.randint(0, 3))}
        if images:
            img = images[i % len(images)]
            rec.update(image=img, crops=[img.replace(".jpg", "_crop0.png"), img.replace(".jpg", "_crop1.png")])
        out.append(rec)
    return out


def write_dump(path: Path, records: list[dict], extra_lines: list[bytes] = ()) -> Path:
    data = b"".join(json.dumps(r, ensure_ascii=False).encode() + b"\n" for r in records) + b"".join(
        line + b"\n" for line in extra_lines)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(data, mtime=0) if path.name.endswith(".gz") else data)
    return path

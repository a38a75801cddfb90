"""Fixtures-as-functions for the vision tests: a tiny CLIP vision model folder, Pillow-drawn images, a tiny dataset.

Nothing binary is committed: every image, model and dictionary is generated into a tmp folder.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

TINY_CLIP = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                 image_size=224, patch_size=32)


def make_tiny_clip(folder: Path, seed: int = 0) -> Path:
    """Save a tiny CLIPVisionModel (hidden 32, 2 layers, 2 heads, patch 32, 224 px) with save_pretrained."""
    import torch
    from transformers import CLIPVisionConfig, CLIPVisionModel

    torch.manual_seed(seed)
    CLIPVisionModel(CLIPVisionConfig(**TINY_CLIP)).save_pretrained(str(folder))
    return folder


def draw_image(path: Path, seed: int, size: tuple[int, int] = (96, 80), fmt: str | None = None) -> Path:
    """A small picture of coloured shapes, different for each seed."""
    rng = np.random.default_rng(seed)
    img = Image.new("RGB", size, tuple(int(v) for v in rng.integers(0, 255, 3)))
    d = ImageDraw.Draw(img)
    for _ in range(4):
        x0, y0 = int(rng.integers(0, size[0] - 10)), int(rng.integers(0, size[1] - 10))
        d.rectangle([x0, y0, x0 + int(rng.integers(5, 40)), y0 + int(rng.integers(5, 40))],
                    fill=tuple(int(v) for v in rng.integers(0, 255, 3)))
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, fmt)
    return path


def fake_fingerprint(fid: str = "testfp0000000000", dim: int = 8, tokens=(5, 3, 2), k: int = 2) -> dict:
    """A fingerprint dict without a model, for cache-only tests."""
    return {"id": fid, "hashed": {"random_init": False, "weights_sha256": fid * 2, "image_size": 224, "aux_size": 128,
                                  "rcnn_size": 64, "dtype": "float16"},
            "info": {"encoder": f"test encoder {fid}", "spec": {"dim": dim, "orig_tokens": tokens[0],
                                                                "grounding_tokens": tokens[1],
                                                                "rcnn_tokens": tokens[2], "max_crops": k}}}


def fake_rows(keys: list[str], dim: int = 8, tokens=(5, 3, 2), k: int = 2, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    n = len(keys)
    return {"key": np.array(keys), "orig": rng.standard_normal((n, tokens[0], dim)).astype(np.float32),
            "orig_mask": np.ones(n, bool), "grounding": rng.standard_normal((n, k, tokens[1], dim)).astype(np.float32),
            "grounding_mask": np.tile(np.array([True] + [False] * (k - 1)), (n, 1)),
            "rcnn": rng.standard_normal((n, k, tokens[2], dim)).astype(np.float32),
            "rcnn_mask": np.zeros((n, k), bool)}


def make_dataset(data_dir: Path, n_images: int = 6, name: str = "twitter2015", copies: int = 0,
                 bad: dict[str, bytes] | None = None) -> Path:
    """A tiny DeepKE-layout dataset: train/test splits, images, grounding crops (+dict), RCNN crops (+img2crop).

    `copies`: extra image ids whose file is a byte copy of image 0 (a retweet). `bad`: id -> raw bytes of a bad image.
    Image "missing" is listed in test.txt but has no file.
    """
    import torch

    root = data_dir / name
    images = root / f"{name}_images"
    detect = root / "twitter15_detect"
    ids = [f"{100 + i}" for i in range(n_images)]
    half = (n_images + copies + len(bad or {})) // 2
    gdicts: dict[str, dict] = {"train": {}, "test": {}}
    rdict = {}
    for i, iid in enumerate(ids):
        split = "train" if i < half else "test"
        crops = root / f"{name}_aux_images" / split / "crops"
        draw_image(images / f"{iid}.jpg", seed=i, fmt="PNG" if i % 2 else "JPEG")
        names = [f"{iid}_pred_yolo_crop_{c}.png" for c in range(i % 4)]  # 0..3 crops
        for c, n in enumerate(names):
            draw_image(crops / n, seed=1000 + 10 * i + c, size=(40, 50), fmt="PNG")
        gdicts[split][f"{iid}.jpg"] = names + ([f"{iid}_gone.png"] if i == 1 else [])  # one listed crop is missing
        rnames = [f"twitter15_detect/crops/{iid}_{c}.jpg" for c in range((i + 1) % 3)]
        for c, n in enumerate(rnames):
            draw_image(root / n, seed=2000 + 10 * i + c, size=(30, 30), fmt="JPEG")
        rdict[iid] = rnames
    extra = []
    for c in range(copies):
        cid = f"9{c:02d}"
        (images / f"{cid}.jpg").write_bytes((images / f"{ids[0]}.jpg").read_bytes())
        extra.append(cid)
    for bid, data in (bad or {}).items():
        (images / f"{bid}.jpg").write_bytes(data)
        extra.append(bid)
    detect.mkdir(parents=True, exist_ok=True)
    for split, gdict in gdicts.items():
        torch.save(gdict, root / f"{name}_{split}_dict.pth")
    torch.save(rdict, detect / "twitter15_img2crop.pth")

    def split(tids):
        return "".join(f"IMGID:{t}\nRT\tO\n@user\tO\nParis\tB-LOC\n\n" for t in tids)

    all_ids = ids + extra
    (root / "train.txt").write_text(split(all_ids[:half]), encoding="utf-8")
    (root / "test.txt").write_text(split(all_ids[half:] + ["missing"]), encoding="utf-8")
    return root


def write_dump(path: Path, records: list) -> Path:
    """JSONL dump; a str item is written as a raw (possibly malformed) line."""
    lines = [r if isinstance(r, str) else json.dumps(r) for r in records]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path

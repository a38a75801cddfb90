"""Speed of extract-features vs the bare CLIP encoder, on a generated image set; prints one JSON object.

bare: encoder forward only (originals + crops) on the same preprocessed batches, one process. end-to-end: run_extract
(hash + decode + resize + Ray actors + HDF5 shards). Also: rerun on the complete cache, and N copies = one forward.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipeline.stage_config import stage_config  # noqa: E402
from rpihmif.vision_encoder import Preprocessor, VisionSettings, encode, load_vision_encoder  # noqa: E402
from pipeline.extract.stage import run_extract  # noqa: E402


def _draw(path: Path, seed: int, size: tuple[int, int]) -> None:
    rng = np.random.default_rng(seed)
    img = Image.new("RGB", size, tuple(int(v) for v in rng.integers(0, 255, 3)))
    d = ImageDraw.Draw(img)
    for _ in range(12):
        x, y = int(rng.integers(0, size[0])), int(rng.integers(0, size[1]))
        d.ellipse([x, y, x + int(rng.integers(10, 200)), y + int(rng.integers(10, 200))],
                  fill=tuple(int(v) for v in rng.integers(0, 255, 3)))
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, "JPEG", quality=90)


def make_images(root: Path, n: int, crops: int, copies: int) -> Path:
    """n distinct 640x480 JPEGs with `crops` grounding + `crops` RCNN crops each, plus `copies` byte copies of #0."""
    records = []
    for i in range(n):
        _draw(root / "img" / f"{i}.jpg", i, (640, 480))
        g = [f"crops/{i}_g{c}.jpg" for c in range(crops)]
        r = [f"crops/{i}_r{c}.jpg" for c in range(crops)]
        for c, p in enumerate(g + r):
            _draw(root / p, 10_000 + i * 10 + c, (160, 120))
        records.append({"id": i, "text": "t", "image": f"img/{i}.jpg", "crops": g, "rcnn_crops": r})
    for c in range(copies):
        (root / "img" / f"copy{c}.jpg").write_bytes((root / "img" / "0.jpg").read_bytes())
        records.append({**records[0], "id": n + c, "image": f"img/copy{c}.jpg"})
    dump = root / "tweets.jsonl"
    dump.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return dump


def bare_forward(root: Path, n: int, crops: int, settings: VisionSettings, batch_size: int) -> dict:
    """Encoder forward only, on batches preprocessed beforehand (not timed)."""
    model = load_vision_encoder(settings)
    pre = Preprocessor()
    load = lambda p, s: pre(Image.open(p).convert("RGB"), s)  # noqa: E731
    batches = []
    for start in range(0, n, batch_size):
        ids = range(start, min(n, start + batch_size))
        batches.append((torch.stack([load(root / "img" / f"{i}.jpg", settings.image_size) for i in ids]),
                        torch.stack([load(root / "crops" / f"{i}_g{c}.jpg", settings.aux_size)
                                     for i in ids for c in range(crops)]) if crops else None,
                        torch.stack([load(root / "crops" / f"{i}_r{c}.jpg", settings.rcnn_size)
                                     for i in ids for c in range(crops)]) if crops else None))
    with torch.inference_mode():
        encode(model, batches[0][0][:2])  # warm-up
        t = time.perf_counter()
        for orig, g, r in batches:
            encode(model, orig)
            if g is not None:
                encode(model, g)
                encode(model, r)
        dt = time.perf_counter() - t
    return {"images": n, "seconds": round(dt, 3), "images_per_s": round(n / dt, 3), "torch_threads": torch.get_num_threads()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--images", type=int, default=160, help="distinct images")
    ap.add_argument("--crops", type=int, default=3, help="grounding and RCNN crops per image (each kind)")
    ap.add_argument("--copies", type=int, default=16, help="extra byte copies of image 0 (dedup check)")
    ap.add_argument("--layers", type=int, default=12, help="random-init encoder layers (12 = ViT-B/32)")
    ap.add_argument("--hidden", type=int, default=768, help="random-init hidden size (768 = ViT-B/32)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--skip-bare", action="store_true")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)

    with tempfile.TemporaryDirectory(prefix="extract_speed_") as tmp:
        root = Path(tmp)
        dump = make_images(root, args.images, args.crops, args.copies)
        settings = VisionSettings(random_vit_layers=args.layers, random_vit_hidden=args.hidden)
        config = stage_config("extract", None, [
            "dataset=", f"cache_dir={root / 'cache'}", f"random_vit_layers={args.layers}",
            f"random_vit_hidden={args.hidden}", f"workers={args.workers}", f"batch_size={args.batch_size}",
            "shard_size=512"])
        bare = None if args.skip_bare else bare_forward(root, args.images, args.crops, settings, args.batch_size)
        t = time.perf_counter()
        first = run_extract(config, dumps=[dump])
        e2e_s = time.perf_counter() - t
        t = time.perf_counter()
        rerun = run_extract(config, dumps=[dump])
        rerun_s = time.perf_counter() - t
    e2e = {"seconds_wall": round(e2e_s, 3), "images_per_s_wall": round(first.computed / e2e_s, 3),
           "compute_seconds": first.compute_seconds, "images_per_s_compute_phase": first.images_per_s,
           "steady_images_per_s": first.steady_images_per_s, "computed": first.computed,
           "deduplicated": first.deduplicated}
    out = {
        "encoder": first.encoder, "workers": args.workers, "batch_size": args.batch_size,
        "crops_per_kind": args.crops, "bare_forward": bare, "end_to_end": e2e,
        "ratio_steady": round(e2e["steady_images_per_s"] / bare["images_per_s"], 3)
        if bare and e2e["steady_images_per_s"] else None,
        "ratio_compute_phase": round(e2e["images_per_s_compute_phase"] / bare["images_per_s"], 3) if bare else None,
        "ratio_wall": round(e2e["images_per_s_wall"] / bare["images_per_s"], 3) if bare else None,
        "rerun_seconds": round(rerun_s, 3), "rerun_computed": rerun.computed,
        "copies": args.copies, "copies_cost_one_forward": first.deduplicated == args.copies
        and first.computed == args.images,
    }
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()

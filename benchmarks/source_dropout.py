"""Source dropout on the harder generated sample (make-sample --hard): F1 with all sources, the original only and no
image, next to a text-only model, and the routing table (cue source x argmax source), before and after dropout.

    python benchmarks/source_dropout.py --seeds 1,2,3 --epochs 6 --vit-layers 2 --source 0.3 --image 0.2

Prints one JSON object: per config and seed the probe_sample_run scores, then the mean over seeds. Not run by CI.
"""
from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.extract.stage import run_extract  # noqa: E402
from pipeline.io.sample import DATASET, SIZES, make_sample  # noqa: E402
from pipeline.stage_config import stage_config  # noqa: E402
from pipeline.train.routing_probe import probe_sample_run  # noqa: E402
from pipeline.train.trainer import train  # noqa: E402

KEYS = ("dev_f1", "dev_f1_orig_only", "dev_f1_no_image", "dev_image_decided_f1")


def _configs(source: float, image: float) -> dict[str, list[str]]:
    return {"text_only": ["text_only=true"],
            "before": ["visual_dropout.source=0", "visual_dropout.image=0"],
            "after": [f"visual_dropout.source={source}", f"visual_dropout.image={image}"]}


def _close_file_logs() -> None:
    for h in list(logging.getLogger().handlers):  # one train.log per run, not appended to the next runs'
        if isinstance(h, logging.FileHandler):
            logging.getLogger().removeHandler(h)
            h.close()


def main() -> None:
    # fmt: off
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--work", help="folder for the sample, cache and runs (default: a temporary folder)")
    ap.add_argument("--seeds", default="1", help="comma list of training seeds")
    ap.add_argument("--epochs", type=int, default=6, help="training epochs (every config)")
    ap.add_argument("--vit-layers", type=int, default=2, help="layers of the random-init ViT-B/32-shaped encoder")
    ap.add_argument("--scale", type=float, default=1.0, help="fraction of the default sample size per split")
    ap.add_argument("--source", type=float, default=0.3, help="visual_dropout.source of the 'after' model")
    ap.add_argument("--image", type=float, default=0.2, help="visual_dropout.image of the 'after' model")
    ap.add_argument("--configs", default="text_only,before,after", help="comma list of text_only, before, after")
    ap.add_argument("--set", action="append", default=[], dest="sets", help="extra train override (repeatable)")
    # fmt: on
    args = ap.parse_args()
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="source_dropout_"))
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    data, cache = work / "data", work / "cache"
    if not (data / DATASET).is_dir():
        make_sample(data, seed=0, sizes={k: max(8, int(v * args.scale)) for k, v in SIZES.items()}, hard=True)
    run_extract(stage_config("extract", overrides=[f"data_dir={data}", f"dataset={DATASET}", f"cache_dir={cache}",
                                                   f"random_vit_layers={args.vit_layers}", "workers=0"]))
    configs = _configs(args.source, args.image)
    runs: dict[str, dict[int, Any]] = {}
    for seed in [int(s) for s in args.seeds.split(",") if s]:
        for name in [c for c in args.configs.split(",") if c]:
            start, run = time.monotonic(), work / "runs" / f"{name}-{seed}"
            cfg = stage_config("train", overrides=[f"data_dir={data}", f"dataset={DATASET}", f"cache_dir={cache}",
                                                   f"num_epochs={args.epochs}", f"seed={seed}", "device=cpu",
                                                   f"save_path={run}", *args.sets, *configs[name]])
            summary = train(cfg)
            _close_file_logs()
            res = probe_sample_run(run / "best", data, DATASET, cache)
            res = {k: v for k, v in res.items() if k not in ("dev", "dev_image_decided")}
            res |= {"best_epoch": summary["best_epoch"], "train_seconds": round(time.monotonic() - start, 1)}
            runs.setdefault(name, {})[seed] = res
            print(json.dumps({name: {"seed": seed, **{k: res.get(k) for k in KEYS}}}), file=sys.stderr, flush=True)
    mean = {name: {k: round(statistics.mean(r[k] for r in by_seed.values()), 2)
                   for k in KEYS if all(k in r for r in by_seed.values())}
            for name, by_seed in runs.items()}
    for name, by_seed in runs.items():
        acc = [r["routing"]["accuracy"] for r in by_seed.values() if r.get("routing", {}).get("accuracy") is not None]
        if acc:
            mean[name]["routing_accuracy"] = round(statistics.mean(acc), 2)
    print(json.dumps({"work": str(work), "epochs": args.epochs, "vit_layers": args.vit_layers, "scale": args.scale,
                      "dropout_after": {"source": args.source, "image": args.image}, "mean": mean, "runs": runs,
                      "seconds": round(time.monotonic() - t0, 1)}, indent=2))


if __name__ == "__main__":
    main()

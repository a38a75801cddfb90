"""Ablation table on the generated sample: text-only vs full RPI-HMIF vs no-HIM, IFFE rounds, single visual sources.

Prints one JSON object: dev F1 (all entities and image-decided ones) per config, the multimodal gain over text-only,
and whether the routing mass of image-decided entities sits on their cue source (sample_cues.json) above chance,
next to the source whose masking lowers their score most (occlusion).

    python benchmarks/ablation_sample.py --vit-layers 4 --epochs 8      # quick (random-init 4-layer ViT)
    python benchmarks/ablation_sample.py                                  # the random-init ViT-B/32-shaped encoder

Every config trains the packaged MiniLM with the same seed, epochs and learning rates; features are extracted once.
Not run by CI.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.stage_config import stage_config  # noqa: E402
from pipeline.extract.stage import run_extract  # noqa: E402
from pipeline.io.dataset import BenchmarkDataset  # noqa: E402
from pipeline.io.sample import DATASET, make_sample  # noqa: E402
from pipeline.train.routing_probe import probe_sample_run  # noqa: E402
from pipeline.train.trainer import train  # noqa: E402

# name -> train overrides (on top of the shared ones); "full" is the default model (iffe.iterations 3, all sources)
CONFIGS: dict[str, list[str]] = {
    "text_only": ["text_only=true"],
    "full": [],  # train.yaml: him.source_attention true (per-source pooling, then a softmax over the sources)
    "flat_attention": ["him.source_attention=false"],  # one softmax over all tokens (the default before issue 15)
    "no_him": ["him.question="],
    "iterations_0": ["iffe.iterations=0"],
    "iterations_1": ["iffe.iterations=1"],
    "iterations_3": ["iffe.iterations=3"],  # = full; trained again only if asked for explicitly
    "only_orig": ["visual.sources=[orig]"],
    "only_grounding": ["visual.sources=[grounding]"],
    "only_rcnn": ["visual.sources=[rcnn]"],
}
DEFAULT_CONFIGS = ["text_only", "full", "no_him", "iterations_0", "iterations_1", "only_orig", "only_grounding",
                   "only_rcnn"]


def main() -> None:
    # fmt: off
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", help="folder holding twitter2015/ from make-sample (default: generate into --work)")
    ap.add_argument("--work", help="folder for the sample, cache and runs (default: a temporary folder)")
    ap.add_argument("--sample-seed", type=int, default=0, help="make-sample seed")
    ap.add_argument("--vit-layers", type=int, default=12, help="layers of the random-init ViT-B/32-shaped encoder")
    ap.add_argument("--epochs", type=int, default=8, help="training epochs (every config)")
    ap.add_argument("--seed", type=int, default=1, help="training seed (every config)")
    ap.add_argument("--configs", default=",".join(DEFAULT_CONFIGS), help=f"comma list of {list(CONFIGS)}")
    ap.add_argument("--set", action="append", default=[], dest="sets",
                    help="extra train override for EVERY config, e.g. fusion_learning_rate=3e-3 (repeatable)")
    ap.add_argument("--workers", type=int, default=0, help="extract-features workers (0 = in-process, no Ray)")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch default; 1 helps on busy CPUs)")
    # fmt: on
    args = ap.parse_args()
    names = [c for c in args.configs.split(",") if c]
    unknown = [c for c in names if c not in CONFIGS]
    if unknown:
        ap.error(f"unknown configs {unknown}; use {list(CONFIGS)}")
    if args.threads:
        import torch
        torch.set_num_threads(args.threads)
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="ablation_sample_"))
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    data = Path(args.data) if args.data else work / "data"
    if not args.data:
        make_sample(data, seed=args.sample_seed)
    cache = work / "cache"
    extract_cfg = stage_config("extract", overrides=[f"data_dir={data}", f"dataset={DATASET}", f"cache_dir={cache}",
                                                    f"random_vit_layers={args.vit_layers}",
                                                    f"workers={args.workers}"])
    extract = run_extract(extract_cfg)
    t_extract = time.monotonic() - t0
    shared = [f"data_dir={data}", f"dataset={DATASET}", f"cache_dir={cache}", f"num_epochs={args.epochs}",
              f"seed={args.seed}", "device=cpu", *args.sets]
    results: dict[str, Any] = {}
    for name in names:
        start = time.monotonic()
        run = work / "runs" / name
        cfg = stage_config("train", overrides=[*shared, f"save_path={run}", *CONFIGS[name]])
        summary = train(cfg)
        for h in list(logging.getLogger().handlers):  # one train.log per run, not appended to the next runs'
            if isinstance(h, logging.FileHandler):
                logging.getLogger().removeHandler(h)
                h.close()
        res = probe_sample_run(run / "best", data, DATASET, cache)
        res["best_epoch"] = summary["best_epoch"]
        res["train_seconds"] = round(time.monotonic() - start, 1)
        results[name] = res
        print(json.dumps({name: {k: res[k] for k in ("dev_f1", "dev_image_decided_f1", "best_epoch",
                                                      "train_seconds")} | ({"routing": res["routing"]}
                                                                           if "routing" in res else {})}),
              file=sys.stderr, flush=True)
    table = {name: {k: v for k, v in r.items() if k not in ("dev", "dev_image_decided")} for name, r in results.items()}
    out: dict[str, Any] = {
        "data": str(data), "work": str(work), "vit": f"random-init ViT-B/32-shaped, {args.vit_layers} layers",
        "fingerprint": extract.fingerprint_id, "epochs": args.epochs, "seed": args.seed,
        "shared_overrides": shared[3:], "extract_seconds": round(t_extract, 1),
        "dev_tweets": len(BenchmarkDataset(data, DATASET).read("valid")),
        "table": table,
        "per_type": {name: r["dev"]["per_type"] for name, r in results.items()},
    }
    if "text_only" in results and "full" in results:
        out["multimodal_gain_f1"] = round(results["full"]["dev_f1"] - results["text_only"]["dev_f1"], 2)
        out["multimodal_gain_image_decided_f1"] = round(
            results["full"]["dev_image_decided_f1"] - results["text_only"]["dev_image_decided_f1"], 2)
    out["seconds"] = round(time.monotonic() - t0, 1)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()

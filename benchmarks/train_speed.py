"""One training epoch from the feature cache vs one epoch with CLIP run online, same model and data; prints JSON.

Each mode runs in its own subprocess (so peak RSS is its own); the sample comes from make-sample, the cache from
extract-features with the same encoder settings; the ratio online/cached seconds is the speed-up of caching.
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def one_epoch(args: argparse.Namespace) -> None:
    """Child: build the trainer in `args.mode` and time one training epoch (no dev scoring)."""
    import torch

    from pipeline.stage_config import stage_config
    from pipeline.train.trainer import Trainer

    cfg = stage_config("train", overrides=[f"data_dir={args.data}", "dataset=twitter2015", f"cache_dir={args.cache}",
                                          f"features={args.mode}", f"save_path={args.data.parent / 'run'}", "device=cpu",
                                          f"random_vit_layers={args.layers}", f"bert_name={args.bert_name}"])
    trainer = Trainer(cfg)
    start = time.perf_counter()
    loss = trainer._train_epoch()
    seconds = time.perf_counter() - start
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"mode": args.mode, "seconds": round(seconds, 2), "tweets": len(trainer.encoded),
                      "tweets_per_s": round(len(trainer.encoded) / seconds, 2), "loss": round(loss, 4),
                      "peak_rss_mib": round(peak_kib / 1024, 1), "torch_threads": torch.get_num_threads()}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--layers", type=int, default=12, help="random-init ViT layers (12 = ViT-B/32 shaped)")
    ap.add_argument("--bert-name", default="", help="text encoder folder; '' = packaged MiniLM")
    ap.add_argument("--mode", choices=["cached", "online"], help=argparse.SUPPRESS)
    ap.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--cache", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.mode:
        return one_epoch(args)

    from pipeline.stage_config import stage_config
    from pipeline.extract.stage import run_extract
    from pipeline.io.sample import make_sample

    with tempfile.TemporaryDirectory(prefix="train_speed_") as tmp:
        data, cache = Path(tmp) / "data", Path(tmp) / "cache"
        make_sample(data, seed=0)
        start = time.perf_counter()
        extract = run_extract(stage_config("extract", overrides=[
            f"data_dir={data}", "dataset=twitter2015", f"cache_dir={cache}", f"random_vit_layers={args.layers}"]), dumps=[])
        extract_s = time.perf_counter() - start
        runs = {}
        for mode in ("cached", "online"):
            cmd = [sys.executable, __file__, "--mode", mode, "--data", str(data), "--cache", str(cache),
                   "--layers", str(args.layers), "--bert-name", args.bert_name]
            res = subprocess.run(cmd, capture_output=True, text=True, check=True)
            runs[mode] = json.loads(res.stdout.strip().splitlines()[-1])
    print(json.dumps({
        "text_encoder": args.bert_name or "packaged MiniLM-L6", "vision_encoder": extract.encoder,
        "extract_seconds_once": round(extract_s, 1), "cached": runs["cached"], "online": runs["online"],
        "speedup_cached_vs_online": round(runs["online"]["seconds"] / runs["cached"]["seconds"], 2),
        "loss_equal": abs(runs["online"]["loss"] - runs["cached"]["loss"]) < 1e-2,
    }, indent=2))


if __name__ == "__main__":
    main()

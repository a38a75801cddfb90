"""Plan time of an extract-features rerun on a complete cache, with the plan memo vs without it; prints one JSON object.

memo: file hashes and the encoder fingerprint remembered in `<cache>/.extract_memo.json`. bare: the same plan with the
memo deleted first (every image hashed, the encoder built and its weights hashed), as before the memo existed.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from extract_speed import make_images  # noqa: E402  (the same generated 640x480 JPEGs + crops)

from cache.memo import MEMO_NAME  # noqa: E402
from pipeline.extract.plan import plan_extract  # noqa: E402
from pipeline.extract.stage import run_extract  # noqa: E402
from pipeline.stage_config import stage_config  # noqa: E402

REPO = Path(__file__).resolve().parent.parent


def timed_plan(config, drop_memo: bool) -> tuple[float, int]:
    if drop_memo:
        (Path(config.cache_dir) / MEMO_NAME).unlink(missing_ok=True)
    t = time.perf_counter()
    plan = plan_extract(config)
    seconds = time.perf_counter() - t
    assert plan.complete, "the cache should be complete after the first run"
    return seconds, plan.files_hashed


def cli_seconds(args: list[str]) -> float:
    t = time.perf_counter()
    subprocess.run([sys.executable, *args], cwd=REPO, check=True, capture_output=True)
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--images", type=int, default=1000, help="distinct original images")
    ap.add_argument("--crops", type=int, default=2, help="grounding crops and RCNN crops per image (each)")
    ap.add_argument("--layers", type=int, default=6, help="random-init ViT layers (the demo's encoder)")
    ap.add_argument("--repeat", type=int, default=3, help="timed plans of each kind (median reported)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        t = time.perf_counter()
        dump = make_images(root / "images", args.images, args.crops, copies=0)
        generate_s = time.perf_counter() - t
        time.sleep(2.1)  # past the memo's racy window (2 s after the last write)
        sets = [f"cache_dir={root / 'cache'}", "dataset=", f"vision.random_vit_layers={args.layers}", "workers=0",
                "vision.image_size=32", "vision.aux_size=32", "vision.rcnn_size=32", f"dump.files=[{dump}]"]  # a cheap fill
        config = stage_config("extract", overrides=sets)
        t = time.perf_counter()
        first = run_extract(config)
        fill_s = time.perf_counter() - t
        memo = [timed_plan(config, drop_memo=False) for _ in range(args.repeat)]
        bare = [timed_plan(config, drop_memo=True) for _ in range(args.repeat)]
        timed_plan(config, drop_memo=False)  # memo rewritten by the last bare plan
        cli = ["cli.py", "extract-features", *(a for s in sets for a in ("--set", s))]
        imports_s = cli_seconds(["-c", "import cli, pipeline.extract.stage"])
        rerun_s = cli_seconds(cli)
    memo_s = statistics.median(s for s, _ in memo)
    bare_s = statistics.median(s for s, _ in bare)
    print(json.dumps({
        "images": args.images, "crops": 2 * args.crops * args.images, "encoder": first.encoder,
        "generate_seconds": round(generate_s, 1), "first_run_seconds": round(fill_s, 1),
        "plan_seconds_memo": round(memo_s, 3), "files_hashed_memo": memo[-1][1],
        "plan_seconds_bare": round(bare_s, 3), "files_hashed_bare": bare[-1][1],
        "speedup_bare_over_memo": round(bare_s / memo_s, 1) if memo_s else None,
        "cli_rerun_seconds": round(rerun_s, 2), "cli_imports_seconds": round(imports_s, 2),
        "cli_rerun_beyond_imports_seconds": round(rerun_s - imports_s, 2), "cpus": os.cpu_count(),
    }, indent=2))


if __name__ == "__main__":
    main()

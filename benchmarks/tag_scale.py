"""tag-corpus scaling with a null model (instant inference): records/s of the whole stage with 1 and 2 workers, and
the driver's CPU time per record next to a worker's; prints JSON.

Run: `.venv/bin/python benchmarks/tag_scale.py [--n 100000] [--chunk 5000]`. The stage does everything but the model:
read and cut lines (driver), parse, tokenize, build Arrow, write zstd Parquet (workers), commit (driver).
"""
from __future__ import annotations

import argparse
import gzip
import json
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

TEXTS = ["RT @fan: john smith is at the game today in london 👍🏽 http://t.co/x1", "love google and the nba ❤️ #gameday",
         "obama in new york today… 👨‍👩‍👧", "the game of paris is new: Zoë’s café 日本 😂😂", "apple in london today!!!"]


class _Pred:
    entities: list = []
    image_used = False


class NullTagger:
    """Instant inference: no entities (the cost left is the stage's own)."""

    def __init__(self, load_path: str, device: str, threads: int, precision: str):
        pass

    def predict(self, words, features=None, batch_size=64, sources=(), text_only=False):
        return [_Pred() for _ in words]


def write_dump(path: Path, n: int) -> Path:
    with gzip.open(path, "wt", encoding="utf-8", compresslevel=1) as fh:
        for i in range(n):
            fh.write(json.dumps({"id": str(i), "text": f"{TEXTS[i % len(TEXTS)]} #{i}"}, ensure_ascii=False) + "\n")
    return path


def run(dump: Path, out: Path, workers: int, chunk: int) -> dict:
    from pipeline.stage_config import stage_config
    from pipeline.tag.plan import ModelSpec
    from pipeline.tag.stage import run_tag
    from rpihmif.labels import LABELS

    conf = stage_config("tag", overrides=[f"out={out}", f"workers={workers}",
                                          f"chunk_records={chunk}", "device=cpu", "progress_every_s=1000"])
    spec = ModelSpec("null-model", "", False, "", list(LABELS), factory=NullTagger)
    t0 = time.perf_counter()
    s = run_tag([dump], conf, spec)
    wall = time.perf_counter() - t0
    return {"workers": workers, "ray": workers > 0, "rows": s["rows"], "wall_s": round(wall, 2),
            "records_per_s": round(s["rows"] / wall, 1), "steady_records_per_s": s.get("steady_tweets_per_s"),
            "driver_cpu_us_per_record": s["driver_cpu_us_per_record"],
            "worker_cpu_us_per_record": s["worker_cpu_us_per_record"], "commit_s": s["commit_s"],
            "worker_cpu_s": s["worker_cpu_s"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--chunk", type=int, default=5000)
    args = ap.parse_args()
    from pipeline.runtime.progress import setup_logging

    setup_logging(level=30)
    from pipeline.runtime.ray_cluster import init_ray

    with tempfile.TemporaryDirectory() as tmp:
        dump = write_dump(Path(tmp) / "bench.jsonl.gz", args.n)
        runs = [run(dump, Path(tmp) / "local1", 0, args.chunk)]
        t0 = time.perf_counter()
        with init_ray("", 2):  # started once: the Ray runs measure the stage, not Ray's start-up (reported apart)
            ray_start = time.perf_counter() - t0
            runs += [run(dump, Path(tmp) / "ray1", 1, args.chunk),
                     run(dump, Path(tmp) / "ray2", 2, args.chunk)]
    one_ray, two = runs[1], runs[2]
    print(json.dumps({
        "records": args.n, "chunk_records": args.chunk, "ray_start_s": round(ray_start, 2), "runs": runs,
        "speedup_2_vs_1_ray_workers": round(two["records_per_s"] / one_ray["records_per_s"], 2),
        "steady_speedup_2_vs_1_ray_workers": round(two["steady_records_per_s"] / one_ray["steady_records_per_s"], 2),
        "speedup_2_ray_vs_1_in_process": round(two["records_per_s"] / runs[0]["records_per_s"], 2),
        "driver_over_worker_cpu": round(two["driver_cpu_us_per_record"] / two["worker_cpu_us_per_record"], 3),
    }, indent=2))


if __name__ == "__main__":
    main()

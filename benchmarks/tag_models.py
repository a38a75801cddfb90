"""tag-corpus speed of two checkpoints in one run (e.g. today's recipe vs a new one): tweets/s each, and the ratio.

    python benchmarks/tag_models.py runs/recipes/today_twitter2015_s1/best runs/recipes/joint_twitter2015_s1/best

Same dump (real Twitter-2015 train text when ../shared/data is there), batch size and torch threads for both; the runs
alternate A B A B ... so drift of a shared machine falls on both sides; the median per model is reported.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from tag_speed import child_run, tweet_texts, write_dump  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("baseline", type=Path, help="checkpoint folder A (the reference)")
    ap.add_argument("candidate", type=Path, help="checkpoint folder B")
    ap.add_argument("--n", type=int, default=2000, help="tweets per run")
    ap.add_argument("--rounds", type=int, default=3, help="alternating runs per model")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (0 = default)")
    args = ap.parse_args()
    speeds: dict[str, list[float]] = {"baseline": [], "candidate": []}
    with tempfile.TemporaryDirectory() as tmp_s:
        tmp = Path(tmp_s)
        dump = write_dump(tmp / "dump.jsonl.gz", args.n, tweet_texts())
        for r in range(args.rounds):
            for side in speeds:
                run = child_run(dump, getattr(args, side), tmp / f"out_{side}_{r}", args.batch_size, args.threads)
                speeds[side].append(run["per_file_tweets_per_s"])
    median = {side: statistics.median(v) for side, v in speeds.items()}
    print(json.dumps({"tweets": args.n, "batch_size": args.batch_size, "torch_threads": args.threads,
                      "models": {side: str(getattr(args, side)) for side in speeds},
                      "tweets_per_s": speeds, "median_tweets_per_s": median,
                      "ratio_candidate_over_baseline": round(median["candidate"] / median["baseline"], 3)}, indent=1))


if __name__ == "__main__":
    main()

"""kill -9 recovery of tag-corpus on a 200k-record dump: three trials, each killed at a random moment then rerun;
reports chunks committed at the kill, chunks the rerun recomputed, and whether the dataset equals an uninterrupted
run's row by row on id; prints JSON.

Run: `.venv/bin/python benchmarks/tag_kill_recovery.py [--n 200000] [--chunk 10000] [--seed 0]` (null model: the
stage's own reading, parsing, Parquet writing and commits are what is killed).
"""
from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from tag_scale import NullTagger, write_dump  # noqa: E402


def tag(dump: Path, out: Path, chunk: int) -> dict:
    from pipeline.stage_config import stage_config
    from pipeline.tag.plan import ModelSpec
    from pipeline.tag.stage import run_tag
    from rpihmif.labels import LABELS

    conf = stage_config("tag", overrides=[f"out={out}", f"chunk_records={chunk}", "device=cpu",
                                          "progress_every_s=1000"])
    return run_tag([dump], conf, ModelSpec("null-model", "", False, "", list(LABELS), factory=NullTagger))


def committed(out: Path) -> int:
    from pipeline.tag.manifest import read_state

    try:
        state = read_state(out)
    except Exception:  # noqa: BLE001 -- read while the run writes: count it next poll
        return 0
    return len(state["chunks"]) if state else 0


def table(out: Path):
    import pyarrow.dataset as ds

    t = ds.dataset(out / "data", format="parquet").to_table().drop_columns(["tagged_at"])
    return t.sort_by([("id", "ascending")])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--n", type=int, default=200_000)
    ap.add_argument("--chunk", type=int, default=10_000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        tag(Path(args.child[0]), Path(args.child[1]), args.chunk)
        return
    rng = random.Random(args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        dump = write_dump(Path(tmp) / "big.jsonl.gz", args.n)
        t0 = time.perf_counter()
        ref_summary = tag(dump, Path(tmp) / "ref", args.chunk)
        full_s = time.perf_counter() - t0
        total = ref_summary["chunks"]
        ref = table(Path(tmp) / "ref")
        trials = []
        for trial in range(3):
            out = Path(tmp) / f"out{trial}"
            proc = subprocess.Popen([sys.executable, __file__, "--chunk", str(args.chunk), "--child", str(dump),
                                     str(out)], cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            delay = rng.uniform(0.15, 0.85) * full_s + 3.0  # + the child's import time
            time.sleep(delay)
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            at_kill = committed(out)
            rerun = tag(dump, out, args.chunk)
            got = table(out)
            trials.append({"killed_after_s": round(delay, 2), "returncode": proc.returncode,
                           "chunks_committed_at_kill": at_kill, "chunks_recomputed": rerun["chunks"],
                           "rerun_redid_only_uncommitted": rerun["chunks"] == total - at_kill,
                           "rows": got.num_rows, "ids_unique": len(set(got["id"].to_pylist())) == got.num_rows,
                           "equal_to_uninterrupted": got.equals(ref)})
    print(json.dumps({"records": args.n, "chunk_records": args.chunk, "chunks": total,
                      "uninterrupted_s": round(full_s, 2), "trials": trials}, indent=2))


if __name__ == "__main__":
    main()

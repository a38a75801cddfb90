"""Report aggregation speed: the vectorized Arrow pass (pipeline/tag/report_stats) vs the old per-row Python loop.

Prints one JSON object: seconds, µs per row and peak memory (RSS of a fresh process, Arrow pool peak, Python heap peak)
of each path over the same synthetic Parquet dataset (real SCHEMA, default 1M rows), their ratio, and the full report.

    python benchmarks/report_speed.py                 # 1M rows
    python benchmarks/report_speed.py --rows 200000   # quicker
    python benchmarks/report_speed.py --scale 4000000 # also the vectorized pass alone on 4M rows: bounded memory

The baseline is the loop of `git show e7cade4:pipeline/report.py` (`_Stats.add` over `to_pylist()` rows), ported here.
Not run by CI.
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
import tracemalloc
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.tag.manifest import data_folder  # noqa: E402
from pipeline.tag.parquet_parts import ENTITY_TYPE, SCHEMA  # noqa: E402

WORDS = ["obama", "nba", "london", "new york", "google", "apple", "john smith", "paris", "lakers", "tokyo"]
TYPES = ["PER", "LOC", "ORG", "MISC"]
SOURCE_NAMES = (("routing_orig", "original"), ("routing_grounding", "grounding"), ("routing_rcnn", "RCNN"))
_COLUMNS = ["id", "text", "entities", "image_used", "image", "crops", "rcnn_crops"]


def make_dataset(out: Path, rows: int, files: int, seed: int = 0) -> None:
    """`rows` synthetic tagged tweets in `files` zstd parts under out/data/ (0-3 entities each, 40% with an image)."""
    rng = np.random.default_rng(seed)
    folder = data_folder(out)
    folder.mkdir(parents=True, exist_ok=True)
    words, types = pa.array(WORDS), pa.array(TYPES)
    per_file = -(-rows // files)
    for f in range(files):
        n = min(per_file, rows - f * per_file)
        counts = rng.integers(0, 4, n)  # shape: (n,) entities per row
        m = int(counts.sum())
        used = rng.random(n) < 0.4
        ent_used = np.repeat(used, counts)  # shape: (m,)
        orig = rng.random(m)
        rest = 1 - orig
        routing = [np.where(ent_used, v, np.nan) for v in (orig, rest * 0.6, rest * 0.4)]
        w = rng.integers(0, len(WORDS), m)
        start = rng.integers(0, 60, m).astype(np.int32)
        fields = [words.take(pa.array(w)), types.take(pa.array(rng.integers(0, 4, m))), pa.array(start),
                  pa.array(start + 5), pa.array(start // 5, pa.int32()), pa.array(start // 5 + 1, pa.int32()),
                  pa.array(rng.beta(5, 1.5, m).astype(np.float32))]
        fields += [pa.array(r.astype(np.float32), from_pandas=True) for r in routing]
        structs = pa.StructArray.from_arrays(fields, fields=list(ENTITY_TYPE))
        offsets = pa.array(np.concatenate([[0], np.cumsum(counts)]).astype(np.int32))
        ids = np.arange(f * per_file, f * per_file + n)
        text = pa.array([f"rt tweet {i} about the game today with friends #gameday" for i in ids])
        images = pa.array([f"img/{i % 5000}.jpg" if u else None for i, u in zip(ids, used)])
        table = pa.table({
            "id": pa.array(ids.astype(str)), "text": text, "tokens": pa.array([["rt", "tweet"]] * n),
            "entities": pa.ListArray.from_arrays(offsets, structs), "image_used": pa.array(used),
            "model_id": pa.array(["bench-model"] * n), "image": images, "crops": pa.array([[]] * n, pa.list_(pa.string())),
            "rcnn_crops": pa.array([[]] * n, pa.list_(pa.string())), "line": pa.array(ids + 1)}, schema=SCHEMA)
        pq.write_table(table, folder / f"part-{f:03d}.parquet", compression="zstd", row_group_size=131_072)


class OldStats:
    """The aggregation of e7cade4's pipeline/report.py `_Stats`, a Python loop over every row and entity."""

    def __init__(self, sample_size: int = 40, image_sample: int = 12):
        self.rows = self.with_image = self.with_entities = 0
        self.types: Counter = Counter()
        self.entities: Counter = Counter()
        self.score_sum: dict = defaultdict(float)
        self.bins: dict = defaultdict(lambda: [0] * 10)
        self.routing: dict = defaultdict(lambda: [0.0, 0.0, 0.0, 0.0])
        self.sample: list = []
        self.image_sample: list = []
        self.sample_size, self.image_sample_size = sample_size, image_sample

    def add(self, row: dict, root: str | None) -> None:
        self.rows += 1
        ents = row["entities"] or []
        self.with_image += bool(row["image_used"])
        self.with_entities += bool(ents)
        for ent in ents:
            key = (ent["text"], ent["type"])
            self.types[ent["type"]] += 1
            self.entities[key] += 1
            self.score_sum[key] += ent["score"]
            self.bins[ent["type"]][min(9, int(ent["score"] * 10))] += 1
            if ent.get("routing_orig") is not None:
                acc = self.routing[ent["type"]]
                for i, (k, _) in enumerate(SOURCE_NAMES):
                    acc[i] += ent[k]
                acc[3] += 1
        if ents and row["image_used"] and len(self.image_sample) < self.image_sample_size:
            self.image_sample.append((row, root))
        elif ents and len(self.sample) < self.sample_size:
            self.sample.append((row, root))


def run_old(out: Path) -> dict:
    stats = OldStats()
    for part in sorted(data_folder(out).glob("*.parquet")):
        for batch in pq.ParquetFile(part).iter_batches(batch_size=2048, columns=_COLUMNS):
            for row in batch.to_pylist():
                stats.add(row, None)
    return {"rows": stats.rows, "entities": sum(stats.types.values()), "with_image": stats.with_image,
            "types": dict(stats.types)}


def run_new(out: Path) -> dict:
    from pipeline.tag.report_data import find_parts
    from pipeline.tag.report_stats import aggregate

    a = aggregate(find_parts(out).batches())
    return {"rows": a.rows, "entities": a.entities, "with_image": a.with_image,
            "types": {t: v["n"] for t, v in a.types.items()}}


def run_report(out: Path) -> dict:
    from pipeline.tag.report import write_report

    path = write_report(out)
    return {"page_bytes": path.stat().st_size}


def peak_rss_mib() -> float:
    """Peak resident memory of this process (VmHWM: reset by exec, unlike ru_maxrss which keeps the parent's)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure(which: str, out: Path) -> dict:
    """Run one path in this (fresh) process: seconds and peaks."""
    import pipeline.tag.report  # noqa: F401 -- imports (torch via cache/) outside the timing, as for the baseline

    rss0 = peak_rss_mib()
    tracemalloc.start()
    t0 = time.perf_counter()
    result = {"old": run_old, "new": run_new, "report": run_report}[which](out)
    seconds = time.perf_counter() - t0
    _, py_peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    rss = peak_rss_mib()
    return {**result, "seconds": round(seconds, 3), "peak_rss_mib": round(rss, 1),
            "rss_growth_mib": round(rss - rss0, 1), "python_heap_peak_mib": round(py_peak / 2**20, 1),
            "arrow_pool_peak_mib": round(pa.default_memory_pool().max_memory() / 2**20, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--files", type=int, default=4)
    ap.add_argument("--scale", type=int, nargs="*", default=[], help="extra row counts for the vectorized pass alone")
    ap.add_argument("--measure", choices=["old", "new", "report"], help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.measure:
        print(json.dumps(measure(args.measure, args.out)))
        return
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        t0 = time.perf_counter()
        make_dataset(out, args.rows, args.files)
        made = time.perf_counter() - t0
        res = {which: _child(which, out, args.rows) for which in ("new", "old", "report")}
        assert res["new"]["types"] == res["old"]["types"] and res["new"]["rows"] == res["old"]["rows"]
        report = {"rows": args.rows, "files": args.files, "entities": res["new"]["entities"],
                  "dataset_mib": round(sum(p.stat().st_size for p in data_folder(out).iterdir()) / 2**20, 1),
                  "generate_s": round(made, 2), "vectorized": res["new"], "per_row_loop": res["old"],
                  "speedup": round(res["old"]["seconds"] / res["new"]["seconds"], 1), "full_report": res["report"]}
    report["vectorized_scaling"] = []
    for rows in args.scale:
        with tempfile.TemporaryDirectory() as tmp:
            make_dataset(Path(tmp), rows, max(1, rows // 250_000))
            report["vectorized_scaling"].append({"rows": rows, **_child("new", Path(tmp), rows)})
    print(json.dumps(report, indent=2))


def _child(which: str, out: Path, rows: int) -> dict:
    """Measure one path in a fresh process (its own peak RSS); adds µs per row."""
    run = subprocess.run([sys.executable, __file__, "--measure", which, "--out", str(out)],
                         check=True, capture_output=True, text=True)
    res = json.loads(run.stdout.strip().splitlines()[-1])
    res["us_per_row"] = round(1e6 * res["seconds"] / rows, 3)
    return res


if __name__ == "__main__":
    main()

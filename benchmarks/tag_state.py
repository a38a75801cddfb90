"""Cost of a tag-corpus output's state as it grows: per-chunk commit cost into an output holding 2,000 chunks vs an
empty one, the commit log's open time and size at 10^5 chunks, and a rerun over 100 already-tagged inputs (seconds,
input files opened and bytes read from them); prints JSON.

Run: `.venv/bin/python benchmarks/tag_state.py [--base /work/wt/base]` (null model; `--base` runs the commit and rerun
measurements with another checkout's code too, in a subprocess, for a before/after in the same run).
"""
from __future__ import annotations

import argparse
import builtins
from array import array
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "benchmarks"))

from tag_scale import NullTagger, write_dump  # noqa: E402


def tag(dumps: list[Path], out: Path, chunk: int) -> dict:
    from pipeline.stage_config import stage_config
    from pipeline.tag.plan import ModelSpec
    from pipeline.tag.stage import run_tag
    from rpihmif.labels import LABELS

    conf = stage_config("tag", overrides=[f"out={out}", f"chunk_records={chunk}", "device=cpu",
                                          "progress_every_s=1000"])
    return run_tag(dumps, conf, ModelSpec("null-model", "", False, "", list(LABELS), factory=NullTagger))


def _timed_commits() -> dict:
    """Wrap Committer.commit (either code base) to add up wall and CPU seconds and calls."""
    import pipeline.tag.commit as cm

    acc = {"wall": 0.0, "cpu": 0.0, "n": 0}
    real = cm.Committer.commit

    def timed(self, *a, **k):
        w0, c0 = time.perf_counter(), time.process_time()
        try:
            return real(self, *a, **k)
        finally:
            acc["wall"] += time.perf_counter() - w0
            acc["cpu"] += time.process_time() - c0
            acc["n"] += 1

    cm.Committer.commit = timed
    return acc


def _per_chunk(acc: dict, dumps: list[Path], out: Path) -> tuple[float, float]:
    """(wall ms, CPU ms) per chunk commit of tagging `dumps` into `out` in chunks of 10."""
    acc.update(wall=0.0, cpu=0.0, n=0)
    tag(dumps, out, 10)
    return 1e3 * acc["wall"] / acc["n"], 1e3 * acc["cpu"] / acc["n"]


def commit_growth(tmp: Path, records: int, rounds: int = 5) -> dict:
    """One output fed 4 dumps in chunks of 10 records: two of `records` records first (-> 2,000 chunks at the
    default), then `rounds` pairs of 1,000-record dumps, one into a new empty output and one into the big output,
    alternating, so that both see the same disk and CPU load; median wall and CPU ms per chunk commit."""
    import statistics

    acc, big = _timed_commits(), tmp / "grow"
    fill = [_per_chunk(acc, [write_dump(tmp / f"night{k}.jsonl.gz", records)], big) for k in range(2)]
    empty, full = [], []
    for r in range(rounds):
        a, b = write_dump(tmp / f"e{r}.jsonl.gz", 1000), write_dump(tmp / f"f{r}.jsonl.gz", 1000)
        pair = [(empty, a, tmp / f"empty{r}"), (full, b, big)]
        for into, dump, out in pair if r % 2 == 0 else pair[::-1]:
            into.append(_per_chunk(acc, [dump], out))
    med = {name: [round(statistics.median(x[i] for x in runs), 3) for i in (0, 1)]
           for name, runs in (("empty", empty), ("full", full))}
    return {"fill_ms_per_chunk_wall_cpu": [[round(v, 3) for v in f] for f in fill],
            "into_empty_ms_per_chunk_wall_cpu": med["empty"], "into_2000_ms_per_chunk_wall_cpu": med["full"],
            "ratio_wall": round(med["full"][0] / med["empty"][0], 2),
            "ratio_cpu": round(med["full"][1] / med["empty"][1], 2)}


class _Counted:
    """A file object proxy that counts the bytes its reads return."""

    def __init__(self, fh, counter: list[int]):
        self._fh, self._n = fh, counter

    def __getattr__(self, name):
        return getattr(self._fh, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return self._fh.__exit__(*exc)

    def __iter__(self):
        for line in self._fh:
            self._n[0] += len(line)
            yield line

    def _count(self, name, *a):
        data = getattr(self._fh, name)(*a)
        self._n[0] += data if isinstance(data, int) else len(data or b"")
        return data

    def read(self, *a):
        return self._count("read", *a)

    def read1(self, *a):
        return self._count("read1", *a)

    def readline(self, *a):
        return self._count("readline", *a)

    def readinto(self, *a):
        return self._count("readinto", *a)


def rerun(tmp: Path, inputs: int, records: int) -> dict:
    """Tag `inputs` dumps, then rerun over them: seconds, input files opened and input bytes read by the rerun."""
    folder = tmp / "nightly"
    folder.mkdir()
    dumps = [write_dump(folder / f"d{i:03d}.jsonl.gz", records) for i in range(inputs)]
    time.sleep(2.1)  # files written this recently are not remembered by their stamp (they may still change)
    out = tmp / "rerun-out"
    first = tag(dumps, out, 100)
    names = {str(p.resolve()) for p in dumps} | {str(p) for p in dumps}
    opened, nbytes = [0], [0]
    real = builtins.open

    def counting_open(file, *a, **kw):
        fh = real(file, *a, **kw)
        if isinstance(file, (str, os.PathLike)) and os.fspath(file) in names:
            opened[0] += 1
            return _Counted(fh, nbytes)
        return fh

    builtins.open = counting_open
    try:
        t0 = time.perf_counter()
        again = tag([folder], out, 100)
        seconds = time.perf_counter() - t0
    finally:
        builtins.open = real
    return {"inputs": inputs, "input_bytes": sum(p.stat().st_size for p in dumps), "first_rows": first["rows"],
            "rerun_s": round(seconds, 3), "rerun_skipped": again["skipped"], "rerun_inputs_opened": opened[0],
            "rerun_input_bytes_read": nbytes[0]}


def log_at_scale(tmp: Path, chunks: int) -> dict:
    """A commit log of `chunks` chunks (10 ids each, 1 % with rejects) written in bulk: open time, size, the cost of
    one commit and one skip decision, against the same on an empty log."""
    from pipeline.tag.manifest import CHUNK_COLUMNS, Manifest

    def entry(i: int, sha: str) -> dict:
        return {"key": f"{sha[:16]}:{i * 10 + 1}", "input": sha, "source": f"/d/{sha[:8]}.jsonl",
                "first_line": i * 10 + 1, "last_line": i * 10 + 10, "byte_end": i * 1000, "ends_newline": 1,
                "output": f"{sha[:8]}-{sha[:12]}-{i * 10 + 1:09d}.parquet", "part_size": 9000,
                "part_mtime_ns": 1, "part_digest": "ab" * 32, "rows": 10, "rejects": 0, "images_used": 0,
                "images_missing": 0, "no_image": 10, "model_id": "m", "encoder": "", "cache_state": "",
                "image_root": "/d", "tagged_at": "2026-12-02T00:00:00+0000"}

    def one_commit(m: Manifest, i: int) -> float:
        sha = "f" * 64
        t0 = time.perf_counter()
        m.overlapping({sha}, i * 10 + 1, i * 10 + 10)
        m.known_ids(sha, list(range(10 ** 9 + i * 10, 10 ** 9 + i * 10 + 10)), set())
        m.record_chunk(entry(i, sha), "", sha, list(range(10 ** 9 + i * 10, 10 ** 9 + i * 10 + 10)), [], 0, 10 ** 6)
        return time.perf_counter() - t0

    result = {}
    for n in (0, chunks):
        out = tmp / f"log{n}"
        out.mkdir()
        m = Manifest(out, "none")
        per_input = 1000
        with m.transaction() as db:
            for j in range(0, n, per_input):
                sha = f"{j:064x}"[::-1]  # distinct leading digits: keys and names use the first ones
                db.execute("INSERT INTO inputs VALUES (?, ?, ?, ?, ?, ?, ?)", (sha, 10 ** 6, sha, per_input * 10, 1,
                                                                           1, "x"))
                rows = [entry(i, sha) for i in range(per_input)]
                db.executemany(f"INSERT INTO chunks({','.join(CHUNK_COLUMNS)}) VALUES "
                               f"({','.join('?' * len(CHUNK_COLUMNS))})", [[r[c] for c in CHUNK_COLUMNS] for r in rows])
                db.executemany("INSERT INTO chunk_ids VALUES (?, ?, ?)",  # ids as UniqueIds.digest spreads them
                               ((r["key"], sha, array("q", [random.getrandbits(63) for _ in range(10)]).tobytes())
                                for r in rows))
                db.executemany("INSERT INTO rejects VALUES (?, ?)", ((r["key"], '{"reason": "x"}\n')
                                                                     for r in rows[::100]))
        m.close()
        t0 = time.perf_counter()
        m = Manifest(out, "none")
        open_s = time.perf_counter() - t0
        commits = [one_commit(m, i) for i in range(50)]
        sha = f"{0:064x}"
        t0 = time.perf_counter()
        for _ in range(100):
            m.chunks_of({sha}, sha) if n == 0 else m.overlapping({sha}, 50001, 50010)
        skip_s = (time.perf_counter() - t0) / 100
        m.close()
        size = sum(p.stat().st_size for p in out.iterdir())
        result[str(n)] = {"open_ms": round(1e3 * open_s, 2), "commit_ms": round(1e3 * sorted(commits)[25], 3),
                          "overlap_query_ms": round(1e3 * skip_s, 3), "file_mb": round(size / 1e6, 1)}
    big = result[str(chunks)]
    result["estimate_1e6_chunks"] = {"file_mb": round(big["file_mb"] * 1e6 / chunks), "open_ms": "same (no scan)",
                                     "commit_ms": "one more B-tree level: about the same"}
    return result


def id_index_cost(tmp: Path, records: int, per_chunk: int = 10_000) -> dict:
    """The ids of one input family (one row per tweet id per input): bytes on disk and driver time per record, as
    commits of `per_chunk` ids (random 64-bit digests, as UniqueIds.digest spreads them) fill it to `records`, and
    the time to read them all back at the start of a run that appends to the family."""
    from pipeline.tag.manifest import Manifest

    out = tmp / "ids"
    out.mkdir()
    m = Manifest(out, "none")
    fam = "ab" * 32
    before = (out / "_state.sqlite").stat().st_size
    t0 = time.perf_counter()
    for n, start in enumerate(range(0, records, per_chunk)):
        ids = [random.getrandbits(63) for _ in range(per_chunk)]
        m.known_ids(fam, ids, set())
        e = {c: 0 for c in ("first_line", "last_line", "byte_end", "ends_newline", "part_size", "part_mtime_ns", "rows",
                            "rejects", "images_used", "images_missing", "no_image")}
        e.update(key=f"k{n}", input=fam, source="/d", output=f"p{n}.parquet", part_digest="x", model_id="m",
                 encoder="", cache_state="", image_root="", tagged_at="x")
        m.record_chunk(e, "", fam, ids, [], 0, 1)
    seconds = time.perf_counter() - t0
    m.close()
    size = (out / "_state.sqlite").stat().st_size - before
    t0 = time.perf_counter()
    m = Manifest(out, "none")
    m.known_ids(fam, [1], set())
    load_s = time.perf_counter() - t0
    m.close()
    return {"records": records, "bytes_per_record": round(size / records, 1),
            "us_per_record_commit_with_ids": round(1e6 * seconds / records, 2),
            "load_all_ids_s": round(load_s, 3)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--records", type=int, default=10_000, help="records per dump of the commit-growth run")
    ap.add_argument("--inputs", type=int, default=100)
    ap.add_argument("--log-chunks", type=int, default=100_000)
    ap.add_argument("--base", default="", help="another checkout: rerun the commit/rerun parts with its code")
    ap.add_argument("--only", default="", help=argparse.SUPPRESS)
    args = ap.parse_args()
    code = Path(os.environ.get("TAG_STATE_CODE", REPO))
    sys.path.insert(0, str(code))
    import logging

    logging.disable(logging.INFO)
    result: dict = {"code": str(code), "cpu": "2 cores shared with ~6 other engineers' jobs"}
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        result["commit_growth"] = commit_growth(tmp, args.records)
        result["rerun_100_inputs"] = rerun(tmp, args.inputs, 100)
        if not args.only:
            result["log_at_scale"] = log_at_scale(tmp, args.log_chunks)
            result["id_index"] = id_index_cost(tmp, 1_000_000)
    if args.base and not args.only:
        env = {**os.environ, "TAG_STATE_CODE": args.base, "PYTHONPATH": args.base}
        proc = subprocess.run([sys.executable, __file__, "--only", "1", "--records", str(args.records),
                               "--inputs", str(args.inputs)], env=env, capture_output=True, text=True)
        result["base"] = json.loads(proc.stdout) if proc.returncode == 0 else {"error": proc.stderr[-2000:]}
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()

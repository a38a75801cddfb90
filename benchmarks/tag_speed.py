"""tag-corpus speed and memory benchmark: bare model vs end to end, peak RSS vs dump size, rerun cost; prints JSON.

Run: `.venv/bin/python benchmarks/tag_speed.py [--model CKPT] [--n 1000] [--rss-n 500]`. Without --model it saves an
untrained RPI-HMIF over the packaged MiniLM-L6 (the default encoder; speed does not depend on training).
"""
from __future__ import annotations

import argparse
import gzip
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

SHARED = REPO.parent / "shared" / "data" / "twitter2015" / "train.txt"
FALLBACK = ["RT @fan : John Smith is at the game today in London http://t.co/x1",
            "Love Google and the NBA #gameday", "Obama in New York today …", "Apple opens a store in Paris !"]

# Runs in a fresh process so its peak RSS is its own: tags DUMP into OUT, then reruns (all skipped), prints JSON.
CHILD = """
import json, resource, sys, time
sys.path.insert(0, {repo!r})
from pipeline.stage_config import stage_config
from pipeline.tag.stage import run_tag
conf = stage_config("tag", overrides=["load_path=" + sys.argv[2], "out=" + sys.argv[3], "batch_size=" + sys.argv[4],
                                    "threads=" + sys.argv[5]])
t0 = time.perf_counter(); first = run_tag([sys.argv[1]], conf); t1 = time.perf_counter()
again = run_tag([sys.argv[1]], conf); t2 = time.perf_counter()
print(json.dumps({{"rows": first["rows"], "run_s": t1 - t0, "per_file_tweets_per_s": first["tweets_per_s"],
                   "rerun_s": t2 - t1, "rerun_skipped": again["skipped"],
                   "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}}))
"""


def tweet_texts() -> list[str]:
    """Real Twitter-2015 train tweets (words joined by spaces) when ../shared/data is present, else a few fixed ones."""
    if not SHARED.is_file():
        return FALLBACK
    texts, words = [], []
    for line in SHARED.read_text(encoding="utf-8").splitlines():
        if line.startswith("IMGID:"):
            continue
        if not line.strip():
            if words:
                texts.append(" ".join(words))
            words = []
        else:
            words.append(line.split("\t")[0])
    return texts + ([" ".join(words)] if words else [])


def write_dump(path: Path, n: int, texts: list[str]) -> Path:
    with gzip.open(path, "wt", encoding="utf-8") as fh:
        for i in range(n):
            fh.write(json.dumps({"id": str(i), "text": texts[i % len(texts)]}, ensure_ascii=False) + "\n")
    return path


def default_checkpoint(folder: Path) -> Path:
    import torch

    from rpihmif.checkpoint import save_checkpoint
    from rpihmif.config import ModelConfig
    from rpihmif.model import build_model

    torch.manual_seed(0)
    model, tokenizer = build_model(ModelConfig())
    return save_checkpoint(folder, model.eval(), tokenizer)


def bare_forward(model: Path, n: int, texts: list[str], batch_size: int, threads: int) -> dict:
    """Tagger.predict alone on pre-tokenized batches (same tokenizer, batch size and threads, no I/O)."""
    import torch

    from rpihmif.tweet_tokenizer import token_texts
    from rpihmif.predictor import Tagger

    if threads > 0:
        torch.set_num_threads(threads)
    tagger = Tagger.from_pretrained(model, "cpu")
    words = [token_texts(texts[i % len(texts)]) for i in range(n)]
    tagger.predict(words[:batch_size], batch_size=batch_size)  # warm-up
    t0 = time.perf_counter()
    for s in range(0, n, batch_size):
        tagger.predict(words[s:s + batch_size], batch_size=batch_size)
    seconds = time.perf_counter() - t0
    return {"tweets": n, "seconds": round(seconds, 2), "tweets_per_s": round(n / seconds, 1)}


def child_run(dump: Path, model: Path, out: Path, batch_size: int, threads: int) -> dict:
    proc = subprocess.run([sys.executable, "-c", CHILD.format(repo=str(REPO)), str(dump), str(model), str(out),
                           str(batch_size), str(threads)], capture_output=True, text=True, cwd=REPO)
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr[-3000:])
    return json.loads(proc.stdout.strip().splitlines()[-1])


def cli_rerun_seconds(dump: Path, model: Path, out: Path) -> float:
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "cli.py", "tag-corpus", str(dump), "--model", str(model), "--out", str(out)],
                   cwd=REPO, check=True, capture_output=True)
    return round(time.perf_counter() - t0, 2)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, help="checkpoint folder (default: untrained MiniLM-L6 RPI-HMIF)")
    ap.add_argument("--n", type=int, default=1000, help="tweets for the speed comparison")
    ap.add_argument("--rss-n", type=int, default=500, help="N of the N vs 10*N peak-RSS comparison")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--threads", type=int, default=1, help="torch threads, the same for both sides (0 = default)")
    args = ap.parse_args()
    texts = tweet_texts()
    with tempfile.TemporaryDirectory() as tmp_s:
        tmp = Path(tmp_s)
        model = args.model or default_checkpoint(tmp / "ckpt")
        bare = bare_forward(model, args.n, texts, args.batch_size, args.threads)
        run = dict(model=model, batch_size=args.batch_size, threads=args.threads)
        speed = child_run(write_dump(tmp / "speed.jsonl.gz", args.n, texts), out=tmp / "out_speed", **run)
        small = child_run(write_dump(tmp / "small.jsonl.gz", args.rss_n, texts), out=tmp / "out_s", **run)
        big_dump = write_dump(tmp / "big.jsonl.gz", 10 * args.rss_n, texts)
        big = child_run(big_dump, out=tmp / "out_b", **run)
        cli_rerun = cli_rerun_seconds(big_dump, model, tmp / "out_b")
    e2e = speed["rows"] / speed["run_s"]
    result = {
        "model": str(args.model or "untrained RPI-HMIF over packaged MiniLM-L6"), "batch_size": args.batch_size, "torch_threads": args.threads,
        "tweet_source": "twitter2015 train text" if SHARED.is_file() else "fixed sample tweets",
        "bare_forward": bare,
        "end_to_end": {"tweets": speed["rows"], "seconds_incl_model_load": round(speed["run_s"], 2),
                       "tweets_per_s_incl_model_load": round(e2e, 1),
                       "tweets_per_s_read_tokenize_infer_write": speed["per_file_tweets_per_s"]},
        "ratio_e2e_over_bare": round(speed["per_file_tweets_per_s"] / bare["tweets_per_s"], 3),
        "ratio_e2e_incl_model_load_over_bare": round(e2e / bare["tweets_per_s"], 3),
        "ratio_goal": ">= 0.8",
        "peak_rss_mb": {"n": args.rss_n, "n_tweets": round(small["peak_rss_mb"], 1),
                        "10n_tweets": round(big["peak_rss_mb"], 1),
                        "growth": round(big["peak_rss_mb"] / small["peak_rss_mb"], 3), "goal": "<= 1.15"},
        "rerun_unchanged": {"run_tag_seconds": round(big["rerun_s"], 3), "skipped_inputs": big["rerun_skipped"],
                            "cli_process_seconds_incl_python_start": cli_rerun, "goal": "<= 2 s of work"},
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

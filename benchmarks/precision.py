"""bf16 autocast vs fp32 side by side, one run: tag-corpus, its bare text-encoder forward, one training epoch,
extract-features; prints JSON. Every measurement runs in its own subprocess (same threads), fp32 and bf16 alternating.

Run: `nice .venv/bin/python benchmarks/precision.py [--n 1000] [--threads 1] [--train-n 800] [--images 48]`.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

import tag_speed  # noqa: E402
from tag_speed import default_checkpoint, tweet_texts, write_dump  # noqa: E402

PRECISIONS = ("fp32", "bf16")


def _tag(args: argparse.Namespace) -> dict:
    """tag-corpus on a dump (steady rate: model load and start-up excluded) and where the time goes."""
    from pipeline.stage_config import stage_config
    from pipeline.tag.stage import run_tag

    conf = stage_config("tag", overrides=[f"load_path={args.model}", f"out={args.out}", f"threads={args.threads}",
                                         f"precision={args.precision}", "batch_size=64"])
    summary = run_tag([args.dump], conf)
    return {"tweets": summary["rows"], "tweets_per_s": summary.get("steady_tweets_per_s") or summary["tweets_per_s"],
            "tweets_per_s_incl_model_load": summary["tweets_per_s"],
            "tweets_per_cpu_s": round(summary["rows"] / summary["worker_cpu_s"], 1), **_breakdown(args)}


def _breakdown(args: argparse.Namespace) -> dict:
    """Same tweets, same batches: tokenizing, bare encoder forward, full model forward, CRF Viterbi + marginals."""
    import torch

    from rpihmif.precision import resolve_precision
    from rpihmif.tweet_tokenizer import token_texts
    from rpihmif.predictor import Tagger

    autocast = resolve_precision(args.precision, "cpu", log_it=False).autocast
    tagger = Tagger.from_pretrained(args.model, "cpu", autocast=autocast)
    texts = tweet_texts()
    seconds = dict.fromkeys(("tokenize", "encoder_forward", "model_forward", "crf_viterbi_marginals"), 0.0)
    t0 = time.perf_counter()
    words = [token_texts(texts[i % len(texts)]) for i in range(args.n)]
    windows = [w for ws in words for w in tagger.window_tokenizer.encode_predict(ws)]
    seconds["tokenize"] = time.perf_counter() - t0
    model = tagger.model
    with torch.inference_mode():
        for rep in range(2):  # the first pass warms up; the second is timed
            timed, encoder_cpu = dict.fromkeys(seconds, 0.0), 0.0
            for s in range(0, len(windows), 64):
                text = tagger.window_tokenizer.collate(sorted(windows[s:s + 64], key=lambda w: len(w.input_ids)))
                t, c = time.perf_counter(), time.process_time()
                with autocast():
                    model.encoder(input_ids=text.input_ids, attention_mask=text.attention_mask)
                timed["encoder_forward"] += time.perf_counter() - t
                encoder_cpu += time.process_time() - c
                t = time.perf_counter()
                with autocast():
                    out = model(text)
                timed["model_forward"] += time.perf_counter() - t
                t = time.perf_counter()
                model.decode(out)
                model.marginals(out)
                timed["crf_viterbi_marginals"] += time.perf_counter() - t
    seconds.update({k: v for k, v in timed.items() if k != "tokenize"})
    return {"bare_encoder_tweets_per_s": round(args.n / seconds["encoder_forward"], 1),
            "bare_encoder_tweets_per_cpu_s": round(args.n / encoder_cpu, 1),
            "seconds": {k: round(v, 3) for k, v in seconds.items()}}


def _train(args: argparse.Namespace) -> dict:
    """One training epoch (text-only: the shared data has no images) on the subset in args.data."""
    from pipeline.stage_config import stage_config
    from pipeline.train.trainer import Trainer

    cfg = stage_config("train", overrides=[f"data_dir={args.data}", "dataset=sub", "text_only=true", "device=cpu",
                                          f"save_path={args.out}", f"precision={args.precision}",
                                          f"cache_dir={args.out}/cache"])
    trainer = Trainer(cfg)
    t0, c0 = time.perf_counter(), time.process_time()
    loss = trainer._train_epoch()
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    return {"tweets": len(trainer.encoded), "seconds": round(seconds, 2), "cpu_seconds": round(cpu, 2),
            "tweets_per_s": round(len(trainer.encoded) / seconds, 1), "loss": round(loss, 4)}


def _extract(args: argparse.Namespace) -> dict:
    """The default encoder (random-init ViT-B/32 shape) over sample images; features saved for the comparison."""
    import numpy as np

    from pipeline.extract.featurizer import ClipFeaturizer

    images = sorted(str(p) for p in Path(args.data).rglob("*.jpg"))[: args.images]
    feat = ClipFeaturizer({}, precision=args.precision)
    batch = {"key": np.array([""] * len(images)), "path": np.array(images, dtype=object),
             "grounding": np.full((len(images), 3), "", dtype=object),
             "rcnn": np.full((len(images), 3), "", dtype=object)}
    feat({k: v[:2] for k, v in batch.items()})  # warm-up
    t0, c0 = time.perf_counter(), time.process_time()
    out = {}
    for s in range(0, len(images), 16):
        part = feat({k: v[s:s + 16] for k, v in batch.items()})
        out.setdefault("orig", []).append(part["orig"])
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    np.save(Path(args.out) / f"orig_{args.precision}.npy", np.concatenate(out["orig"]))
    return {"images": len(images), "seconds": round(seconds, 2), "images_per_s": round(len(images) / seconds, 2),
            "images_per_cpu_s": round(len(images) / cpu, 2)}


def _child(kind: str, precision: str, threads: int, **paths) -> dict:
    cmd = [sys.executable, __file__, "--child", kind, "--precision", precision, "--threads", str(threads),
           "--data-root", str(tag_speed.SHARED.parent.parent)]
    for key, value in paths.items():
        cmd += [f"--{key.replace('_', '-')}", str(value)]
    env_threads = {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env={**os.environ, **env_threads})
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr[-3000:])
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _subset(src: Path, dst: Path, n_train: int, n_valid: int) -> None:
    dst.mkdir(parents=True)
    for split, n in (("train", n_train), ("valid", n_valid)):
        blocks = src.joinpath(f"{split}.txt").read_text(encoding="utf-8").split("\n\n")
        dst.joinpath(f"{split}.txt").write_text("\n\n".join(blocks[:n]) + "\n\n", encoding="utf-8")


def _pair(kind: str, threads: int, **paths) -> dict:
    return {p: _child(kind, p, threads, **paths) for p in PRECISIONS}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1000, help="tweets tagged")
    ap.add_argument("--threads", type=int, default=1, help="torch threads, the same for every run")
    ap.add_argument("--train-n", type=int, default=800, help="twitter2015 train tweets of the epoch")
    ap.add_argument("--images", type=int, default=48, help="images through the vision encoder")
    ap.add_argument("--data-root", type=Path, default=REPO.parent / "shared" / "data",
                    help="folder holding twitter2015/ (the real tweets); default ../shared/data")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--precision", help=argparse.SUPPRESS)
    for hidden in ("--model", "--dump", "--out", "--data"):
        ap.add_argument(hidden, help=argparse.SUPPRESS)
    args = ap.parse_args()
    tag_speed.SHARED = args.data_root / "twitter2015" / "train.txt"  # tweet_texts() reads it
    if args.child:
        import torch

        torch.set_num_threads(args.threads)
        print(json.dumps({"tag": _tag, "train": _train, "extract": _extract}[args.child](args)))
        return
    import numpy as np

    from pipeline.io.sample import make_sample
    from rpihmif.precision import cpu_bf16_support

    with tempfile.TemporaryDirectory(prefix="precision_") as tmp_s:
        tmp = Path(tmp_s)
        model = default_checkpoint(tmp / "ckpt")
        dump = write_dump(tmp / "tweets.jsonl.gz", args.n, tweet_texts())
        tag = {p: _child("tag", p, args.threads, model=model, dump=dump, out=tmp / f"out_{p}", n=args.n)
               for p in PRECISIONS}  # each run its own out folder
        _subset(args.data_root / "twitter2015", tmp / "data" / "sub", args.train_n, 50)
        train = _pair("train", args.threads, data=tmp / "data", out=tmp / "run")
        make_sample(tmp / "sample", seed=0)
        extract = _pair("extract", args.threads, data=tmp / "sample", out=tmp, images=args.images)
        a, b = np.load(tmp / "orig_fp32.npy").astype(np.float32), np.load(tmp / "orig_bf16.npy").astype(np.float32)
    for p in PRECISIONS:  # CPU-time ratios hold on a shared machine (one thread: CPU time is compute time)
        tag[p]["ratio_tag_over_bare_encoder"] = round(tag[p]["tweets_per_s"] / tag[p]["bare_encoder_tweets_per_s"], 3)
        tag[p]["ratio_tag_over_bare_encoder_cpu"] = round(tag[p]["tweets_per_cpu_s"]
                                                          / tag[p]["bare_encoder_tweets_per_cpu_s"], 3)
    print(json.dumps({
        "cpu_bf16": cpu_bf16_support(), "tweets": str(tag_speed.SHARED), "torch_threads": args.threads,
        "tag_corpus": {**tag, "speedup_bf16": round(tag["bf16"]["tweets_per_s"] / tag["fp32"]["tweets_per_s"], 2),
                       "speedup_bf16_cpu": round(tag["bf16"]["tweets_per_cpu_s"] / tag["fp32"]["tweets_per_cpu_s"], 2),
                       "goal": "bf16 >= 2x fp32; tag >= 0.8x bare encoder"},
        "train_epoch": {**train, "speedup_bf16": round(train["fp32"]["seconds"] / train["bf16"]["seconds"], 2),
                        "speedup_bf16_cpu": round(train["fp32"]["cpu_seconds"] / train["bf16"]["cpu_seconds"], 2),
                        "goal": ">= 1.5x"},
        "extract": {**extract,
                    "speedup_bf16": round(extract["bf16"]["images_per_s"] / extract["fp32"]["images_per_s"], 2),
                    "speedup_bf16_cpu": round(extract["bf16"]["images_per_cpu_s"]
                                              / extract["fp32"]["images_per_cpu_s"], 2),
                    "encoder": "random-init ViT-B/32 shape (12 layers, 768)",
                    "max_abs_feature_diff": float(np.abs(a - b).max()), "feature_abs_max": float(np.abs(a).max()),
                    "cosine_min": float(((a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1)
                                                           + 1e-12)).min())},
    }, indent=2))


if __name__ == "__main__":
    main()

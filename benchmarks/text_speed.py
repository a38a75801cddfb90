"""Cost of a text-path option (e.g. `lstm_dim=256`, `char_dim=50`): training steps and Tagger.predict with and
without it, same run; JSON.

    python benchmarks/text_speed.py --candidate lstm_dim=256 [--candidate case_input=true]
    python benchmarks/text_speed.py --candidate adversarial_eps=1.0     # a training option: same model, FGM steps

Text-only RPI-HMIF over the packaged MiniLM-L6 on Twitter-2015 train tweets (../shared/data, else fixed samples);
the variants alternate batch by batch (ABBA) so machine load hits both alike; wall and process CPU seconds, ratios
candidate/plain of the totals and the median over batches (the steadier number on a shared machine).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

SHARED = REPO.parent / "shared" / "data" / "twitter2015" / "train.txt"
FALLBACK = ["RT @fan : John Smith is at the game today in London http://t.co/x1",
            "Love Google and the NBA #gameday", "Obama in New York today …", "Apple opens a store in Paris !"]


def tweets(n: int, path: Path) -> tuple[list[list[str]], list[list[int]], str]:
    """n tweets (words, label ids) of a CoNLL split, and where they came from."""
    from rpihmif.labels import LABEL2ID

    if path.is_file():
        from pipeline.io.conll import read_conll

        data = read_conll(path, fix_bio=True)[:n]  # as training reads it
        return [t.words for t in data], [[LABEL2ID[x] for x in t.labels] for t in data], str(path)
    words = [FALLBACK[i % len(FALLBACK)].split() for i in range(n)]
    return words, [[0] * len(w) for w in words], "fixed sample tweets"


def variant(text: dict, autocast):
    import torch

    from rpihmif.alignment import WindowTokenizer
    from rpihmif.config import ModelConfig
    from rpihmif.model import build_model
    from rpihmif.predictor import Tagger

    config = ModelConfig(text_only=True)
    config = dataclasses.replace(config, text=dataclasses.replace(config.text, **text))
    torch.manual_seed(0)
    model, tokenizer = build_model(config)
    opt = torch.optim.AdamW(model.param_groups(5e-5, 1e-3, 5e-3, 0.01))
    return model, opt, WindowTokenizer.for_model(tokenizer, config), Tagger(model, tokenizer, config, autocast=autocast)


def train_step(model, opt, enc, autocast, words, labels, adversarial_eps: float = 0.0) -> None:
    """Encode + collate + forward (under the precision's autocast) + backward (+ the FGM pass) + AdamW step of one
    batch, as the trainer does per step."""
    from pipeline.train.adversarial import adversarial_backward

    text = enc.collate([enc.encode_train(w)[0] for w in words], labels)

    def loss():
        with autocast():
            return model(text).loss

    opt.zero_grad()
    loss().backward()
    if adversarial_eps:
        adversarial_backward(model.encoder.get_input_embeddings(), adversarial_eps, text.input_ids, loss)
    opt.step()


def timed(fn, *args) -> tuple[float, float]:
    """(wall, process CPU) seconds of fn(*args)."""
    t0, c0 = time.perf_counter(), time.process_time()
    fn(*args)
    return time.perf_counter() - t0, time.process_time() - c0


def summary(pairs: list[dict[str, tuple[float, float]]], n: int, threads: int) -> dict:
    """Totals per variant and the median over batches of the candidate/plain ratio (wall and CPU)."""
    total = {k: [sum(p[k][i] for p in pairs) for i in (0, 1)] for k in ("plain", "candidate")}
    ratio = [statistics.median(p["candidate"][i] / p["plain"][i] for p in pairs) for i in (0, 1)]
    return {"tweets": n, "batches": len(pairs), "torch_threads": threads,
            **{f"{k}_tweets_per_s_wall": round(n / total[k][0], 1) for k in total},
            **{f"{k}_tweets_per_cpu_s": round(n / total[k][1], 1) for k in total},
            "ratio_candidate_over_plain_total_wall": round(total["candidate"][0] / total["plain"][0], 3),
            "ratio_candidate_over_plain_total_cpu": round(total["candidate"][1] / total["plain"][1], 3),
            "ratio_candidate_over_plain_median_batch_wall": round(ratio[0], 3),
            "ratio_candidate_over_plain_median_batch_cpu": round(ratio[1], 3)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--candidate", action="append", metavar="KEY=VALUE",
                    help="text config field of the candidate, or adversarial_eps (FGM training steps on the same model); "
                    "repeatable; default char_dim=50")
    ap.add_argument("--train-n", type=int, default=256, help="training tweets (batches of 16)")
    ap.add_argument("--predict-n", type=int, default=1024, help="tweets to tag (Tagger.predict calls of 64)")
    ap.add_argument("--split", type=Path, default=SHARED, help="CoNLL split to read tweets from")
    ap.add_argument("--train-threads", type=int, default=0, help="torch threads for training (0 = default)")
    ap.add_argument("--predict-threads", type=int, default=1, help="torch threads for prediction (tag-corpus: 1)")
    ap.add_argument("--precision", default="auto", help="auto | fp32 | bf16, resolved as the stages do")
    args = ap.parse_args()
    import torch

    from rpihmif.precision import resolve_precision

    precision = resolve_precision(args.precision, "cpu")

    import yaml

    candidate = dict(kv.split("=", 1) for kv in args.candidate or ["char_dim=50"])
    candidate = {k: yaml.safe_load(v) for k, v in candidate.items()}  # 256 -> int, true -> bool
    eps = {"plain": 0.0, "candidate": float(candidate.get("adversarial_eps", 0.0))}  # training only: not in the model
    words, labels, source = tweets(max(args.train_n, args.predict_n), args.split)
    model_fields = {k: v for k, v in candidate.items() if k != "adversarial_eps"}
    variants = {"plain": variant({}, precision.autocast), "candidate": variant(model_fields, precision.autocast)}
    train_threads, predict_threads = args.train_threads or torch.get_num_threads(), args.predict_threads
    for name, (model, opt, enc, tagger) in variants.items():  # warm-up: allocations, AdamW state, lazy imports
        model.train()
        train_step(model, opt, enc, precision.autocast, words[:16], labels[:16], eps[name])
        tagger.predict(words[:64], batch_size=64)
    train, predict = [], []
    for b, s in enumerate(range(0, args.train_n, 16)):  # the variants alternate batch by batch, ABBA order
        torch.set_num_threads(train_threads)
        order = ["plain", "candidate"] if b % 2 == 0 else ["candidate", "plain"]
        train.append({k: timed(train_step, *variants[k][:3], precision.autocast, words[s : s + 16], labels[s : s + 16],
                               eps[k]) for k in order})
    for b, s in enumerate(range(0, args.predict_n, 64)):
        torch.set_num_threads(predict_threads)
        order = ["plain", "candidate"] if b % 2 == 0 else ["candidate", "plain"]
        predict.append({k: timed(variants[k][3].predict, words[s : s + 64], None, 64) for k in order})
    print(json.dumps({
        "tweets": source, "candidate": candidate, "precision": f"{precision.name} ({precision.reason})",
        "added_params": sum(p.numel() for p in variants["candidate"][0].parameters())
        - sum(p.numel() for p in variants["plain"][0].parameters()),
        "train_step_batch16": summary(train, args.train_n, train_threads),
        "tagger_predict_batch64": summary(predict, args.predict_n, predict_threads),
    }, indent=2))


if __name__ == "__main__":
    main()

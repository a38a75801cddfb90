"""Dev-set table of training recipes on the real Twitter data: recipe x dataset, mean +- std over seeds; prints JSON.

    python benchmarks/dev_recipes.py --data-dir ../shared/data --recipes today,joint --seeds 1,2,3 --runs runs/recipes
    python benchmarks/dev_recipes.py --runs runs/recipes --summary-only          # the table of what already ran
    python benchmarks/dev_recipes.py --runs runs/recipes --bio-decoding today    # rescore checkpoints, BIO-constrained
    python benchmarks/dev_recipes.py --runs runs/recipes --errors today          # dev errors per gold type

Each run is `python cli.py train` (no refit: dev is what it measures) with the recipe's --set overrides
(runs/recipes/<recipe>_<dataset>_s<seed>, skipped when its metrics.json shows every epoch). A `train_also` recipe
trains one run per seed and reads both datasets' best epochs from it: the mix is concatenated in a fixed order, so the
twitter2017 run of that seed would train identically.
Not run by CI (one Twitter-2015 epoch is minutes on 2 CPU cores).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

DATASETS = ("twitter2015", "twitter2017")
OFF = ["constrain_bio=false", "train_also=", "ema_decay=0", "char_dim=0",  # the recipe before issue 15
       "case_input=false", "lstm_dim=0", "dataset_dim=0", "split_camel=false", "adversarial_eps=0"]
JOINT = ["constrain_bio=true", "train_also=auto"]
RECIPES: dict[str, list[str]] = {  # name -> train overrides on top of conf/train.yaml
    "today": OFF,
    "bio": OFF + ["constrain_bio=true"],
    "joint": OFF + JOINT,
    "joint_chars": OFF + JOINT + ["char_dim=50"],
    "joint_ema": OFF + JOINT + ["ema_decay=0.998"],
    "joint_case": OFF + JOINT + ["case_input=true"],
    "joint_lstm": OFF + JOINT + ["lstm_dim=256"],
    "joint_case_lstm": OFF + JOINT + ["case_input=true", "lstm_dim=256"],
    "joint_lstm_ema": OFF + JOINT + ["lstm_dim=256", "ema_decay=0.998"],
    "joint_lstm_lr1e4": OFF + JOINT + ["lstm_dim=256", "learning_rate=1.0e-4"],
    "joint_lstm_style": OFF + JOINT + ["lstm_dim=256", "dataset_dim=16"],
    "joint_lstm_style_camel": OFF + JOINT + ["lstm_dim=256", "dataset_dim=16", "split_camel=true"],
    "joint_lstm_style_fgm": OFF + JOINT + ["lstm_dim=256", "dataset_dim=16", "adversarial_eps=1.0"],
    "default": [],  # whatever conf/train.yaml says now
}


def run_folder(runs: Path, recipe: str, dataset: str, seed: int) -> Path:
    return runs / f"{recipe}_{dataset}_s{seed}"


def recipe_of(folder: Path) -> str:
    """`joint_chars_twitter2015_s1` -> `joint_chars`."""
    return folder.name.rsplit("_", 2)[0]


def checkpoints(runs: Path, recipe: str) -> list[Path]:
    """The best/ folders of every run of exactly `recipe` (not of recipes whose name starts with it)."""
    return [f for f in sorted(runs.glob(f"{recipe}_*_s*/best")) if recipe_of(f.parent) == recipe]


def is_joint(recipe: str) -> bool:
    return any(o.startswith("train_also=") and o != "train_also=" for o in RECIPES[recipe])


def train(args: argparse.Namespace, recipe: str, dataset: str, seed: int) -> None:
    """One training run in a subprocess, unless a finished one is already there."""
    folder = run_folder(args.runs, recipe, dataset, seed)
    metrics = folder / "metrics.json"
    if metrics.is_file() and len(json.loads(metrics.read_text())["epochs"]) >= args.epochs:
        return
    sets = [f"data_dir={args.data_dir}", f"dataset={dataset}", f"seed={seed}", f"num_epochs={args.epochs}",
            f"save_path={folder}", "refit=false", *RECIPES[recipe]]
    if (folder / "last").is_dir():
        sets.append(f"load_path={folder}")
    cli("train", *(x for s in sets for x in ("--set", s)))


def cli(*args: str) -> None:
    """`python cli.py ARGS` in a subprocess, echoed to stderr; its stdout is dropped (ours is the JSON table)."""
    print("python cli.py " + " ".join(args), file=sys.stderr, flush=True)
    subprocess.run([sys.executable, str(ROOT / "cli.py"), *args], check=True, stdout=subprocess.DEVNULL,
                   env={**os.environ, "PYTHONPATH": str(ROOT)})


def mean_std(values: list[float]) -> dict[str, float | None]:
    """Mean and sample std over seeds, 2 decimals (std None for one seed)."""
    return {"mean": round(statistics.mean(values), 2),
            "std": round(statistics.stdev(values), 2) if len(values) > 1 else None}


def best_of(metrics: dict[str, Any], dataset: str) -> dict[str, Any] | None:
    """The kept epoch for `dataset` in a run: its own valid split, or a train_also dataset's."""
    if metrics["dataset"] == dataset:
        return {"epoch": metrics["best_epoch"], "dev": metrics["best_dev"]}
    return metrics.get("best_dev_also", {}).get(dataset)


def summary(runs: Path) -> list[dict[str, Any]]:
    """One row per (recipe, dataset): dev F1 mean/std over seeds, per-type F1 means, best epochs, s/epoch."""
    cells: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for path in sorted(runs.glob("*/metrics.json")):
        recipe = recipe_of(path.parent)
        metrics = json.loads(path.read_text())
        if len(metrics["epochs"]) < metrics["config"]["num_epochs"]:
            continue  # still training
        for dataset in DATASETS:
            best = best_of(metrics, dataset)
            if best is None:
                continue
            seconds = [e["seconds"] for e in metrics["epochs"]]
            cells.setdefault((recipe, dataset), []).append({
                "seed": metrics["seed"], "f1": best["dev"]["f1"], "epoch": best["epoch"],
                "per_type": {t: v["f1"] for t, v in best["dev"]["per_type"].items()},
                "s_per_epoch": sum(seconds) / len(seconds), "epochs": len(seconds),
                "train_tweets_datasets": metrics.get("train_datasets", [metrics["dataset"]])})
    rows = []
    for (recipe, dataset), runs_ in sorted(cells.items()):
        f1 = [r["f1"] for r in runs_]
        types = sorted({t for r in runs_ for t in r["per_type"]})
        rows.append({"recipe": recipe, "dataset": dataset, "seeds": sorted(r["seed"] for r in runs_),
                     **{f"dev_f1_{k}": v for k, v in mean_std(f1).items()},
                     "dev_f1": [r["f1"] for r in sorted(runs_, key=lambda r: r["seed"])],
                     "per_type_mean": {t: round(statistics.mean(r["per_type"].get(t, 0.0) for r in runs_), 2)
                                       for t in types},
                     "best_epochs": [r["epoch"] for r in sorted(runs_, key=lambda r: r["seed"])],
                     "epochs": max(r["epochs"] for r in runs_),
                     "s_per_epoch": round(statistics.mean(r["s_per_epoch"] for r in runs_), 1),
                     "trained_on": runs_[0]["train_tweets_datasets"]})
    return rows


def bio_decoding(runs: Path, recipe: str, data_dir: Path) -> list[dict[str, Any]]:
    """Rescore each run's best/ checkpoint on its valid split with free and with BIO-constrained Viterbi."""
    from pipeline.io.conll import read_conll
    from pipeline.train.evaluate import entity_scores
    from rpihmif.predictor import Tagger

    out = []
    for folder in checkpoints(runs, recipe):
        metrics = json.loads((folder.parent / "metrics.json").read_text())
        tweets = read_conll(data_dir / metrics["dataset"] / "valid.txt", fix_bio=True)
        tagger = Tagger.from_pretrained(folder)
        row: dict[str, Any] = {"run": folder.parent.name}
        preds = {}
        for mode in ("free", "constrained"):  # free: a dangling I- of Viterbi's path is read as B- (seqeval's way)
            if mode == "constrained":
                tagger.model.crf.constrain(tagger.config.labels)
            preds[mode] = [p.labels for p in tagger.predict([t.words for t in tweets], None)]
            row[f"{mode}_f1"] = entity_scores([t.labels for t in tweets], preds[mode])["f1"]
        row["tweets_changed"] = sum(a != b for a, b in zip(preds["free"], preds["constrained"]))
        out.append(row)
    return out


def span_errors(gold: list[list[str]], pred: list[list[str]]) -> dict[str, dict[str, int]]:
    """Per gold type: right, wrong type on the exact span (by predicted type), wrong boundary, missed; and per
    predicted type the spurious spans that touch no gold entity."""
    from rpihmif.labels import bio_spans

    out: dict[str, dict[str, int]] = {}
    for g_tags, p_tags in zip(gold, pred):
        g, p = bio_spans(g_tags), bio_spans(p_tags)
        for etype, start, end in g:
            row = out.setdefault(etype, {})
            same = [q for q in p if q[1:] == (start, end)]
            overlap = [q for q in p if q[1] < end and start < q[2]]
            key = ("right" if (etype, start, end) in p else f"as_{same[0][0]}" if same else
                   "boundary" if overlap else "missed")
            row[key] = row.get(key, 0) + 1
        for etype, start, end in p:
            if not any(q[1] < end and start < q[2] for q in g):
                row = out.setdefault(etype, {})
                row["spurious"] = row.get("spurious", 0) + 1
    return out


def errors(runs: Path, recipe: str, data_dir: Path) -> dict[str, Any]:
    """Error counts of each `recipe` run's best checkpoint on its valid split, summed over seeds per dataset."""
    from pipeline.io.conll import read_conll
    from rpihmif.predictor import Tagger

    total: dict[str, dict[str, dict[str, int]]] = {}
    for folder in checkpoints(runs, recipe):
        dataset = json.loads((folder.parent / "metrics.json").read_text())["dataset"]
        tweets = read_conll(data_dir / dataset / "valid.txt", fix_bio=True)
        preds = [p.labels for p in Tagger.from_pretrained(folder).predict([t.words for t in tweets], None)]
        for etype, row in span_errors([t.labels for t in tweets], preds).items():
            cell = total.setdefault(dataset, {}).setdefault(etype, {})
            for key, n in row.items():
                cell[key] = cell.get(key, 0) + n
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--runs", type=Path, default=ROOT / "runs" / "recipes")
    parser.add_argument("--recipes", default="today,joint", help=f"comma-separated, of {', '.join(RECIPES)}")
    parser.add_argument("--seeds", default="1,2,3")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--summary-only", action="store_true", help="only print the table of the runs already there")
    parser.add_argument("--bio-decoding", metavar="RECIPE", help="rescore RECIPE's checkpoints free vs constrained")
    parser.add_argument("--errors", metavar="RECIPE", help="dev error counts per gold type of RECIPE's checkpoints")
    args = parser.parse_args()
    if args.errors:
        print(json.dumps({"errors": errors(args.runs, args.errors, args.data_dir)}, indent=1))
        return
    if args.bio_decoding:
        print(json.dumps({"bio_decoding": bio_decoding(args.runs, args.bio_decoding, args.data_dir)}, indent=1))
        return
    if not args.summary_only:
        for recipe in args.recipes.split(","):
            for seed in (int(s) for s in args.seeds.split(",")):
                for dataset in DATASETS[:1] if is_joint(recipe) else DATASETS:
                    train(args, recipe, dataset, seed)
    print(json.dumps({"runs": str(args.runs), "table": summary(args.runs)}, indent=1))


if __name__ == "__main__":
    main()

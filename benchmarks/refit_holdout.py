"""Does `refit: true` help on data neither model saw? Valid is halved: half A picks the epoch (and joins the refit),
half B is held out from both models and scores the train-only best/ against refit/best, per seed; prints JSON.

    python benchmarks/refit_holdout.py --data-dir ../shared/data --datasets twitter2017 --seeds 1,2,3 --runs runs/refit
    python benchmarks/refit_holdout.py --runs runs/refit --summary-only       # the table of what already ran

Tweets of each valid.txt alternate between the halves (A = 1st, 3rd, ...). The split data root is runs/refit/data:
<dataset>/train.txt (a copy), valid.txt (half A), heldout.txt (half B); every other entry of --data-dir (image
folders) is linked in, so a multimodal run finds its images. Each run (runs/refit/<dataset>_s<seed>) is `python cli.py
train --set refit=true` on that root (train_also as in train.yaml), then `python cli.py evaluate` of both checkpoints
on heldout.txt into heldout-best.json and heldout-refit.json beside them.
Not run by CI (one Twitter epoch is minutes on 2 CPU cores).
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from dev_recipes import cli, mean_std  # noqa: E402

from pipeline.io.conll import read_conll, write_conll  # noqa: E402

CHECKPOINTS = {"best": "best", "refit": "refit/best"}  # train only, epoch chosen on half A | train + half A, as many


def split_data(data_dir: Path, out: Path) -> Path:
    """out/<dataset>/{train,valid,heldout}.txt for each dataset folder of data_dir with a valid.txt; returns out."""
    out.mkdir(parents=True, exist_ok=True)
    for entry in sorted(data_dir.iterdir()):
        target = out / entry.name
        if (entry / "valid.txt").is_file():
            target.mkdir(exist_ok=True)
            shutil.copyfile(entry / "train.txt", target / "train.txt")
            tweets = read_conll(entry / "valid.txt", fix_bio=True)  # as train and evaluate read it
            write_conll(target / "valid.txt", tweets[0::2])
            write_conll(target / "heldout.txt", tweets[1::2])
        elif not target.exists():
            target.symlink_to(entry.resolve(), target_is_directory=entry.is_dir())
    return out


def run(args: argparse.Namespace, data: Path, dataset: str, seed: int) -> None:
    """Train (then refit) one seed, unless done, and score both checkpoints on the held-out half."""
    folder = args.runs / f"{dataset}_s{seed}"
    if not (folder / "refit" / "best").is_dir():
        sets = [f"data_dir={data}", f"dataset={dataset}", f"seed={seed}", f"save_path={folder}", "refit=true",
                *args.set]
        if (folder / "last").is_dir():
            sets.append(f"load_path={folder}")
        cli("train", *(x for s in sets for x in ("--set", s)))
    for name, checkpoint in CHECKPOINTS.items():
        score = folder / f"heldout-{name}.json"
        if not score.is_file():
            cli("evaluate", str(folder / checkpoint), str(data / dataset / "heldout.txt"), "--out", str(score))


def summary(runs: Path) -> list[dict[str, Any]]:
    """Per dataset: held-out F1 of best/ and refit/best (mean, std, per seed), their paired difference, epochs."""
    cells: dict[str, list[dict[str, Any]]] = {}
    for folder in sorted(runs.glob("*_s*")):
        scores = [folder / f"heldout-{name}.json" for name in CHECKPOINTS]
        if not all(p.is_file() for p in scores):
            continue
        metrics = json.loads((folder / "metrics.json").read_text())
        best, refit = (json.loads(p.read_text())["f1"] for p in scores)
        cells.setdefault(metrics["dataset"], []).append(
            {"seed": metrics["seed"], "best": best, "refit": refit, "epochs": metrics["best_epoch"]})
    rows = []
    for dataset, seeds in sorted(cells.items()):
        seeds.sort(key=lambda r: r["seed"])
        row: dict[str, Any] = {"dataset": dataset, "seeds": [r["seed"] for r in seeds],
                               "refit_epochs": [r["epochs"] for r in seeds]}
        for key in ("best", "refit"):
            row[key] = mean_std([r[key] for r in seeds]) | {"f1": [r[key] for r in seeds]}
        row["refit_minus_best"] = mean_std([r["refit"] - r["best"] for r in seeds])
        rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--runs", type=Path, default=ROOT / "runs" / "refit")
    parser.add_argument("--datasets", default="twitter2015,twitter2017")
    parser.add_argument("--seeds", default="1,2,3")
    parser.add_argument("--set", action="append", default=[], help="extra train override, repeatable")
    parser.add_argument("--summary-only", action="store_true", help="only print the table of the runs already there")
    args = parser.parse_args()
    if not args.summary_only:
        data = split_data(args.data_dir, args.runs / "data")
        for seed in map(int, args.seeds.split(",")):
            for dataset in args.datasets.split(","):
                run(args, data, dataset, seed)
    print(json.dumps({"rows": summary(args.runs)}, indent=1))


if __name__ == "__main__":
    main()

"""The tweets one training run learns from and is scored on: its dataset's train and valid splits, plus the train
splits of `train_also` datasets (same label set), whose valid splits are scored every epoch as well.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from exit_codes import UsageError
from pipeline.io.conll import Tweet
from pipeline.io.dataset import BenchmarkDataset
from pipeline.stage_config import TrainConfig

__all__ = ["Corpus", "TWITTER_BENCHMARKS", "joint_datasets", "load_corpus"]

log = logging.getLogger("rpihmif.train")

TWITTER_BENCHMARKS = ("twitter2015", "twitter2017")  # share PER/LOC/ORG/OTHER: `train_also: auto` pairs them


@dataclass
class Corpus:
    """Training tweets of every dataset in the mix, and the valid tweets of each (the run's own dataset first)."""

    dataset: BenchmarkDataset  # the run's own dataset: its valid split picks the best epoch
    train: list[Tweet]
    dev: dict[str, list[Tweet]]


def _train_file(cfg: TrainConfig, name: str) -> Path:
    return Path(cfg.data_dir) / name / "train.txt"


def joint_datasets(cfg: TrainConfig) -> list[str]:
    """Names of the other datasets whose train split joins this run (`train_also`), checked to exist under data_dir."""
    spec = cfg.train_also.strip()
    if spec == "auto":
        others = [n for n in TWITTER_BENCHMARKS if cfg.dataset in TWITTER_BENCHMARKS and n != cfg.dataset]
        found = [n for n in others if _train_file(cfg, n).is_file()]
        if others and not found:
            log.info("train_also: auto: %s not found, training on %s alone", _train_file(cfg, others[0]), cfg.dataset)
        return found
    names = [n.strip() for n in spec.split(",") if n.strip()]
    for name in names:
        if name == cfg.dataset or names.count(name) > 1:
            raise UsageError(f"train_also names {name!r} twice (or the run's own dataset); list other datasets once")
        if not _train_file(cfg, name).is_file():
            raise UsageError(f"train_also: {_train_file(cfg, name)} not found; train_also lists "
                             "dataset folders under data_dir (comma-separated), auto, or \"\" for none")
    return names


def load_corpus(cfg: TrainConfig, with_valid: bool = False) -> Corpus:
    """Read every split of the mix. Train tweets are concatenated in dataset-name order, so runs of twitter2015 and of
    twitter2017 with `train_also: auto` and one seed see the same batches and differ only in the epoch they keep.
    with_valid: the valid splits join training too (a refit; their scores are then no longer held out)."""
    if not (Path(cfg.data_dir) / cfg.dataset).is_dir():
        raise UsageError(f"dataset folder {Path(cfg.data_dir) / cfg.dataset} not found; set data_dir to the "
                         f"folder holding {cfg.dataset}/ with train.txt and valid.txt (DeepKE layout)")
    names = [cfg.dataset] + joint_datasets(cfg)
    if len(names) > 1 and cfg.features == "online" and not cfg.text_only:
        raise UsageError("features: online trains on one dataset; extract-features for each dataset and use "
                         "features: cached with train_also, or set train_also to \"\"")
    datasets = {n: BenchmarkDataset(cfg.data_dir, n, cfg.vision.max_crops) for n in names}
    train: list[Tweet] = []
    for name in sorted(names):
        train += datasets[name].read("train", lenient=cfg.lenient, fix_bio=cfg.fix_bio)
    dev = {}
    for name in names:
        if name == cfg.dataset or "valid" in datasets[name].splits():
            dev[name] = datasets[name].read("valid", lenient=cfg.lenient, fix_bio=cfg.fix_bio)
    if with_valid:
        train += [t for name in sorted(dev) for t in dev[name]]
    return Corpus(datasets[cfg.dataset], train, dev)

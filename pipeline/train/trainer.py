"""The `train` stage: text encoder + HIM + IFFE + CRF trained from the feature cache, best epoch kept by valid F1.

Writes a run folder (best/ checkpoint, last/ resume state, metrics.json, train.log); `load_path` resumes exactly.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import logging
import random
import time
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from transformers import get_linear_schedule_with_warmup

from cache.durable import atomic_dir, atomic_write_text, ensure_dir, recover_dir, refuse_link
from exit_codes import UsageError
from pipeline.io.conll import Tweet
from pipeline.io.dataset import BenchmarkDataset
from pipeline.runtime.device import resolve_device, seed_everything
from pipeline.runtime.interrupts import StopFlag, Terminated, stop_on_sigterm, write_guard
from pipeline.runtime.progress import Progress, setup_logging
from pipeline.stage_config import TrainConfig
from pipeline.train.adversarial import adversarial_backward
from pipeline.train.cached_features import TweetFeatures
from pipeline.train.corpus import load_corpus
from pipeline.train.evaluate import entity_scores
from pipeline.train.online_features import OnlineFeatures
from rpihmif.alignment import TextBatch, WindowTokenizer
from rpihmif.checkpoint import load_checkpoint, save_checkpoint
from rpihmif.config import ModelConfig, VisualConfig
from rpihmif.hub import go_offline
from rpihmif.labels import LABEL2ID
from rpihmif.model import RPIHMIF
from rpihmif.precision import resolve_precision
from rpihmif.predictor import Tagger
from rpihmif.text_encoder import load_text_encoder
from rpihmif.visual import VisualBatch, drop_sources

__all__ = ["train", "build_model_config"]

log = logging.getLogger("rpihmif.train")
STATE_FILE = "trainer_state.pt"


def build_model_config(cfg: TrainConfig, visual: VisualConfig | None, datasets: Sequence[str] = ()) -> ModelConfig:
    """Model hyper-parameters from the train config (DeepKE names), the cache's visual layout and the names of the
    training mix (the annotation styles `dataset_dim` tells apart when there are two or more)."""
    visual = visual or VisualConfig()
    visual.sources = list(cfg.visual.sources)
    styles = sorted(datasets) if len(datasets) > 1 else []  # one dataset: no style to tell apart
    return ModelConfig(
        text=dataclasses.replace(cfg.text, dataset_dim=cfg.text.dataset_dim if styles else 0, datasets=styles,
                                 dataset=cfg.dataset if styles else ""),
        him=dataclasses.replace(cfg.him),
        iffe=dataclasses.replace(cfg.iffe),
        visual=visual,
        text_only=cfg.text_only,
        constrain_bio=cfg.constrain_bio,
    )


def _batches(n: int, size: int, generator: torch.Generator) -> list[list[int]]:
    order = torch.randperm(n, generator=generator).tolist()
    return [order[i:i + size] for i in range(0, n, size)]


def _rng_state() -> dict[str, Any]:
    """RNG states as tensors and plain tuples, so the state file loads with `weights_only=True`."""
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    return {"python": random.getstate(), "torch": torch.get_rng_state(),
            "numpy": (name, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(gauss))}


def _set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    name, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(state["torch"])



def training_features(cfg: TrainConfig, dataset: BenchmarkDataset) -> TweetFeatures:
    """Where training reads visual features: the feature cache, or the CLIP encoder in the loop (`features: online`)."""
    if cfg.features == "online" and not cfg.text_only:
        return OnlineFeatures.from_config(cfg, dataset)
    return TweetFeatures.for_training(cfg, dataset)

class Trainer:
    """Holds the model, data and optimizer of one run; `fit()` runs the remaining epochs."""

    def __init__(self, cfg: TrainConfig, refit: bool = False):
        self.cfg, self.refit = cfg, refit  # refit: valid splits train too, and the last epoch is the one kept
        self.run_dir = Path(cfg.save_path)
        self.device = resolve_device(cfg.device)
        self.precision = resolve_precision(cfg.precision, self.device)  # bf16 autocast of the forward; CRF fp32
        seed_everything(cfg.seed)
        corpus = load_corpus(cfg, with_valid=refit)
        self.train_set, self.dev_sets = corpus.train, corpus.dev
        self.dev_set = corpus.dev[cfg.dataset]
        self.train_datasets = sorted({t.dataset for t in corpus.train})
        self.features = training_features(cfg, corpus.dataset)
        try:
            encoder, self.tokenizer = load_text_encoder(cfg.text.bert_name, offline=cfg.offline)
        except (OSError, ValueError) as exc:  # ModelError is a ValueError
            raise UsageError(f"bert_name {cfg.text.bert_name!r}: cannot load a text encoder: {exc}") from exc
        self.model_config = build_model_config(cfg, self.features.visual_config(), self.train_datasets)
        try:
            self.model = RPIHMIF(self.model_config, encoder).to(self.device)
            self.window_tokenizer = WindowTokenizer.for_model(self.tokenizer, self.model_config)
        except ValueError as exc:  # a combination the model rejects (e.g. max_seq too short for him.question)
            raise UsageError(f"train config: {exc}") from exc
        # reseed: dropout and shuffling must not depend on how many layers the model drew at initialisation, so a
        # multimodal model with no image anywhere trains exactly like the text-only model
        seed_everything(cfg.seed)
        # weight averaging: an exponential moving average of the weights, updated every step, is what gets scored
        # and saved as best/ (the raw weights keep training)
        self.ema = AveragedModel(self.model, multi_avg_fn=get_ema_multi_avg_fn(cfg.ema_decay)) if cfg.ema_decay else None
        self.tagger = Tagger(self.ema.module if self.ema else self.model, self.tokenizer, self.model_config,
                             device=self.device, autocast=self.precision.autocast)
        self.encoded = self._encode(self.train_set)
        # shape: (N,) each training tweet's dataset style, or None (no dataset_dim)
        self.train_styles = self.model.dataset_ids([t.dataset for t in self.train_set])
        steps = cfg.num_epochs * ((len(self.encoded) + cfg.train_batch_size - 1) // cfg.train_batch_size)
        self.optimizer = torch.optim.AdamW(self.model.param_groups(
            cfg.learning_rate, cfg.fusion_learning_rate, cfg.crf_learning_rate, cfg.weight_decay))
        self.scheduler = get_linear_schedule_with_warmup(self.optimizer, int(cfg.warmup_ratio * steps), steps)
        self.epoch, self.best_f1, self.history = 0, -1.0, []
        self.stop = StopFlag()  # set by SIGTERM while train() runs

    def _encode(self, tweets: list[Tweet]) -> list[tuple[Any, list[int]]]:
        """Encode every training tweet once; training may truncate, and says how many words it cut."""
        encoder = self.window_tokenizer
        encoded, cut_words, cut_tweets = [], 0, 0
        for tweet in tweets:
            window, n_cut = encoder.encode_train(tweet.words)
            labels = [LABEL2ID[label] for label in tweet.labels[: len(tweet.words) - n_cut]]
            encoded.append((window, labels))
            cut_words, cut_tweets = cut_words + n_cut, cut_tweets + bool(n_cut)
        if cut_words:
            log.warning("training truncated %d words in %d tweets longer than max_seq=%d sub-words",
                        cut_words, cut_tweets, self.cfg.text.max_seq)
        return encoded

    def resume(self, load_path: str) -> None:
        """Restore model, optimizer, scheduler, RNG and epoch from a run's `last/` folder."""
        folder = Path(load_path)
        run = folder.parent if folder.name == "last" else folder
        if (run / "last").is_dir() or (run / "last.old").is_dir():
            folder = run / "last"
            recover_dir(folder)
        elif not run.is_dir():
            raise UsageError(f"load_path {load_path}: no such folder; point it at a run folder or its last/ folder")
        state_path = folder / STATE_FILE
        if not state_path.is_file():
            if not (folder / "config.json").exists():  # a run folder of a run killed before its first epoch
                log.warning("load_path %s: no epoch of that run finished (no last/%s): starting fresh from epoch 1",
                            load_path, STATE_FILE)
                return
            raise UsageError(f"load_path {load_path}: no {STATE_FILE} here, so there is no training state to resume "
                             "(a best/ checkpoint holds weights only); point it at the run folder or its last/ "
                             "folder, or drop load_path to start fresh")
        model, _, config = load_checkpoint(folder, device=self.device, expected_labels=self.model_config.labels)
        self.model.load_state_dict(model.state_dict())
        try:
            state = torch.load(state_path, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 -- truncated or foreign file
            raise UsageError(f"{state_path}: unreadable training state ({str(exc)[:200]}); resume from another "
                             "run, or drop load_path to start fresh") from exc
        if self.ema is not None:
            if "ema" not in state:
                raise UsageError(f"{state_path}: that run did not average weights (ema_decay 0); resume it with the "
                                 "same ema_decay, or drop load_path to start fresh")
            self.ema.load_state_dict(state["ema"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        _set_rng_state(state["rng"])
        self.epoch, self.best_f1, self.history = state["epoch"], state["best_f1"], state["history"]
        log.info("resumed from %s after epoch %d (best dev F1 %.2f)", folder, self.epoch, self.best_f1)

    def fit(self) -> dict[str, Any]:
        cfg = self.cfg
        log.info("train %d tweets, valid %d tweets, %d epochs, device %s, precision %s (%s), images: %s; "
                 "run folder %s, feature cache root %s", len(self.encoded), len(self.dev_set), cfg.num_epochs,
                 self.device, self.precision.name, self.precision.reason, self.features.describe(),
                 Path(cfg.save_path).absolute(), Path(cfg.cache_dir).absolute())
        while self.epoch < cfg.num_epochs:
            start = time.monotonic()
            loss = self._train_epoch()
            seconds = time.monotonic() - start
            self.epoch += 1
            entry = self._score_epoch(loss, seconds)
            self.history.append(entry)
            if "dev" in entry and (self.refit or entry["dev"]["f1"] > self.best_f1):
                self.best_f1 = entry["dev"]["f1"]
                with write_guard(self.run_dir / "best", self._resume_hint()), atomic_dir(self.run_dir / "best") as tmp:
                    save_checkpoint(tmp, self.tagger.model, self.tokenizer, metrics=self.metrics())
            self._save_last()
            self._save_metrics()
        # a run killed between saving last/ and metrics.json resumes with no epoch left: write it here too
        self._save_metrics()
        return self.metrics()

    def _resume_hint(self) -> str:
        last = self.run_dir / "last"
        return (f"rerun with --set load_path={last} to resume after the last saved epoch"
                if (last / STATE_FILE).is_file() else "no epoch was saved yet: rerun to start again")

    def _save_metrics(self) -> None:
        with write_guard(self.run_dir / "metrics.json", self._resume_hint()):
            atomic_write_text(self.run_dir / "metrics.json", json.dumps(self.metrics(), indent=2) + "\n")

    def _score_epoch(self, loss: float, seconds: float) -> dict[str, Any]:
        """The epoch's history entry: loss, time, and each valid split's scores (a refit keeps its last epoch, so it
        scores that one only)."""
        cfg = self.cfg
        entry = {"epoch": self.epoch, "loss": round(loss, 4), "seconds": round(seconds, 1)}
        if self.refit and self.epoch < cfg.num_epochs:
            log.info("epoch %d/%d: loss %.4f (%.0fs train; a refit scores its last epoch only)", self.epoch,
                     cfg.num_epochs, loss, seconds)
            return entry
        dev = {name: self.score(tweets, name) for name, tweets in self.dev_sets.items()}
        entry["dev"] = dev.pop(cfg.dataset)
        if dev:  # the valid splits of the train_also datasets: what a run of theirs with this mix would keep
            entry["dev_also"] = dev
        log.info("epoch %d/%d: loss %.4f, dev P %.2f R %.2f F1 %.2f (%.0fs train)%s", self.epoch, cfg.num_epochs,
                 loss, entry["dev"]["precision"], entry["dev"]["recall"], entry["dev"]["f1"], seconds,
                 "".join(f"; {name} dev F1 {d['f1']:.2f}" for name, d in dev.items()))
        return entry

    def _train_epoch(self) -> float:
        cfg, model = self.cfg, self.model
        model.train()
        generator = torch.Generator().manual_seed(cfg.seed * 1000 + self.epoch)
        batches = _batches(len(self.encoded), cfg.train_batch_size, generator)
        total, count = 0.0, 0
        bar = Progress(len(batches), desc=f"epoch {self.epoch + 1}", unit="batch", every_s=cfg.log_every_s)
        for idx in self._until_stopped(batches, bar):
            windows = [self.encoded[i][0] for i in idx]
            labels = [self.encoded[i][1] for i in idx]
            text = self.window_tokenizer.collate(windows, labels)
            text.dataset_ids = None if self.train_styles is None else self.train_styles[idx]
            text = text.to(self.device)
            visual = self.features.batch([self.train_set[i] for i in idx], self.model_config, self.device)
            if visual is not None:  # source dropout (training only); draws nothing at p = 0
                visual = drop_sources(visual, cfg.visual_dropout.source, cfg.visual_dropout.image, generator)
            loss = self._loss(text, visual)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.adversarial_eps:  # FGM: the loss again with the used word embeddings pushed up their gradient
                adversarial_backward(model.encoder.get_input_embeddings(), cfg.adversarial_eps, text.input_ids,
                                     functools.partial(self._loss, text, visual))
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
            self.optimizer.step()
            self.scheduler.step()
            if self.ema is not None:
                self.ema.update_parameters(model)
            total, count = total + loss.item(), count + 1
            bar.update(1, loss=f"{total / count:.4f}")
        bar.close()
        return total / max(count, 1)

    def _until_stopped(self, batches: list[list[int]], bar: Progress) -> Iterator[list[int]]:
        """The epoch's batches until SIGTERM, which stops the run at this batch boundary (Terminated, exit 143): last/
        keeps the last finished epoch, so a resume replays this one exactly."""
        for i, idx in enumerate(batches):
            if self.stop.signum is not None:
                bar.close()
                raise Terminated(f"train stopped by SIGTERM at batch {i}/{len(batches)} of epoch {self.epoch + 1} "
                                 f"({self.run_dir}); {self._resume_hint()}")
            yield idx

    def _loss(self, text: TextBatch, visual: VisualBatch | None) -> torch.Tensor:
        """The batch's CRF loss, forward under the run's precision."""
        with self.precision.autocast():  # weights, gradients and optimizer state stay fp32
            return self.model(text, visual).loss

    def score(self, tweets: list[Tweet], dataset: str = "") -> dict[str, Any]:
        """Entity-level P/R/F1 of the current model on `tweets` of `dataset` (every word predicted, windows merged)."""
        preds = self.tagger.predict([t.words for t in tweets], self.features.lookup(tweets),
                                    batch_size=self.cfg.eval_batch_size, dataset=dataset)
        return entity_scores([t.labels for t in tweets], [p.labels for p in preds])

    def metrics(self) -> dict[str, Any]:
        scored = [h for h in self.history if "dev" in h]  # a refit scores its last epoch only
        best = (scored[-1] if self.refit else max(scored, key=lambda h: h["dev"]["f1"])) if scored else None
        out = {"best_epoch": best["epoch"] if best else None, "best_dev": best["dev"] if best else None,
               "epochs": self.history, "dataset": self.cfg.dataset, "seed": self.cfg.seed,
               "train_datasets": self.train_datasets, "config": self.cfg.to_dict(),
               **({"refit": "valid splits trained on: the last epoch is kept, its dev scores are not held out"}
                  if self.refit else {})}
        also = {name for h in self.history for name in h.get("dev_also", {})}
        if also:  # per train_also dataset: the epoch its own valid split would keep
            out["best_dev_also"] = {name: max(({"epoch": h["epoch"], "dev": h["dev_also"][name]}
                                               for h in self.history if name in h.get("dev_also", {})),
                                              key=lambda e: e["dev"]["f1"]) for name in sorted(also)}
        return out

    def _save_last(self) -> None:
        with write_guard(self.run_dir / "last", self._resume_hint()), atomic_dir(self.run_dir / "last") as tmp:
            save_checkpoint(tmp, self.model, self.tokenizer)
            torch.save({"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                        "rng": _rng_state(), "epoch": self.epoch, "best_f1": self.best_f1,
                        "history": self.history, **({"ema": self.ema.state_dict()} if self.ema else {})},
                       tmp / STATE_FILE)


def _prepare_run_dir(run_dir: Path) -> None:
    """Refuse links planted where train keeps its own files; finish or drop what a killed run left half-swapped."""
    for name in ("best", "last", "best.old", "last.old", "refit"):  # our own folders: a planted link is refused
        if (run_dir / name).is_symlink() or (run_dir / name).is_file():
            raise UsageError(f"{run_dir / name} is a symbolic link or a file where train keeps its own folder; "
                             "remove it (nothing is ever written through it)")
    for name in ("metrics.json", "metrics.json.old", "train.log"):
        refuse_link(run_dir / name)


def _recover_run_dir(run_dir: Path) -> None:
    """Finish or drop what a killed run left half-swapped."""
    for name in ("best", "last", "metrics.json"):
        recover_dir(run_dir / name)


def _refit(cfg: TrainConfig, run_dir: Path, epochs: int, stop: StopFlag) -> dict[str, Any]:
    """Train again from scratch, same seed, on train + valid for the `epochs` chosen on valid, into run_dir/refit
    (resumed if a killed refit left its last/); its best/ is the final epoch."""
    folder = ensure_dir(run_dir / "refit", "refit folder")
    _prepare_run_dir(folder)
    _recover_run_dir(folder)
    refit_cfg = dataclasses.replace(cfg, num_epochs=epochs, save_path=str(folder), load_path="", refit=False)
    trainer = Trainer(refit_cfg, refit=True)
    trainer.stop = stop
    log.info("refit: %d tweets (train + valid) for %d epoch(s), the count chosen on valid, into %s",
             len(trainer.encoded), epochs, folder)
    if (folder / "last").is_dir():
        trainer.resume(str(folder))
    trainer.fit()
    return {"epochs": epochs, "checkpoint": str(folder / "best")}


def train(cfg: TrainConfig) -> dict[str, Any]:
    """Run the train stage from a checked `conf/train.yaml` config; return the final metrics, with `model`:
    the checkpoint to tag and test with (RUN/best, or RUN/refit/best after a refit)."""
    run_dir = ensure_dir(cfg.save_path, "save_path")
    if cfg.offline:  # hub ids (bert_name, vision.vit_name) only from the Hugging Face cache
        go_offline()
    _prepare_run_dir(run_dir)
    setup_logging(run_dir / "train.log")
    if cfg.log_dir:
        setup_logging(Path(cfg.log_dir) / "train.log")
    _recover_run_dir(run_dir)
    with stop_on_sigterm(StopFlag()) as stop:  # SIGTERM from here on: stop at the next batch boundary
        return _train(cfg, run_dir, stop)


def _train(cfg: TrainConfig, run_dir: Path, stop: StopFlag) -> dict[str, Any]:
    trainer = Trainer(cfg)
    trainer.stop = stop
    if cfg.load_path:
        trainer.resume(cfg.load_path)
    metrics = trainer.fit()
    log.info("best dev F1 %.2f at epoch %s; checkpoint %s", metrics["best_dev"]["f1"] if metrics["best_dev"] else 0,
             metrics["best_epoch"], run_dir / "best")
    result = {"run": str(run_dir), "best_epoch": metrics["best_epoch"], "best_dev": metrics["best_dev"],
              "model": str(run_dir / "best")}
    if cfg.refit and metrics["best_epoch"]:
        result["refit"] = _refit(cfg, run_dir, metrics["best_epoch"], stop)
        result["model"] = result["refit"]["checkpoint"]
        log.info("the model to tag and test with: %s (train + valid, %d epoch(s)); %s keeps the held-out dev choice",
                 result["model"], metrics["best_epoch"], run_dir / "best")
    return result

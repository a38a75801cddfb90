"""Entity-level evaluation with seqeval (micro P/R/F1 and per type, 0-100) and the `evaluate` stage.

`evaluate_file` scores a checkpoint on a CoNLL split over every gold entity (long tweets are windowed, never cut).
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from seqeval.metrics import classification_report

from cache.durable import atomic_write_text, ensure_dir, refuse_link
from pipeline.io.checkpoint_folder import checkpoint_info, load_error
from pipeline.runtime.device import resolve_device
from pipeline.runtime.precision import resolve_precision
from pipeline.stage_config import EvaluateConfig
from rpihmif.errors import PipelineError, UsageError
from rpihmif.labels import ENTITY_TYPES
from rpihmif.visual import resolve_sources

__all__ = ["entity_scores", "evaluate_file"]

log = logging.getLogger("rpihmif.evaluate")


def _pct(x: float) -> float:
    return round(100 * float(x), 2)


def entity_scores(gold: list[list[str]], pred: list[list[str]]) -> dict[str, Any]:
    """seqeval micro precision/recall/F1 over entities (0-100) plus per-type P/R/F1/support."""
    if len(gold) != len(pred) or any(len(g) != len(p) for g, p in zip(gold, pred)):
        raise ValueError("gold and predicted sequences differ in number or length")
    report = classification_report(gold, pred, output_dict=True, zero_division=0)
    micro = report.get("micro avg", {"precision": 0.0, "recall": 0.0, "f1-score": 0.0, "support": 0})
    per_type = {
        etype: {
            "precision": _pct(report[etype]["precision"]),
            "recall": _pct(report[etype]["recall"]),
            "f1": _pct(report[etype]["f1-score"]),
            "support": int(report[etype]["support"]),
        }
        for etype in ENTITY_TYPES if etype in report
    }
    return {
        "precision": _pct(micro["precision"]),
        "recall": _pct(micro["recall"]),
        "f1": _pct(micro["f1-score"]),
        "entities": int(sum(v["support"] for v in per_type.values())),
        "per_type": per_type,
    }


def _style(wanted: str, folder: str, model: Any) -> str:
    """The annotation style to score in ("" = the model's own): `auto` takes the split's dataset folder when the model
    was trained on it; a named dataset must be one the model knows (`RPIHMIF.dataset_ids` checks)."""
    text = model.model_config.text
    if not text.dataset_dim:
        return ""
    if wanted == "auto":
        return folder if folder in text.datasets else ""
    try:
        model.dataset_ids([wanted])
    except ValueError as exc:
        raise UsageError(f"{exc}; set dataset to one of them or to auto") from exc
    return wanted


def evaluate_file(checkpoint: Path, split_file: Path, cfg: EvaluateConfig, out: Path | None = None,
                  predictions: Path | None = None) -> dict[str, Any]:
    """Score `checkpoint` on `split_file`; write metrics JSON to `out` and CoNLL predictions to `predictions`."""
    from pipeline.io.conll import read_conll, write_conll
    from pipeline.io.dataset import BenchmarkDataset
    from pipeline.train.cached_features import TweetFeatures
    from rpihmif.predictor import Tagger

    for target in (out, predictions):  # refused before the work: a folder, a link or a non-file there
        if target is not None:
            ensure_dir(Path(target).parent)
            refuse_link(Path(target))
    checkpoint_info(checkpoint)
    if not Path(split_file).is_file():
        raise UsageError(f"split file {split_file} not found")
    device = resolve_device(cfg.device)
    try:
        tagger = Tagger.from_pretrained(checkpoint, device=device,
                                        autocast=resolve_precision(cfg.precision, device).autocast)
    except PipelineError:
        raise
    except Exception as exc:  # noqa: BLE001 -- SafetensorError and friends: one line naming the folder
        raise load_error(checkpoint, exc) from exc
    dataset = BenchmarkDataset.from_split_file(split_file)
    tweets = read_conll(split_file, lenient=cfg.lenient, fix_bio=cfg.fix_bio)
    features = TweetFeatures.for_model(cfg.cache_dir, dataset, tagger.config)
    log.info("evaluate: checkpoint %s, feature cache root %s (%s)", Path(checkpoint).absolute(),
             Path(cfg.cache_dir).absolute(), features.describe())
    fingerprint = tagger.config.visual.fingerprint
    if tagger.uses_vision and fingerprint and features.cache is None and not (cfg.allow_missing_images or cfg.text_only):
        raise UsageError(f"{checkpoint} is a multimodal model (encoder {fingerprint}) but the feature cache "
                         f"{cfg.cache_dir} has no features of that encoder: scores would be text-only. Run `python "
                         f"cli.py extract-features` for this dataset with the model's encoder into that folder, or "
                         f"point --set cache_dir= / $RPIHMIF_CACHE at the cache the model was trained with, or pass "
                         f"--set allow_missing_images=true to score text-only")
    style = _style(cfg.dataset, dataset.name, tagger.model)
    try:  # visual.sources: a source the model was not trained with is bad usage (exit 2)
        resolve_sources(tagger.config.visual.sources, cfg.visual.sources)
    except ValueError as exc:
        raise UsageError(f"{checkpoint}: {exc}") from exc
    preds = tagger.predict([t.words for t in tweets], features.lookup(tweets), batch_size=cfg.batch_size, dataset=style,
                           sources=cfg.visual.sources, text_only=cfg.text_only)
    metrics = entity_scores([t.labels for t in tweets], [p.labels for p in preds])
    metrics.update({"file": str(split_file), "checkpoint": str(checkpoint), "tweets": len(tweets),
                    **({"dataset_style": style or tagger.config.text.dataset} if tagger.config.text.dataset_dim else {}),
                    "images_used": features.found, "images_missing": features.missing})
    if features.missing:
        log.warning("%s: %d of %d tweets had no cached image features (scored with the image masked)", split_file,
                    features.missing, len(tweets))
    log.info("%s: P %.2f R %.2f F1 %.2f over %d entities", split_file, metrics["precision"], metrics["recall"],
             metrics["f1"], metrics["entities"])
    if out is not None:
        atomic_write_text(out, json.dumps(metrics, indent=2) + "\n")
    if predictions is not None:
        write_conll(predictions, tweets, [p.labels for p in preds])
    return metrics

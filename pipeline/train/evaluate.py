"""Entity-level evaluation with seqeval (micro P/R/F1 and per type, 0-100), a per-type confusion, and the `evaluate`
stage: `evaluate_file` scores a checkpoint on a CoNLL split over every gold entity (long tweets are windowed, never
cut) and writes the predictions in conlleval form (token, gold, predicted).
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from seqeval.metrics import classification_report

from cache.durable import atomic_write_text, ensure_dir, refuse_link
from exit_codes import UsageError
from pipeline.runtime.device import resolve_device
from rpihmif.precision import resolve_precision
from pipeline.stage_config import EvaluateConfig
from rpihmif.labels import ENTITY_TYPES, LABELS, bio_spans
from rpihmif.visual import resolve_sources

__all__ = ["entity_scores", "entity_confusion", "write_conlleval", "evaluate_file"]

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


MISSED, SPURIOUS = "missed", "spurious"


def entity_confusion(gold: list[list[str]], pred: list[list[str]]) -> dict[str, dict[str, int]]:
    """Gold type x predicted type over entities whose span matches exactly, `missed` (a gold entity no predicted one
    has the span of) and a `spurious` row (predicted spans that are no gold entity): `{gold: {pred | missed: n}}`."""
    table: dict[str, dict[str, int]] = {t: {u: 0 for u in (*ENTITY_TYPES, MISSED)} for t in ENTITY_TYPES}
    table[SPURIOUS] = {u: 0 for u in ENTITY_TYPES}
    for g, p in zip(gold, pred):
        gspans = {(s, e): t for t, s, e in bio_spans(g)}
        pspans = {(s, e): t for t, s, e in bio_spans(p)}
        for span, gtype in gspans.items():
            row = table.setdefault(gtype, {})
            col = pspans.get(span, MISSED)
            row[col] = row.get(col, 0) + 1
        for span, ptype in pspans.items():
            if span not in gspans:
                table[SPURIOUS][ptype] = table[SPURIOUS].get(ptype, 0) + 1
    return table


def write_conlleval(path: Path, tweets: list[Any], predicted: list[list[str]]) -> None:
    """`token gold predicted` per line (conlleval's input), a blank line between tweets; written atomically."""
    lines = []
    for tweet, labels in zip(tweets, predicted):
        lines += [f"{w} {g} {p}" for w, g, p in zip(tweet.words, tweet.labels, labels)]
        lines.append("")
    atomic_write_text(path, "\n".join(lines) + ("\n" if lines else ""))


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


def evaluate_file(checkpoint: str | Path, split_file: Path, cfg: EvaluateConfig, out: Path | None = None,
                  predictions: Path | None = None) -> dict[str, Any]:
    """Score `checkpoint` on `split_file`; write metrics JSON to `out` and CoNLL predictions to `predictions`."""
    from pipeline.io.conll import read_conll
    from rpihmif.checkpoint import resolve_checkpoint
    from pipeline.io.dataset import BenchmarkDataset
    from pipeline.train.cached_features import TweetFeatures
    from rpihmif.predictor import Tagger

    for target in (out, predictions):  # refused before the work: a folder, a link or a non-file there
        if target is not None:
            ensure_dir(Path(target).parent)
            refuse_link(Path(target))
    checkpoint = resolve_checkpoint(checkpoint)  # a folder, a run folder or a hub id
    if not Path(split_file).is_file():
        raise UsageError(f"split file {split_file} not found")
    device = resolve_device(cfg.device)
    tagger = Tagger.from_pretrained(checkpoint, device=device, expected_labels=list(LABELS),
                                    autocast=resolve_precision(cfg.precision, device).autocast)
    dataset = BenchmarkDataset.from_split_file(split_file)
    tweets = read_conll(split_file, lenient=cfg.lenient, fix_bio=cfg.fix_bio)
    features = TweetFeatures.for_model(cfg.cache_dir, dataset, tagger.config)
    log.info("evaluate: checkpoint %s, feature cache root %s (%s)", Path(checkpoint).absolute(),
             Path(cfg.cache_dir).absolute(), features.describe())
    fingerprint = tagger.config.visual.fingerprint
    if tagger.uses_images and fingerprint and features.cache is None and not cfg.allow_missing_images:
        from pipeline.extract.from_checkpoint import extract_hint

        raise UsageError(f"{checkpoint} is a multimodal model (encoder {fingerprint}) but the feature cache "
                         f"{cfg.cache_dir} has no features of that encoder: scores would be text-only. Run: "
                         f"{extract_hint(checkpoint, [], cfg.cache_dir, dataset_dir=dataset.root)} -- then rerun "
                         f"this command; or point --set cache_dir= / $RPIHMIF_CACHE at the cache the model was "
                         f"trained with, or pass --set allow_missing_images=true to score text-only")
    style = _style(cfg.dataset, dataset.name, tagger.model)
    try:  # visual.sources: a source the model was not trained with is bad usage (exit 2)
        resolve_sources(tagger.config.visual.sources, cfg.visual.sources)
    except ValueError as exc:
        raise UsageError(f"{checkpoint}: {exc}") from exc
    preds = tagger.predict([t.words for t in tweets], features.lookup(tweets), batch_size=cfg.batch_size, dataset=style,
                           sources=cfg.visual.sources, text_only=cfg.text_only)
    metrics = entity_scores([t.labels for t in tweets], [p.labels for p in preds])
    metrics["confusion"] = entity_confusion([t.labels for t in tweets], [p.labels for p in preds])
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
        write_conlleval(Path(predictions), tweets, [p.labels for p in preds])
    return metrics

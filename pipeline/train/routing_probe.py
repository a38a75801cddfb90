"""Routing probe on the generated sample: does an entity's routing point at the one visual source showing its cue?

Cue source x argmax source counts over image-decided gold entities, and how many routing triples are quarter-valued.
"""
from __future__ import annotations

import json
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from pipeline.io.dataset import BenchmarkDataset
from pipeline.io.sample import CUES_FILE
from pipeline.train.cached_features import TweetFeatures
from pipeline.train.evaluate import entity_scores
from rpihmif.labels import bio_spans
from rpihmif.predictor import Entity, Prediction, Tagger
from rpihmif.visual import SOURCES

__all__ = ["routing_probe", "occlusion_probe", "quarter_valued", "present_sources", "probe_sample_run"]


def present_sources(feat: dict | None, used: Sequence[str]) -> list[str]:
    """The used visual sources that have at least one real (unmasked) view in a cached feature dict."""
    if feat is None:
        return []
    return [s for s in used if feat.get(f"{s}_mask") is not None and bool(feat[f"{s}_mask"].any())]


def quarter_valued(routing: dict[str, float], tol: float = 0.01) -> bool:
    """All three source shares within `tol` of a multiple of 0.25 (a head count rather than a graded share)."""
    return all(abs(4 * v - round(4 * v)) <= 4 * tol for v in routing.values())


def _scored(tweets: Sequence[Any], preds: Sequence[Prediction], feats: Sequence[dict | None],
            cues: dict[str, dict[str, str]], used: Sequence[str]) -> Iterator[tuple[int, str, list[str], Entity]]:
    """(tweet index, cue source, present sources, predicted entity) of the image-decided gold entities predicted with
    the exact span and type whose cue source the model sees."""
    for i, (tweet, pred, feat) in enumerate(zip(tweets, preds, feats)):
        cue = cues.get(tweet.image_id)
        present = present_sources(feat, used)
        if cue is None or cue["cue_source"] not in present:
            continue  # text-decided, a decoy, or the cue source is not visible to this model
        by_span = {(e.start, e.end): e for e in pred.entities}
        for etype, start, end in bio_spans(tweet.labels):
            ent = by_span.get((start, end))
            if ent is not None and ent.type == etype:
                yield i, cue["cue_source"], present, ent


def _argmax_table(picks: list[tuple[str, str, int]]) -> dict[str, Any]:
    """picks: (cue source, chosen source, number of present sources) -> entities, % on the cue, chance, table."""
    confusion: dict[str, Counter] = defaultdict(Counter)
    for cue, best, _ in picks:
        confusion[cue][best] += 1
    n = len(picks)
    return {"entities": n,
            "accuracy": round(100 * sum(c == b for c, b, _ in picks) / n, 2) if n else None,
            "chance": round(100 * sum(1 / k for *_, k in picks) / n, 2) if n else None,
            "argmax_by_cue_source": {k: dict(v) for k, v in sorted(confusion.items())}}


def routing_probe(tweets: Sequence[Any], preds: Sequence[Prediction], feats: Sequence[dict | None],
                  cues: dict[str, dict[str, str]], sources: Sequence[str]) -> dict[str, Any]:
    """{"routing": ...} for a model using more than one source, else {}.

    tweets: gold tweets (image_id, labels); preds and feats: their predictions and cached features; cues:
    sample_cues.json ({image_id: {"type", "cue_source"}}, both null for a decoy). Scored: see _scored.
    quarter_valued: % of the predicted entities of tweets with two or more present sources (one source alone is a
    trivial 1/0/0) whose shares are all within 0.01 of a multiple of 0.25.
    """
    used = [s for s in SOURCES if s in sources]
    if len(used) < 2:
        return {}
    picks, mass_on_cue, no_routing = [], [], 0
    for _, cue, present, ent in _scored(tweets, preds, feats, cues, used):
        if ent.routing is None:
            no_routing += 1
            continue
        mass = {s: ent.routing[s] for s in present}
        picks.append((cue, max(mass, key=mass.get), len(present)))
        mass_on_cue.append(ent.routing[cue] / max(sum(mass.values()), 1e-9))
    routed = [e.routing for p, f in zip(preds, feats) if len(present_sources(f, used)) > 1
              for e in p.entities if e.routing is not None]
    return {"routing": {
        **_argmax_table(picks),
        "mean_mass_on_cue_source": round(100 * sum(mass_on_cue) / len(mass_on_cue), 2) if mass_on_cue else None,
        "without_routing": no_routing,
        "routed_entities": len(routed),  # predicted entities with routing over two or more present sources
        "quarter_valued": round(100 * sum(map(quarter_valued, routed)) / len(routed), 2) if routed else None,
    }}


def _without(feat: dict | None, source: str) -> dict | None:
    """A cached feature dict with every view of `source` masked out."""
    if feat is None:
        return None
    return {**feat, f"{source}_mask": np.zeros_like(np.asarray(feat[f"{source}_mask"]))}


def occlusion_probe(tagger: Tagger, tweets: Sequence[Any], preds: Sequence[Prediction], feats: Sequence[dict | None],
                    cues: dict[str, dict[str, str]]) -> dict[str, Any]:
    """{"occlusion": ...}: for the entities routing_probe scores, the present source whose masking lowers the entity's
    score most (its score with that source masked: the same span and type predicted again, else 0), against the cue
    source. What the model's prediction depends on, next to what its routing share shows; {} for one source."""
    used = [s for s in SOURCES if s in tagger.config.visual.sources]
    if len(used) < 2:
        return {}
    words = [t.words for t in tweets]
    masked = {s: tagger.predict(words, [_without(f, s) for f in feats], batch_size=64) for s in used}
    picks = []
    for i, cue, present, ent in _scored(tweets, preds, feats, cues, used):
        drop = {}
        for s in present:
            again = next((e for e in masked[s][i].entities if (e.start, e.end, e.type) == (ent.start, ent.end,
                                                                                           ent.type)), None)
            drop[s] = ent.score - (again.score if again is not None else 0.0)
        picks.append((cue, max(drop, key=drop.get), len(present)))
    return {"occlusion": _argmax_table(picks)}


def probe_sample_run(checkpoint: str | Path, data_dir: str | Path, dataset: str, cache_dir: str | Path
                     ) -> dict[str, Any]:
    """Dev scores of a checkpoint trained on a generated sample: all entities (dev), image-decided tweets only
    (dev_image_decided: entities and decoys), and, for a multimodal model, dev F1 with the original only and with no
    image (dev_f1_orig_only, dev_f1_no_image), routing_probe and occlusion_probe."""
    tagger = Tagger.from_pretrained(checkpoint)
    data = BenchmarkDataset(data_dir, dataset)
    cues = json.loads((data.root / CUES_FILE).read_text())
    dev = data.read("valid")
    feats = TweetFeatures.for_model(cache_dir, data, tagger.config).lookup(dev)
    preds = tagger.predict([t.words for t in dev], feats, batch_size=64)
    decided = [i for i, t in enumerate(dev) if t.image_id in cues]
    out: dict[str, Any] = {
        "dev": entity_scores([t.labels for t in dev], [p.labels for p in preds]),
        "dev_image_decided": entity_scores([dev[i].labels for i in decided], [preds[i].labels for i in decided]),
    }
    out["dev_f1"], out["dev_image_decided_f1"] = out["dev"]["f1"], out["dev_image_decided"]["f1"]
    if tagger.config.text_only:
        return out
    for name, keep in (("orig_only", {"sources": ["orig"]}), ("no_image", {"text_only": True})):  # production inputs
        masked = tagger.predict([t.words for t in dev], feats, batch_size=64, **keep)
        out[f"dev_f1_{name}"] = entity_scores([t.labels for t in dev], [p.labels for p in masked])["f1"]
    return (out | routing_probe(dev, preds, feats, cues, tagger.config.visual.sources)
            | occlusion_probe(tagger, dev, preds, feats, cues))

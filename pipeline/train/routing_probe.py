"""Routing probe on the generated sample: does an entity's routing point at the one visual source showing its cue?

Cue source x argmax source counts over image-decided gold entities, and how many routing triples are quarter-valued.
"""
from __future__ import annotations

from collections import Counter, defaultdict
from typing import Any, Sequence

from rpihmif.labels import bio_spans
from rpihmif.predictor import Prediction
from rpihmif.visual import SOURCES

__all__ = ["routing_probe", "quarter_valued", "present_sources"]


def present_sources(feat: dict | None, used: Sequence[str]) -> list[str]:
    """The used visual sources that have at least one real (unmasked) view in a cached feature dict."""
    if feat is None:
        return []
    return [s for s in used if feat.get(f"{s}_mask") is not None and bool(feat[f"{s}_mask"].any())]


def quarter_valued(routing: dict[str, float], tol: float = 0.01) -> bool:
    """All three source shares within `tol` of a multiple of 0.25 (a head count rather than a graded share)."""
    return all(abs(4 * v - round(4 * v)) <= 4 * tol for v in routing.values())


def routing_probe(tweets: Sequence[Any], preds: Sequence[Prediction], feats: Sequence[dict | None],
                  cues: dict[str, dict[str, str]], sources: Sequence[str]) -> dict[str, Any]:
    """{"routing": ...} for a model using more than one source, else {}.

    tweets: gold tweets (image_id, labels); preds and feats: their predictions and cached features; cues:
    sample_cues.json ({image_id: {"type", "cue_source"}}). Scored: image-decided gold entities predicted with the
    exact span and type whose cue source the model sees. quarter_valued: % of every predicted entity with routing.
    """
    used = [s for s in SOURCES if s in sources]
    if len(used) < 2:
        return {}
    hits, total, chance_sum, no_routing = 0, 0, 0.0, 0
    confusion: dict[str, Counter] = defaultdict(Counter)
    mass_on_cue: list[float] = []
    for tweet, pred, feat in zip(tweets, preds, feats):
        cue = cues.get(tweet.image_id)
        present = present_sources(feat, used)
        if cue is None or cue["cue_source"] not in present:
            continue  # text-decided, or the cue source is not visible to this model
        by_span = {(e.start, e.end): e for e in pred.entities}
        for etype, start, end in bio_spans(tweet.labels):
            ent = by_span.get((start, end))
            if ent is None or ent.type != etype:
                continue
            if ent.routing is None:
                no_routing += 1
                continue
            mass = {s: ent.routing[s] for s in present}
            best = max(mass, key=mass.get)
            total += 1
            hits += best == cue["cue_source"]
            chance_sum += 1.0 / len(present)
            confusion[cue["cue_source"]][best] += 1
            mass_on_cue.append(ent.routing[cue["cue_source"]] / max(sum(mass.values()), 1e-9))
    routed = [e.routing for p in preds for e in p.entities if e.routing is not None]
    return {"routing": {
        "entities": total,
        "accuracy": round(100 * hits / total, 2) if total else None,
        "chance": round(100 * chance_sum / total, 2) if total else None,
        "mean_mass_on_cue_source": round(100 * sum(mass_on_cue) / len(mass_on_cue), 2) if mass_on_cue else None,
        "argmax_by_cue_source": {k: dict(v) for k, v in sorted(confusion.items())},
        "without_routing": no_routing,
        "routed_entities": len(routed),  # every predicted entity with routing (all tweets with an image)
        "quarter_valued": round(100 * sum(map(quarter_valued, routed)) / len(routed), 2) if routed else None,
    }}

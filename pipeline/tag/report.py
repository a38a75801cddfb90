"""HTML report of a tag-corpus output: charts of the whole dataset, top entities per type, a seeded random sample of
tweets as cards (text, image and crops, routing per entity) and the least confident tweets.

Rendered from templates/report.html.j2 with jinja2 autoescape (every value read back from Parquet is escaped; the
charts are inline SVG built by report_charts) and written atomically with cache.durable (never through a link planted
at `_report.html`). The page has no script and loads nothing: images are data URIs.
"""
from __future__ import annotations

import logging
import math
import os
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import jinja2

from cache.durable import atomic_write_text, refuse_link
from exit_codes import PipelineError, UsageError
from pipeline.tag.report_charts import Bar, Series, bar_chart, histogram, share_bar, stacked_bars
from pipeline.tag.report_data import Parts, fetch_rows, find_parts, read_output_state
from pipeline.tag.report_images import RowImages
from pipeline.tag.report_stats import BINS, ROUTING, Aggregates, aggregate

__all__ = ["write_report", "REPORT_NAME"]

log = logging.getLogger("rpihmif.report")

REPORT_NAME = "_report.html"  # beside OUT/data/, with the manifest and rejects
COLOURS = {"PER": "#f4a6a6", "LOC": "#9fd8a8", "ORG": "#9cc3f0", "MISC": "#f3d38b"}
_OTHER_COLOURS = ("#c9b3e6", "#b8d8d8", "#e6c3a8", "#d0d0d0")  # types beyond the four
SOURCES = (("routing_orig", "original image", "#5b7fd0"), ("routing_grounding", "grounding crops", "#e39a4b"),
           ("routing_rcnn", "RCNN crops", "#8a6bc7"))
LEGEND_SHORT = ("Routing share: how much of an entity's visual evidence came from each visual source; the three "
                "shares sum to 1. Only tweets tagged with their image have routing.")
LEGEND = ("Each visual capsule pools every source's tokens on its own, then mixes the source summaries with a softmax "
          "over the sources; a source's share of the capsule is the size of its term in the capsule's update (mix "
          "weight x norm of its summary through the output projection), so a source mixed in that carries little gets "
          "little. An entity's share is that averaged over the capsules with the IFFE fusion's coupling mass of the "
          "entity's words, then over its words. The shares are graded, not a count of attention heads. On the "
          "generated sample, where exactly one source shows each image-decided entity's type, the largest share is on "
          "that source for 100% of entities (3 training seeds). Models trained without him.source_attention (one "
          "attention over all tokens) show the heads' averaged attention mass instead: it tends to sit on multiples of "
          "1/heads (0.25 for 4 heads) and pointed at the cue source for 77-79%.")
_MAX_TEXT = 2000  # characters of a tweet shown
_ENCODER_KEYS = ("encoder_fingerprint", "encoder", "fingerprint", "vision_encoder")


def _colour(etype: str, order: list[str]) -> str:
    if etype in COLOURS:
        return COLOURS[etype]
    others = [t for t in order if t not in COLOURS]
    return _OTHER_COLOURS[others.index(etype) % len(_OTHER_COLOURS)] if etype in others else "#ddd"


def _num(v: Any) -> str:
    return f"{v:.2f}" if isinstance(v, (int, float)) and math.isfinite(v) else "–"


def _short(v: Any, n: int = 200) -> str:
    """A value as text of at most n characters (a crafted megabyte-long id or entity stays readable)."""
    text = "" if v is None else str(v)
    return text if len(text) <= n else text[:n] + "…"


def _pct(n: int, d: int) -> str:
    return f"{100 * n / d:.0f}%" if d else "–"


def _utc(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def _segments(text: str, entities: list[dict[str, Any]], order: list[str]) -> list[dict[str, Any]]:
    """The tweet cut into plain pieces and entity pieces (type, score, colour); bad or overlapping spans are skipped."""
    text = text[:_MAX_TEXT]
    pieces, pos = [], 0
    spans = [e for e in entities if isinstance(e.get("start_char"), int) and isinstance(e.get("end_char"), int)]
    for ent in sorted(spans, key=lambda e: e["start_char"]):
        s, e = ent["start_char"], ent["end_char"]
        if s < pos or e <= s or e > len(text):
            continue
        etype = str(ent.get("type"))
        pieces += [{"text": text[pos:s]}, {"text": text[s:e], "type": etype, "score": ent.get("score"),
                                           "colour": _colour(etype, order)}]
        pos = e
    return pieces + [{"text": text[pos:]}]


def _routed(ent: dict[str, Any]) -> dict[str, Any]:
    """An entity's routing strip: the share bar and its largest source."""
    shares = [ent.get(k) if isinstance(ent.get(k), (int, float)) else None for k, _, _ in SOURCES]
    finite = [v if v is not None and math.isfinite(v) else 0.0 for v in shares]
    top = max(range(len(SOURCES)), key=lambda i: finite[i])
    total = sum(finite) or 1.0
    label = f"{_short(ent.get('text'), 60)} ({_short(ent.get('type'), 20)})"
    return {"text": ent.get("text"), "type": ent.get("type"), "top": SOURCES[top][1], "top_share": finite[top] / total,
            "bar": share_bar(shares, [n for _, n, _ in SOURCES], [c for _, _, c in SOURCES], label)}


def _tweet(row: dict[str, Any], images: RowImages, order: list[str], least: float | None = None) -> dict[str, Any]:
    ents = [e for e in row.get("entities") or [] if isinstance(e, dict)]
    source = row.get("source") or row.get("_part")
    where = f"{source}:{row['line']}" if row.get("line") is not None else str(source)
    name = f"{os.path.basename(str(source))}:{row['line']}" if row.get("line") is not None else os.path.basename(
        str(source))
    thumbs = images.thumbs(row)
    return {"id": row.get("id"), "where": where, "where_short": name, "image_used": bool(row.get("image_used")),
            "least": least, "segments": _segments(str(row.get("text") or ""), ents, order),
            "routed": [_routed(e) for e in ents if e.get("routing_orig") is not None],
            "image": next((t for t in thumbs if t.kind == "image"), None),
            "crops": [t for t in thumbs if t.kind != "image"]}


def _checkpoint_encoder(load_path: str) -> str | None:
    """The encoder fingerprint recorded in a checkpoint's config (either checkpoint format), or None."""
    from rpihmif.checkpoint import read_checkpoint_config

    try:
        config, _ = read_checkpoint_config(load_path)  # checks is_file first: never opens a FIFO
    except (PipelineError, OSError, ValueError, RecursionError):
        return None
    if config.text_only:
        return "none: text-only model"
    return config.visual.fingerprint or None


def _encoders(parts: Parts, entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Encoders named by the part footers, else by the checkpoints the manifest names; random-init ones flagged."""
    found: dict[str, str] = {}
    for key in _ENCODER_KEYS:
        for value, n in parts.meta.get(key, {}).items():
            found[value] = f"{n} part(s)"
    if not found:
        paths = {e["load_path"] for e in entries if isinstance(e.get("load_path"), str)}
        for path in sorted(paths)[:5]:
            fp = _checkpoint_encoder(path)
            if fp:
                found[fp] = f"from the checkpoint {path}"
    return [{"name": v, "where": where, "random": v.startswith("rand-") or "random" in v.lower()}
            for v, where in sorted(found.items())]


def _tagged(a: Aggregates, parts: Parts) -> str:
    if a.tagged is not None:
        lo, hi = (_utc(v.timestamp()) if isinstance(v, datetime) and v.tzinfo else
                  v.isoformat() if hasattr(v, "isoformat") else str(v) for v in a.tagged)
        return f"{lo} to {hi} (tagged_at column)"
    lo, hi = parts.mtimes
    return f"{_utc(lo)} to {_utc(hi)} (part file times; the parts have no tagged_at column)"


def _charts(a: Aggregates, rejects: list[tuple[str, int]], order: list[str]) -> dict[str, Any]:
    """The page's charts (inline SVG, None when there is nothing to draw)."""
    types = [(t, a.types[t]) for t in order]
    charts: dict[str, Any] = {"types": None, "scores": None, "routing": None, "rejects": None}
    if types:
        charts["types"] = bar_chart([Bar(t, v["n"], _colour(t, order), f"{t}: {v['n']} entities, mean score "
                                         f"{_num(v['sum'] / v['scored'] if v['scored'] else None)} (min "
                                         f"{_num(v['min'])}, max {_num(v['max'])})") for t, v in types],
                                    "Entities per type", "entities")
        charts["scores"] = histogram([i / BINS for i in range(BINS + 1)],
                                     [Series(t, a.hist.get(t, [0] * BINS), _colour(t, order)) for t, _ in types],
                                     "Entity scores (stacked by type)", "entity score (confidence)", "entities")
    img_ent = a.with_image_entities
    txt_ent = a.with_entities - img_ent
    charts["images"] = stacked_bars(
        ["tagged with image", "text only"],
        [Series("with entities", [img_ent, txt_ent], "#5b9b6b"),
         Series("no entity", [a.with_image - img_ent, a.rows - a.with_image - txt_ent], "#cfd8cf")],
        "Tweets with and without their image", "tweets", totals=[f"{a.with_image}", f"{a.rows - a.with_image}"])
    routed = [(t, v) for t, v in types if v["routing_orig_count"]]
    if routed:
        n_all = sum(v["routing_orig_count"] for _, v in routed)
        rows = [("all types", {r: sum(v[f"{r}_sum"] for _, v in routed) / n_all for r in ROUTING}, n_all)]
        rows += [(t, {r: v[f"{r}_sum"] / v[f"{r}_count"] if v[f"{r}_count"] else 0.0 for r in ROUTING},
                  v["routing_orig_count"]) for t, v in routed]
        charts["routing"] = stacked_bars(
            [r[0] for r in rows], [Series(name, [r[1][k] for r in rows], c) for k, name, c in SOURCES],
            "Routing share per visual source, by entity type", "mean share of the entity's visual evidence",
            percent=True, totals=[f"{n} ent." for _, _, n in rows])
    if rejects:
        charts["rejects"] = bar_chart([Bar(r, n, "#d9826b") for r, n in rejects[:12]], "Rejected records per reason",
                                      "records", label_limit=40)
    return charts


def _top_tables(a: Aggregates, order: list[str]) -> list[dict[str, Any]]:
    """One small table per type (most mentioned first): entity, mentions (with a bar), mean score."""
    tables = []
    for t in order:
        rows = a.top.get(t, [])
        if not rows:
            continue
        hi = max(e.n for e in rows)
        v = a.types[t]
        tables.append({"type": t, "colour": _colour(t, order), "n": v["n"],
                       "mean": v["sum"] / v["scored"] if v["scored"] else None,
                       "rows": [{"text": e.text, "n": e.n, "mean": e.mean, "width": max(2, round(60 * e.n / hi)),
                                 "spellings": e.spellings, "forms": ", ".join(f"{f} ({n})" for f, n in e.forms)}
                                for e in rows]})
    return tables


def _env() -> jinja2.Environment:
    loader = jinja2.FileSystemLoader(Path(__file__).with_name("templates"))
    return jinja2.Environment(loader=loader, autoescape=True, undefined=jinja2.StrictUndefined)


def write_report(out_dir: str | os.PathLike, seed: int = 0, sample_size: int = 30, image_sample: int = 12,
                 least: int = 12, top: int = 10, image_root: str | None = None) -> Path:
    """Write `out_dir/_report.html` from the Parquet parts under `out_dir/data/` (manifest and rejects optional).

    `top`: entities listed per type; `image_sample`: extra tweets tagged with their image, beyond the random sample.
    """
    out = Path(out_dir)
    final = out / REPORT_NAME
    refuse_link(final)  # a planted link or non-file at _report.html: exit 2 before any work
    if image_root and not Path(image_root).is_dir():
        raise UsageError(f"--image-root {image_root} is not a folder; give the folder the rows' image paths are "
                         "relative to (or leave it out to use the manifest's)")
    started = time.monotonic()
    state = read_output_state(out)
    parts = find_parts(state)
    a = aggregate(parts.batches(), seed=seed, sample=sample_size, image_sample=image_sample, least=least, top=top)
    agg_s = time.monotonic() - started
    if a.rows == 0:
        log.warning("%s: the Parquet parts hold 0 rows; the report shows only rejects and footers", parts.folder)
    rows = fetch_rows(parts, a.sample + a.image_sample + [r for r, _ in a.least])
    images = RowImages(state, parts, image_root)
    order = [t for t, _ in sorted(a.types.items(), key=lambda kv: (-kv[1]["n"], kv[0]))]
    rejects = state.rejects.most_common()
    models = sorted((parts.meta.get("model_id") or state.model_ids).items())
    footer = [(k, v[:400], n) for k, vals in sorted(parts.meta.items()) for v, n in sorted(vals.items())]
    page = _env().get_template("report.html.j2").render(
        a=a, out=str(out.resolve()), folder=str(parts.folder.resolve()), files=len(parts.files),
        skipped=parts.skipped, models=models, encoders=_encoders(parts, state.entries), tagged=_tagged(a, parts),
        rejects_total=sum(state.rejects.values()), notes=state.notes, charts=_charts(a, rejects, order),
        tops=_top_tables(a, order), sources=SOURCES, legend_short=LEGEND_SHORT, legend=LEGEND, footer=footer,
        seed=seed, sample=[_tweet(rows[r], images, order) for r in a.sample],
        image_sample=[_tweet(rows[r], images, order) for r in a.image_sample], image_extra=image_sample,
        least=[_tweet(rows[r], images, order, score) for r, score in a.least], num=_num, pct=_pct, short=_short)
    atomic_write_text(final, page)
    log.info("report: %s (%d tweets, %d entities, %d part(s); aggregates in %.2fs, page in %.2fs)", final, a.rows,
             a.entities, len(parts.files), agg_s, time.monotonic() - started - agg_s)
    return final

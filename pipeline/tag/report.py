"""HTML report of a tag-corpus output: whole-dataset aggregates, a seeded random sample and the least confident tweets.

Rendered from templates/report.html.j2 with jinja2 autoescape (every value read back from Parquet is escaped) and
written atomically with cache.durable (never through a link planted at `_report.html`).
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
from pipeline.tag.report_data import Parts, fetch_rows, find_parts, read_output_state, reject_reasons
from pipeline.tag.report_images import Thumb, thumbnail
from pipeline.tag.report_stats import BINS, ROUTING, Aggregates, aggregate
from rpihmif.errors import PipelineError, UsageError

__all__ = ["write_report", "REPORT_NAME"]

log = logging.getLogger("rpihmif.report")

REPORT_NAME = "_report.html"  # beside OUT/data/, with the manifest and rejects
COLOURS = {"PER": "#f4a6a6", "LOC": "#9fd8a8", "ORG": "#9cc3f0", "MISC": "#f3d38b"}
SOURCES = (("routing_orig", "original image"), ("routing_grounding", "grounding crops"), ("routing_rcnn", "RCNN crops"))
LEGEND = ("Routing: how much of an entity's visual evidence came from each visual source (the original image, the "
          "visual-grounding crops, the RCNN detector crops). Each visual capsule pools every source's tokens on its "
          "own, then mixes the source summaries with a softmax over the sources; a source's share of the capsule is "
          "the size of its term in the capsule's update (mix weight x norm of its summary through the output "
          "projection), so a source mixed in that carries little gets little. An entity's share is that averaged over "
          "the capsules with the IFFE fusion's coupling mass of the entity's words, then over its words. The three "
          "shares sum to 1 and are graded, not a count of attention heads; only tweets tagged with their image have "
          "routing. On the generated sample, where exactly one source shows each image-decided entity's type, the "
          "largest share is on that source for 100% of entities (3 training seeds). Models trained without "
          "him.source_attention (one attention over all tokens) show the heads' averaged attention mass instead: it "
          "tends to sit on multiples of 1/heads (0.25 for 4 heads) and pointed at the cue source for 77-79%.")
_CROP_KINDS = (("crops", "grounding"), ("rcnn_crops", "RCNN"))
_MAX_CROPS = 3  # per kind, as the model uses
_MAX_TEXT = 2000  # characters of a tweet shown
_THUMB_BUDGET_S = 30.0  # total time for thumbnails; later slots become placeholders
_ENCODER_KEYS = ("encoder_fingerprint", "encoder", "fingerprint", "vision_encoder")


def _num(v: Any) -> str:
    return f"{v:.2f}" if isinstance(v, (int, float)) and math.isfinite(v) else "–"


def _short(v: Any, n: int = 200) -> str:
    """A value as text of at most n characters (a crafted megabyte-long id or entity stays readable)."""
    text = "" if v is None else str(v)
    return text if len(text) <= n else text[:n] + "…"


def _bar(v: Any) -> int:
    return int(60 * min(max(v, 0.0), 1.0)) if isinstance(v, (int, float)) and math.isfinite(v) else 0


def _pct(n: int, d: int) -> str:
    return f"{100 * n / d:.1f}%" if d else "–"


def _utc(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


class _Images:
    """Thumbnails of one page: roots per row, a cache per (root, path, size) and a total time budget."""

    def __init__(self, parts: Parts, manifest: Any, image_root: str | None):
        self.explicit = image_root
        self.by_output: dict[str, str] = {}
        self.by_source: dict[str, str] = {}
        for entry in _manifest_entries(manifest):
            root = entry.get("image_root")
            if isinstance(root, str) and root:
                for key in ("output", "part", "file"):
                    if isinstance(entry.get(key), str):
                        self.by_output[os.path.basename(entry[key])] = root
                for key in ("path", "input", "source"):
                    if isinstance(entry.get(key), str):
                        self.by_source[entry[key]] = root
        self.footer_source = {f.name: src for f, src in zip(parts.files, parts.sources)}
        self.cache: dict[tuple, Thumb] = {}
        self.deadline = time.monotonic() + _THUMB_BUDGET_S

    def root(self, row: dict[str, Any]) -> str | None:
        if self.explicit:
            return self.explicit
        part, source = row.get("_part"), row.get("source")
        footer = self.footer_source.get(part)
        for src in (source, footer):
            if isinstance(src, str) and src in self.by_source:
                return self.by_source[src]
        if part in self.by_output:
            return self.by_output[part]
        for src in (source, footer):  # tag-corpus default: image paths are relative to the dump's folder
            if isinstance(src, str) and src and os.path.isdir(os.path.dirname(src)):
                return os.path.dirname(src)
        return None

    def thumbs(self, row: dict[str, Any]) -> list[Thumb]:
        root = self.root(row)
        slots = [("image", row.get("image"), 150)] if row.get("image") is not None else []
        for column, kind in _CROP_KINDS:
            crops = row.get(column) or []
            slots += [(kind, p, 64) for p in crops[:_MAX_CROPS]]
        out = []
        for kind, rel, size in slots:
            key = (root, rel if isinstance(rel, str) else repr(rel), size, kind)
            if key not in self.cache:
                if time.monotonic() > self.deadline:
                    self.cache[key] = Thumb(kind, str(rel)[:300], reason="thumbnail time budget spent")
                else:
                    self.cache[key] = thumbnail(root, rel, size, kind)
            out.append(self.cache[key])
        return out


def _manifest_entries(manifest: Any) -> list[dict[str, Any]]:
    """Entry dicts of any manifest shape (per input or per chunk, dict or list); [] when absent or odd."""
    if not isinstance(manifest, dict):
        return []
    found = []
    for value in manifest.values():
        items = value.values() if isinstance(value, dict) else value if isinstance(value, list) else []
        found += [e for e in items if isinstance(e, dict)]
    return found


def _segments(text: str, entities: list[dict[str, Any]]) -> list[dict[str, Any]]:
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
                                           "colour": COLOURS.get(etype, "#ddd")}]
        pos = e
    return pieces + [{"text": text[pos:]}]


def _tweet(row: dict[str, Any], images: _Images, least: float | None = None) -> dict[str, Any]:
    ents = [e for e in row.get("entities") or [] if isinstance(e, dict)]
    routed = [{"text": e.get("text"), "type": e.get("type"), "cells": [(e.get(k), f"src-{k[8:]}") for k, _ in SOURCES]}
              for e in ents if e.get("routing_orig") is not None]
    source = row.get("source") or row.get("_part")
    where = f"{source}:{row['line']}" if row.get("line") is not None else str(source)
    return {"id": row.get("id"), "where": where, "image_used": bool(row.get("image_used")), "least": least,
            "segments": _segments(str(row.get("text") or ""), ents), "routed": routed, "thumbs": images.thumbs(row)}


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


def _encoders(parts: Parts, manifest: Any) -> list[dict[str, Any]]:
    """Encoders named by the part footers, else by the checkpoints the manifest names; random-init ones flagged."""
    found: dict[str, str] = {}
    for key in _ENCODER_KEYS:
        for value, n in parts.meta.get(key, {}).items():
            found[value] = f"{n} part(s)"
    if not found:
        paths = {e["load_path"] for e in _manifest_entries(manifest) if isinstance(e.get("load_path"), str)}
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


def _type_rows(a: Aggregates) -> tuple[list[dict], list[dict]]:
    top = max((t["n"] for t in a.types.values()), default=1)
    types, routing = [], []
    for name, t in sorted(a.types.items(), key=lambda kv: (-kv[1]["n"], kv[0])):
        types.append({"type": name, "n": t["n"], "colour": COLOURS.get(name, "#ddd"), "width": int(200 * t["n"] / top),
                      "mean": t["sum"] / t["scored"] if t["scored"] else None, "min": t["min"], "max": t["max"]})
        if t["routing_orig_count"]:
            routing.append({"type": name, "n": t["routing_orig_count"],
                            "cells": [t[f"{r}_sum"] / t[f"{r}_count"] if t[f"{r}_count"] else None for r in ROUTING]})
    return types, routing


def _env() -> jinja2.Environment:
    loader = jinja2.FileSystemLoader(Path(__file__).with_name("templates"))
    return jinja2.Environment(loader=loader, autoescape=True, undefined=jinja2.StrictUndefined)


def write_report(out_dir: str | os.PathLike, seed: int = 0, sample_size: int = 30, image_sample: int = 12,
                 least: int = 12, top: int = 25, image_root: str | None = None) -> Path:
    """Write `out_dir/_report.html` from the Parquet parts in `out_dir/data/` (manifest and rejects optional)."""
    out = Path(out_dir)
    final = out / REPORT_NAME
    refuse_link(final)  # a planted link or non-file at _report.html: exit 2 before any work
    if image_root and not Path(image_root).is_dir():
        raise UsageError(f"--image-root {image_root} is not a folder; give the folder the rows' image paths are "
                         "relative to (or leave it out to use the manifest's)")
    started = time.monotonic()
    parts = find_parts(out)
    a = aggregate(parts.batches(), seed=seed, sample=sample_size, image_sample=image_sample, least=least, top=top)
    agg_s = time.monotonic() - started
    if a.rows == 0:
        log.warning("%s: the Parquet parts hold 0 rows; the report shows only rejects and footers", parts.folder)
    rows = fetch_rows(parts, a.sample + a.image_sample + [r for r, _ in a.least])
    manifest, manifest_note = read_output_state(out)
    reasons, rejects_note = reject_reasons(out)
    images = _Images(parts, manifest, image_root)
    types, routing = _type_rows(a)
    models = sorted(parts.meta.get("model_id", {}).items())
    footer = [(k, v[:400], n) for k, vals in sorted(parts.meta.items()) for v, n in sorted(vals.items())]
    page = _env().get_template("report.html.j2").render(
        a=a, out=str(out.resolve()), folder=str(parts.folder.resolve()), files=len(parts.files),
        skipped=parts.skipped, models=models, encoders=_encoders(parts, manifest), tagged=_tagged(a, parts),
        rejects=reasons.most_common(), rejects_total=sum(reasons.values()), notes=[n for n in (manifest_note,
        rejects_note) if n], types=types, routing=routing, hist=sorted(a.hist.items()), sources=SOURCES,
        bins=[f"{i / BINS:.1f}" for i in range(BINS)], legend=LEGEND, footer=footer, seed=seed,
        sample=[_tweet(rows[r], images) for r in a.sample],
        image_sample=[_tweet(rows[r], images) for r in a.image_sample],
        least=[_tweet(rows[r], images, score) for r, score in a.least], num=_num, bar=_bar, pct=_pct, short=_short)
    atomic_write_text(final, page)
    log.info("report: %s (%d tweets, %d entities, %d part(s); aggregates in %.2fs, page in %.2fs)", final, a.rows,
             a.entities, len(parts.files), agg_s, time.monotonic() - started - agg_s)
    return final

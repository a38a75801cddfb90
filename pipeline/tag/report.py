"""HTML report of a tag-corpus output folder: one self-contained page (inline CSS, base64 thumbnails).

Counts per type, top entities, score spread, rejects by reason, and a sample of tweets with highlighted
entities; for tweets with an image, the routing mass per visual source of each entity next to the crops.
"""
from __future__ import annotations

import base64
import html
import io
import json
import logging
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any, Iterator

import pyarrow.parquet as pq

from cache.durable import atomic_write_text
from pipeline.io.safe_paths import UnsafePathError, safe_resolve
from pipeline.tag.manifest import REJECTS_NAME, Manifest
from rpihmif.errors import InputError

__all__ = ["write_report", "REPORT_NAME"]

log = logging.getLogger("rpihmif.report")

REPORT_NAME = "_report.html"  # '_' prefix: Parquet readers of the folder skip it
COLOURS = {"PER": "#f4a6a6", "LOC": "#9fd8a8", "ORG": "#9cc3f0", "MISC": "#f3d38b"}
SOURCE_NAMES = (("routing_orig", "original"), ("routing_grounding", "grounding"), ("routing_rcnn", "RCNN"))
_COLUMNS = ["id", "text", "entities", "image_used", "image", "crops", "rcnn_crops"]

CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI","Noto Sans",sans-serif,"Noto Color Emoji","Apple Color Emoji","Segoe UI Emoji";margin:24px auto;max-width:1180px;color:#222;padding:0 16px}
h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:28px 0 8px;border-bottom:1px solid #ddd;padding-bottom:4px}
.meta{color:#666;font-size:12px}.grid{display:flex;gap:24px;flex-wrap:wrap;align-items:flex-start}
table{border-collapse:collapse;font-size:13px}td,th{padding:3px 8px;border-bottom:1px solid #eee;text-align:left;vertical-align:top}
th{background:#f6f6f6}td.n{text-align:right;font-variant-numeric:tabular-nums}
.bar{display:inline-block;height:10px;border-radius:2px;vertical-align:middle}
.tweet{border:1px solid #e3e3e3;border-radius:6px;padding:8px 10px;margin:8px 0;display:flex;gap:14px}
.tweet .body{flex:1;min-width:0;overflow-wrap:anywhere}.tweet .id{color:#888;font-size:11px}
mark{border-radius:3px;padding:0 2px;color:#111}mark sub{font-size:9px;font-weight:600;margin-left:2px;color:#333}
.thumbs img{display:block;border:1px solid #ccc;border-radius:3px;margin:0 0 4px}.thumbs{flex:0 0 auto}
.crops{display:flex;gap:4px;flex-wrap:wrap;max-width:170px}.crops img{margin:0}
.legend span{margin-right:10px}.routing td{font-size:12px}.routing .bar{height:8px}
.src-orig{background:#6a8fd8}.src-grounding{background:#e39a4b}.src-rcnn{background:#8a6bc7}
.muted{color:#888}
"""


def _parts(out: Path) -> Iterator[Path]:
    yield from sorted(p for p in out.glob("*.parquet") if not p.name.startswith((".", "_")))


def _thumb(root: str | None, rel: str | None, size: int) -> str | None:
    """A base64 JPEG data URI of the image at root/rel (inside root only), or None when unreadable."""
    if not root or not rel:
        return None
    try:
        from PIL import Image

        path = safe_resolve(root, rel)
        with Image.open(path) as img:
            img = img.convert("RGB")
            img.thumbnail((size, size))
            buf = io.BytesIO()
            img.save(buf, "JPEG", quality=80)
    except (UnsafePathError, OSError, ValueError) as exc:
        log.debug("no thumbnail for %s: %s", rel, exc)
        return None
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode()


def _highlight(text: str, entities: list[dict[str, Any]]) -> str:
    """The tweet as HTML with each entity in a type-coloured <mark> carrying its type and score."""
    pieces, pos = [], 0
    for ent in sorted(entities, key=lambda e: e["start_char"]):
        s, e = ent["start_char"], ent["end_char"]
        if s < pos:
            continue
        colour = COLOURS.get(ent["type"], "#ddd")
        pieces.append(html.escape(text[pos:s]))
        pieces.append(f'<mark style="background:{colour}" title="{ent["type"]} score {ent["score"]:.3f}">'
                      f'{html.escape(text[s:e])}<sub>{ent["type"]} {ent["score"]:.2f}</sub></mark>')
        pos = e
    pieces.append(html.escape(text[pos:]))
    return "".join(pieces)


def _routing_table(entities: list[dict[str, Any]]) -> str:
    rows = []
    for ent in entities:
        if ent.get("routing_orig") is None:
            continue
        cells = "".join(f'<td class="n">{ent[k]:.2f} <span class="bar src-{k[8:]}" style="width:{60 * ent[k]:.0f}px">'
                        f"</span></td>" for k, _ in SOURCE_NAMES)
        rows.append(f"<tr><td>{html.escape(ent['text'])} <span class='muted'>{ent['type']}</span></td>{cells}</tr>")
    if not rows:
        return ""
    head = "".join(f"<th>{name}</th>" for _, name in SOURCE_NAMES)
    return f'<table class="routing"><tr><th>entity: routing mass</th>{head}</tr>{"".join(rows)}</table>'


class _Stats:
    """Aggregates over all rows in one streaming pass; keeps a bounded sample of tweets."""

    def __init__(self, sample_size: int, image_sample: int):
        self.rows = self.with_image = self.with_entities = 0
        self.types: Counter = Counter()
        self.entities: Counter = Counter()
        self.score_sum: dict[tuple[str, str], float] = defaultdict(float)
        self.bins: dict[str, list[int]] = defaultdict(lambda: [0] * 10)
        self.routing: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0, 0.0, 0.0])
        self.sample: list[tuple[dict, str | None]] = []
        self.image_sample: list[tuple[dict, str | None]] = []
        self.sample_size, self.image_sample_size = sample_size, image_sample

    def add(self, row: dict[str, Any], root: str | None) -> None:
        self.rows += 1
        ents = row["entities"] or []
        self.with_image += bool(row["image_used"])
        self.with_entities += bool(ents)
        for ent in ents:
            key = (ent["text"], ent["type"])
            self.types[ent["type"]] += 1
            self.entities[key] += 1
            self.score_sum[key] += ent["score"]
            self.bins[ent["type"]][min(9, int(ent["score"] * 10))] += 1
            if ent.get("routing_orig") is not None:
                acc = self.routing[ent["type"]]
                for i, (k, _) in enumerate(SOURCE_NAMES):
                    acc[i] += ent[k]
                acc[3] += 1
        if ents and row["image_used"] and len(self.image_sample) < self.image_sample_size:
            self.image_sample.append((row, root))
        elif ents and len(self.sample) < self.sample_size:
            self.sample.append((row, root))


def _read(out: Path, stats: _Stats) -> list[dict[str, Any]]:
    roots = {e.get("output"): e.get("image_root") for e in Manifest(out).entries.values()}
    files = []
    for part in _parts(out):
        pf = pq.ParquetFile(part)
        meta = pf.schema_arrow.metadata or {}
        files.append({"file": part.name, "rows": pf.metadata.num_rows,
                      "model": meta.get(b"rpihmif.model_id", b"?").decode()})
        for batch in pf.iter_batches(batch_size=2048, columns=_COLUMNS):
            for row in batch.to_pylist():
                stats.add(row, roots.get(part.name))
    return files


def _rejects(out: Path) -> Counter:
    reasons: Counter = Counter()
    path = out / REJECTS_NAME
    if path.exists():
        with open(path, encoding="utf-8") as fh:
            for line in fh:
                reason = json.loads(line).get("reason", "?")
                reasons[reason.split(";")[0].split(" (")[0][:80]] += 1
    return reasons


def _tweet_html(row: dict[str, Any], root: str | None) -> str:
    thumbs = ""
    if row["image_used"]:
        img = _thumb(root, row["image"], 160)
        crops = [c for c in (_thumb(root, p, 52) for p in (row["crops"] or []) + (row["rcnn_crops"] or [])) if c]
        crop_html = "".join(f'<img src="{c}" alt="crop">' for c in crops)
        main = f'<img src="{img}" alt="image">' if img else '<div class="muted">image not found</div>'
        thumbs = f'<div class="thumbs">{main}<div class="crops">{crop_html}</div></div>'
    return (f'<div class="tweet">{thumbs}<div class="body"><div class="id">{html.escape(row["id"])}</div>'
            f'<div>{_highlight(row["text"], row["entities"])}</div>{_routing_table(row["entities"])}</div></div>')


def _tables(stats: _Stats, files: list[dict], reasons: Counter, top: int) -> str:
    total = sum(stats.types.values()) or 1
    type_rows = "".join(
        f'<tr><td><span class="bar" style="background:{COLOURS.get(t, "#ddd")};width:12px"></span> {t}</td>'
        f'<td class="n">{n}</td><td><span class="bar" style="background:{COLOURS.get(t, "#ddd")};'
        f'width:{200 * n / total:.0f}px"></span></td></tr>' for t, n in stats.types.most_common())
    top_rows = "".join(f'<tr><td>{html.escape(text)}</td><td>{t}</td><td class="n">{n}</td>'
                       f'<td class="n">{stats.score_sum[(text, t)] / n:.2f}</td></tr>'
                       for (text, t), n in stats.entities.most_common(top))
    hist_rows = "".join(f"<tr><td>{t}</td>" + "".join(f'<td class="n">{c}</td>' for c in stats.bins[t]) + "</tr>"
                        for t in sorted(stats.bins))
    hist_head = "".join(f"<th>{i / 10:.1f}</th>" for i in range(10))
    route_rows = "".join(f"<tr><td>{t}</td>" + "".join(f'<td class="n">{v / acc[3]:.2f}</td>' for v in acc[:3])
                         + f'<td class="n">{int(acc[3])}</td></tr>' for t, acc in sorted(stats.routing.items()))
    route_head = "".join(f"<th>{name}</th>" for _, name in SOURCE_NAMES)
    file_rows = "".join(f'<tr><td>{html.escape(f["file"])}</td><td class="n">{f["rows"]}</td><td>{f["model"]}</td></tr>'
                        for f in files)
    reject_rows = "".join(f'<tr><td>{html.escape(r)}</td><td class="n">{n}</td></tr>' for r, n in reasons.most_common())
    return (f'<div class="grid"><div><h2>Entities per type</h2><table><tr><th>type</th><th>count</th><th></th></tr>'
            f'{type_rows}</table></div><div><h2>Top entities</h2><table><tr><th>entity</th><th>type</th>'
            f'<th>count</th><th>mean score</th></tr>{top_rows}</table></div></div>'
            f'<div class="grid"><div><h2>Score spread (entities per score bin)</h2><table><tr><th>type</th>{hist_head}'
            f'</tr>{hist_rows}</table></div><div><h2>Mean routing mass per source (tweets with an image)</h2><table>'
            f'<tr><th>type</th>{route_head}<th>entities</th></tr>{route_rows}</table></div></div>'
            f'<div class="grid"><div><h2>Files</h2><table><tr><th>part</th><th>rows</th><th>model</th></tr>{file_rows}'
            f'</table></div><div><h2>Rejected records</h2><table><tr><th>reason</th><th>count</th></tr>'
            f'{reject_rows or "<tr><td class=muted>none</td><td></td></tr>"}</table></div></div>')


def write_report(out_dir: str | Path, sample_size: int = 40, image_sample: int = 12, top: int = 25) -> Path:
    """Write `out_dir/_report.html` from the folder's Parquet parts, manifest and rejects; returns its path."""
    out = Path(out_dir)
    if not out.is_dir() or not any(_parts(out)):
        raise InputError(f"{out}: no Parquet parts to report on; run tag-corpus with --out {out} first")
    stats = _Stats(sample_size, image_sample)
    files = _read(out, stats)
    reasons = _rejects(out)
    legend = "".join(f'<span><mark style="background:{c}">{t}</mark></span>' for t, c in COLOURS.items())
    body = (f"<h1>tag-corpus report</h1><div class='meta'>{html.escape(str(out.resolve()))} · {stats.rows} tweets "
            f"in {len(files)} part(s) · {stats.with_entities} with entities · {stats.with_image} tagged with their "
            f"image · {sum(stats.types.values())} entities · {sum(reasons.values())} rejected records</div>"
            f"{_tables(stats, files, reasons, top)}"
            f"<h2>Tweets with an image: entities and routing mass per visual source</h2>"
            f"<div class='legend'>{legend} · routing: share of the fusion's coupling mass from the original image, "
            f"grounding crops and RCNN crops (averaged over the entity's words)</div>"
            + ("".join(_tweet_html(r, root) for r, root in stats.image_sample)
               or "<p class='muted'>no tweet was tagged with a cached image</p>")
            + "<h2>Sample of tweets</h2>"
            + ("".join(_tweet_html(r, root) for r, root in stats.sample) or "<p class='muted'>none</p>"))
    page = (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>tag-corpus report</title>'
            f'<meta name="viewport" content="width=device-width,initial-scale=1"><style>{CSS}</style></head>'
            f"<body>{body}</body></html>\n")
    path = out / REPORT_NAME
    atomic_write_text(path, page)
    log.info("report: %s (%d tweets, %d entities)", path, stats.rows, sum(stats.types.values()))
    return path

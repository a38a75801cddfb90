"""Thumbnails for the report, made safely from image paths read back from Parquet rows, and the image slots of a row.

A path is resolved inside its root (no `..`, absolute path elsewhere or link out), must be a regular file (a FIFO is
never opened) of bounded bytes and pixels (decompression bombs refused from the header); anything else is a placeholder.
"""
from __future__ import annotations

import base64
import io
import logging
import os
import time
import warnings
from dataclasses import dataclass
from typing import Any

from PIL import Image

from pipeline.io.safe_paths import UnsafePathError, safe_resolve
from pipeline.tag.report_data import OutputState, Parts, read_regular

__all__ = ["Thumb", "thumbnail", "RowImages", "MAX_FILE_BYTES", "MAX_PIXELS"]

log = logging.getLogger("rpihmif.report")

MAX_FILE_BYTES = 32 << 20  # larger files are not read
MAX_PIXELS = 25_000_000  # pixels a thumbnail may decode (after JPEG draft scaling); more is refused
_FORMATS = ("JPEG", "PNG", "GIF", "WEBP", "BMP", "TIFF")  # decoders tried; others are refused
_CROP_KINDS = (("crops", "grounding"), ("rcnn_crops", "RCNN"))
_MAX_CROPS = 3  # per kind, as the model uses
_SIZES = {"image": 192, "crop": 96}  # thumbnail pixels (about 1.5x the size shown: sharp on a 2x screen)
_THUMB_BUDGET_S = 30.0  # total time for thumbnails; later slots become placeholders


@dataclass
class Thumb:
    """One image slot of the page: a data URI, or None with the reason shown in its placeholder."""

    kind: str  # "image", "grounding" or "RCNN"
    path: str  # the path as written in the row
    uri: str | None = None
    reason: str = ""
    caption: str = ""  # what the page writes under it: "image", "grounding 1", "RCNN 2"


def _encode(data: bytes, size: int) -> str:
    """A JPEG data URI of at most size x size pixels; ValueError for bombs."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        with Image.open(io.BytesIO(data), formats=_FORMATS) as img:
            img.draft("RGB", (size, size))  # JPEG: decode at down to 1/8 scale, so a big photo stays cheap
            w, h = img.size  # the size that would be decoded (Pillow itself refuses > 89M pixels at open)
            if w * h > MAX_PIXELS:
                raise ValueError(f"decompression bomb refused ({w}x{h} pixels to decode)")
            img.thumbnail((size, size))
            buf = io.BytesIO()
            img.convert("RGB").save(buf, "JPEG", quality=80)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def thumbnail(root: str | None, rel: object, size: int, kind: str) -> Thumb:
    """The thumbnail of the image at `root`/`rel`, or a placeholder Thumb with the reason; never raises."""
    shown = rel if isinstance(rel, str) else repr(rel)
    thumb = Thumb(kind, shown[:300])
    if not isinstance(rel, str) or not rel:
        thumb.reason = "no path"
    elif not root:
        thumb.reason = "image folder unknown (pass --image-root)"
    else:
        try:
            path = safe_resolve(root, rel)
            thumb.uri = _encode(read_regular(path, MAX_FILE_BYTES), size)
        except UnsafePathError:
            thumb.reason = "outside the image folder (refused)"
        except ValueError as exc:
            thumb.reason = str(exc)[:200]
        except (Image.DecompressionBombError, Image.DecompressionBombWarning):
            thumb.reason = "decompression bomb refused"
        except Image.UnidentifiedImageError:
            thumb.reason = "not an image"
        except Exception as exc:  # noqa: BLE001 -- Pillow raises many types on damaged files: a placeholder
            thumb.reason = f"unreadable image ({type(exc).__name__}: {exc})"[:200]
    if thumb.uri is None:
        log.debug("no thumbnail for %r: %s", shown, thumb.reason)
    return thumb


class RowImages:
    """Thumbnails of one page: the image root of each row, a cache per (root, path, size) and a total time budget."""

    def __init__(self, state: OutputState, parts: Parts, image_root: str | None):
        self.explicit = image_root
        self.by_output: dict[str, str] = {}
        self.by_source: dict[str, str] = {}
        for entry in state.entries:
            root = entry.get("image_root")
            if isinstance(root, str) and root:
                for key in ("output", "part", "file"):
                    if isinstance(entry.get(key), str):
                        self.by_output[entry[key]] = self.by_output[os.path.basename(entry[key])] = root
                for key in ("path", "input", "source"):
                    if isinstance(entry.get(key), str):
                        self.by_source[entry[key]] = root
        self.footer_source = dict(zip(parts.names, parts.sources))
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
        for name in (part, os.path.basename(part or "")):
            if name in self.by_output:
                return self.by_output[name]
        for src in (source, footer):  # tag-corpus default: image paths are relative to the dump's folder
            if isinstance(src, str) and src and os.path.isdir(os.path.dirname(src)):
                return os.path.dirname(src)
        return None

    def thumbs(self, row: dict[str, Any]) -> list[Thumb]:
        """The row's image, then up to 3 grounding and 3 RCNN crops, each a thumbnail or a placeholder."""
        root = self.root(row)
        slots = [("image", "image", row.get("image"), _SIZES["image"])] if row.get("image") is not None else []
        for column, kind in _CROP_KINDS:
            crops = row.get(column) or []
            slots += [(kind, f"{kind} {i + 1}", p, _SIZES["crop"]) for i, p in enumerate(crops[:_MAX_CROPS])]
        out = []
        for kind, caption, rel, size in slots:
            key = (root, rel if isinstance(rel, str) else repr(rel), size, kind)
            if key not in self.cache:
                if time.monotonic() > self.deadline:
                    self.cache[key] = Thumb(kind, str(rel)[:300], reason="thumbnail time budget spent")
                else:
                    self.cache[key] = thumbnail(root, rel, size, kind)
            cached = self.cache[key]
            out.append(Thumb(cached.kind, cached.path, cached.uri, cached.reason, caption))
        return out

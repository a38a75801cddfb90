"""Thumbnails for the report, made safely from image paths read back from Parquet rows.

A path is resolved inside its root (no `..`, absolute path elsewhere or link out), must be a regular file (a FIFO is
never opened) of bounded bytes and pixels (decompression bombs refused from the header); anything else is a placeholder.
"""
from __future__ import annotations

import base64
import io
import logging
import warnings
from dataclasses import dataclass

from PIL import Image

from pipeline.io.safe_paths import UnsafePathError, safe_resolve
from pipeline.tag.report_data import read_regular

__all__ = ["Thumb", "thumbnail", "MAX_FILE_BYTES", "MAX_PIXELS"]

log = logging.getLogger("rpihmif.report")

MAX_FILE_BYTES = 32 << 20  # larger files are not read
MAX_PIXELS = 25_000_000  # pixels a thumbnail may decode (after JPEG draft scaling); more is refused
_FORMATS = ("JPEG", "PNG", "GIF", "WEBP", "BMP", "TIFF")  # decoders tried; others are refused


@dataclass
class Thumb:
    """One image slot of the page: a data URI, or None with the reason shown in its placeholder."""

    kind: str  # "image", "grounding" or "RCNN"
    path: str  # the path as written in the row
    uri: str | None = None
    reason: str = ""


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

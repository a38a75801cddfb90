"""Image bytes to an RGB PIL image, the way extract-features decodes them (EXIF rotation, any mode to RGB, JPEG draft).

Model code: the notebook API (`rpihmif.load`) decodes images in-process with it, so its features equal the cache's.
"""
from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

__all__ = ["DEFAULT_MAX_PIXELS", "decode_image"]

DEFAULT_MAX_PIXELS = 89_478_485  # Pillow's own default decompression-bomb limit


def _to_rgb(image: Image.Image) -> Image.Image:
    """Any Pillow mode -> RGB: 16/32-bit scaled to 8 bits, alpha composited over white, CMYK/palette/L converted."""
    mode = image.mode
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        # shape: (H, W) with 16-bit values (mode "I" holds 16-bit PNGs in some Pillow versions)
        arr = np.asarray(image, dtype=np.int64 if mode == "I" else np.uint16).astype(np.float64)
        arr = np.clip(arr / 257.0, 0, 255).round().astype(np.uint8)
        return Image.fromarray(arr, "L").convert("RGB")
    if mode == "F":
        arr = np.clip(np.asarray(image, np.float64), 0, 255).round().astype(np.uint8)
        return Image.fromarray(arr, "L").convert("RGB")
    if mode == "P" and "transparency" in image.info:
        image, mode = image.convert("RGBA"), "RGBA"
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if mode != "RGB":
        return image.convert("RGB")
    return image


def decode_image(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS,
                 draft_size: int | None = None) -> tuple[Image.Image | None, str | None]:
    """Decode bytes to an RGB image (EXIF orientation applied) or (None, reason).

    `draft_size`: let JPEG decode at a reduced scale that still covers that many pixels on the short side.
    """
    if not data:
        return None, "empty"
    Image.MAX_IMAGE_PIXELS = max_pixels if max_pixels and max_pixels > 0 else None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as raw:
                if draft_size and raw.format == "JPEG":
                    w, h = raw.size
                    scale = draft_size / max(1, min(w, h))
                    raw.draft("RGB", (max(1, int(w * scale) + 1), max(1, int(h * scale) + 1)))
                raw.load()
                image = ImageOps.exif_transpose(raw) or raw
                image = _to_rgb(image)
                if image is raw:  # raw is closed when the with-block ends
                    image = raw.copy()
                image.load()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        return None, "decompression_bomb"
    except UnidentifiedImageError:
        return None, "not_an_image"
    except (OSError, SyntaxError, ValueError, EOFError, IndexError, TypeError, MemoryError) as exc:
        text = str(exc).lower()
        if "truncated" in text or isinstance(exc, EOFError) or "ended" in text or "early" in text:
            return None, "truncated"
        return None, "corrupt"
    if image.width < 1 or image.height < 1:
        return None, "corrupt"
    return image, None

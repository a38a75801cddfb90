"""Safe image loading for feature extraction: paths resolved inside their root, bad files rejected with a reason.

Every decodable image comes back as RGB (CMYK, 16-bit, palette, alpha, EXIF rotation handled); the content key is
the SHA-256 of the file's bytes.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import TYPE_CHECKING

from exit_codes import InputError
from pipeline.io.safe_paths import safe_resolve
from rpihmif.image_decode import DEFAULT_MAX_PIXELS, decode_image

if TYPE_CHECKING:
    from PIL import Image

__all__ = ["REJECT_REASONS", "DEFAULT_MAX_PIXELS", "read_image_bytes", "decode_image",
           "load_image", "sha256_bytes"]


# reason code -> what it means (written to rejects.jsonl)
REJECT_REASONS = {
    "unsafe_path": "the path escapes its image root (../, absolute path or symlink); the file was not read",
    "missing": "no such file",
    "not_a_file": "the path is a folder or a special file",
    "unreadable": "the file could not be read (permissions or I/O error)",
    "empty": "the file is 0 bytes",
    "not_an_image": "Pillow does not recognise the bytes as an image",
    "truncated": "the image data ends early",
    "corrupt": "the image data is damaged",
    "decompression_bomb": "the image has more pixels than max_image_pixels (Pillow's decompression-bomb guard)",
    "changed": "the file changed between hashing and decoding; rerun",
}


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def read_image_bytes(root: str | os.PathLike, rel: str | os.PathLike) -> tuple[bytes | None, Path | None, str | None]:
    """(bytes, resolved path, None) or (None, path or None, reason) for a path that is unsafe, missing or empty."""
    try:
        path = safe_resolve(root, rel)
    except InputError:
        return None, None, "unsafe_path"
    if not path.exists():
        return None, path, "missing"
    if not path.is_file():
        return None, path, "not_a_file"
    try:
        data = path.read_bytes()
    except OSError:
        return None, path, "unreadable"
    if not data:
        return None, path, "empty"
    return data, path, None


def load_image(root: str | os.PathLike, rel: str | os.PathLike, max_pixels: int = DEFAULT_MAX_PIXELS,
               draft_size: int | None = None) -> tuple["Image.Image | None", str | None]:
    """Read `rel` inside `root` and decode it: (RGB image, None) or (None, reason code from REJECT_REASONS)."""
    data, _, reason = read_image_bytes(root, rel)
    if data is None:
        return None, reason
    return decode_image(data, max_pixels, draft_size)

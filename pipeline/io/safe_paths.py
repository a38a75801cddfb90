"""Paths read from data files resolved safely inside their root: no `..` escape, absolute path elsewhere or link out.

Every image, crop and dataset path a stage opens goes through `safe_resolve` (UnsafePathError, an InputError, if not).
"""
from __future__ import annotations

import os
from pathlib import Path

from exit_codes import InputError

__all__ = ["UnsafePathError", "safe_resolve"]


class UnsafePathError(InputError):
    """A path that escapes its root (absolute elsewhere, `..`, or a symlink pointing outside)."""


def safe_resolve(root: str | os.PathLike, rel: str | os.PathLike) -> Path:
    """Resolve `rel` (relative, or absolute inside root) against `root`, following symlinks; return the real path.

    Raises UnsafePathError when the result lies outside the real root (`..` escapes, absolute paths elsewhere,
    symlinks pointing outside) or the path is empty or has a NUL byte. The path need not exist.
    """
    rel_s = os.fspath(rel)
    if rel_s == "" or "\x00" in rel_s:
        raise UnsafePathError(f"{root}: empty path or NUL byte in {rel_s!r}; give a file path inside {root}")
    real_root = Path(root).resolve()
    try:
        target = (real_root / rel_s).resolve()
    except (OSError, RuntimeError) as e:  # symlink loop
        raise UnsafePathError(f"{root}: cannot resolve {rel_s!r} ({e}); fix the path or link")
    if target != real_root and real_root not in target.parents:
        raise UnsafePathError(f"path {rel_s!r} resolves to {target}, outside {real_root}; "
                              "keep image and crop paths (and symlinks) inside the dataset folder")
    return target

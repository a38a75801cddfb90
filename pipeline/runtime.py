"""Run-time plumbing shared by the stages: seeding, device choice, and atomic replacement of files and folders.

A folder or file written through `atomic_dir` / `atomic_write_text` is either the old one or the new one, never half.
"""
from __future__ import annotations

import os
import random
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from .errors import UsageError

__all__ = ["seed_everything", "resolve_device", "atomic_dir", "atomic_write_text", "recover_dir", "fsync_path", "naming_path"]


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def resolve_device(name: str) -> torch.device:
    """`auto` -> CUDA when present else CPU; an explicit `cuda` without a GPU is a UsageError."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise UsageError(f"device {name!r} is not a device; use auto, cpu, cuda or cuda:N") from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"device {name!r} asked for but no CUDA GPU is visible; use --set device=cpu")
    return device


def fsync_path(path: Path, directory: bool = False) -> None:
    """fsync a file, or (directory=True) a folder so that renames inside it survive a crash."""
    fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if directory else 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def recover_dir(path: Path) -> None:
    """Finish an interrupted `atomic_dir` swap: bring back `<path>.old` when `path` is missing.

    Temp folders `.<name>.tmp-<pid>` of dead processes (a killed save) are removed.
    """
    old = path.with_name(path.name + ".old")
    if old.exists() and not path.exists():
        old.rename(path)
    elif old.exists():
        shutil.rmtree(old)
    for stale in path.parent.glob(f".{path.name}.tmp-*"):
        pid = stale.name.rsplit("-", 1)[1]
        if pid.isdigit() and int(pid) != os.getpid() and not _pid_alive(int(pid)):
            shutil.rmtree(stale, ignore_errors=True) if stale.is_dir() else stale.unlink(missing_ok=True)


@contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield a temporary sibling folder to fill; on success it replaces `path` in two renames.

    A crash leaves either the previous folder (possibly as `<path>.old`, see `recover_dir`) or the new one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    recover_dir(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        yield tmp
        for f in tmp.iterdir():
            if f.is_file():
                with open(f, "rb+") as fh:
                    os.fsync(fh.fileno())
        old = path.with_name(path.name + ".old")
        if path.exists():
            path.rename(old)
        tmp.rename(path)
        fsync_path(path.parent, directory=True)
        if old.exists():
            shutil.rmtree(old)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


@contextmanager
def naming_path(path: str | Path) -> Iterator[None]:
    """Re-raise an OSError that names no file (ENOSPC from write/fsync) with `path`, so the user knows where."""
    try:
        yield
    except OSError as exc:
        if exc.filename:
            raise
        reason = os.strerror(exc.errno) if exc.errno else str(exc)
        raise OSError(exc.errno, f"{reason} (while writing; free space and rerun)", str(path)) from exc


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write `text` to a temporary sibling, fsync it, then rename it over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)

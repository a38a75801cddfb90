"""How a long stage ends on SIGTERM or a failed write: SIGTERM sets a flag the loop checks at its next boundary, and a
failed save (ENOSPC, EIO, a torch or safetensors write error) becomes one line naming the path and its disk.

Used by train; exit codes: `Terminated` 143 (128 + SIGTERM, as a shell reports a process killed by it), a write 1.
"""
from __future__ import annotations

import logging
import os
import shutil
import signal
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from exit_codes import PipelineError

__all__ = ["Terminated", "StopFlag", "stop_on_sigterm", "write_guard", "disk_of"]

log = logging.getLogger("rpihmif.runtime")


class Terminated(PipelineError):
    """SIGTERM stopped the run at a safe boundary; what was saved stays (exit 143 = 128 + SIGTERM)."""

    exit_code = 143


class StopFlag:
    """`signum` is set by the signal handler; the loop reads it at its boundaries."""

    def __init__(self) -> None:
        self.signum: int | None = None


@contextmanager
def stop_on_sigterm(flag: StopFlag) -> Iterator[StopFlag]:
    """In the block, SIGTERM only sets `flag` (a batch, an evaluation or a save in progress finishes first); the old
    handler is back afterwards. Off the main thread (no signals there) the block runs unchanged."""
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return

    def handler(signum: int, frame: Any) -> None:
        flag.signum = signum

    old = signal.signal(signal.SIGTERM, handler)
    try:
        yield flag
    finally:
        signal.signal(signal.SIGTERM, old)


def disk_of(path: Path) -> str:
    """`mount point (N MiB free of G GiB)` of the file system holding `path` (or its nearest existing parent)."""
    probe = Path(os.path.abspath(path))
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    mount = probe
    while not os.path.ismount(mount) and mount != mount.parent:
        mount = mount.parent
    try:
        usage = shutil.disk_usage(probe)
    except OSError:
        return str(mount)
    return f"{mount} ({usage.free / 2**20:.0f} MiB free of {usage.total / 2**30:.1f} GiB)"


@contextmanager
def write_guard(path: Path, hint: str) -> Iterator[None]:
    """A write of `path` that fails with an OSError, or torch's / safetensors' RuntimeError around one, is a
    PipelineError (exit 1): `path: cannot save (reason) on disk (free); hint`. The writer must leave the previous
    file or folder intact (atomic_dir / atomic_write_text do)."""
    try:
        yield
    except PipelineError:
        raise
    except (OSError, RuntimeError) as exc:
        log.debug("write of %s failed", path, exc_info=True)
        text = str(exc).strip()
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else (
            text.splitlines()[0] if text else type(exc).__name__)
        raise PipelineError(f"{path}: cannot save ({reason[:200]}) on {disk_of(path)}; the previous one is intact: "
                            f"free space there, then {hint}") from exc

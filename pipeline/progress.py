"""Progress and logging for long loops: a tqdm bar on a terminal, plain periodic log lines under cron.

`progress()` wraps an iterable; `setup_logging()` sends log lines to stderr and, optionally, a log file.
"""
from __future__ import annotations

import logging
import sys
import time
from pathlib import Path
from typing import Iterable, Iterator, TypeVar

from tqdm import tqdm

__all__ = ["progress", "setup_logging", "is_terminal"]

T = TypeVar("T")
log = logging.getLogger("rpihmif")


def is_terminal() -> bool:
    return sys.stderr.isatty()


def progress(items: Iterable[T], total: int | None = None, desc: str = "", unit: str = "it",
             every_s: float = 30.0) -> Iterator[T]:
    """Yield from `items`, showing a bar with rate on a terminal or a log line every `every_s` seconds."""
    if is_terminal():
        yield from tqdm(items, total=total, desc=desc, unit=unit, dynamic_ncols=True)
        return
    start = last = time.monotonic()
    done = 0
    for item in items:
        yield item
        done += 1
        now = time.monotonic()
        if now - last >= every_s:
            last = now
            of = f"/{total}" if total else ""
            log.info("%s: %d%s %s (%.1f %s/s)", desc, done, of, unit, done / (now - start), unit)
    if done:
        log.info("%s: %d %s in %.1fs", desc, done, unit, time.monotonic() - start)


def setup_logging(log_file: str | Path | None = None, level: int = logging.INFO) -> None:
    """Log to stderr (and `log_file`, appended) with timestamps; idempotent across calls."""
    root = logging.getLogger()
    root.setLevel(level)
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%Y-%m-%d %H:%M:%S")
    if not any(getattr(h, "_rpihmif", False) for h in root.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(fmt)
        handler._rpihmif = True  # type: ignore[attr-defined]
        root.addHandler(handler)
    if log_file is not None:
        path = Path(log_file).resolve()
        if not any(getattr(h, "baseFilename", None) == str(path) for h in root.handlers):
            path.parent.mkdir(parents=True, exist_ok=True)
            fh = logging.FileHandler(path, encoding="utf-8")
            fh.setFormatter(fmt)
            root.addHandler(fh)

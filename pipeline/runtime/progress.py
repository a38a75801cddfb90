"""Progress and logging for long loops: a tqdm bar on a terminal, plain periodic log lines under cron.

`progress()` wraps an iterable, `Progress` counts batches of n; `setup_logging()` sends log lines to stderr and a file
(and turns transformers / hf-hub bars off off a terminal); `log_error_to_files()` copies a failure into the log files.
"""
from __future__ import annotations

import logging
import os
import sys
import time
from pathlib import Path
from typing import Iterable, Iterator, TypeVar

from tqdm import tqdm

from cache.durable import open_append

__all__ = ["progress", "Progress", "setup_logging", "is_terminal", "quiet_library_bars", "log_error_to_files"]

T = TypeVar("T")
log = logging.getLogger("rpihmif")


def is_terminal() -> bool:
    return sys.stderr.isatty()


class Progress:
    """A count advanced by `update(n)`: a tqdm bar with rate and ETA on a terminal, a log line every `every_s` seconds
    otherwise (count of total, rate, seconds per unit, ETA, and the latest `stats`).

    For loops that finish several units per step (images per batch); `close()` when done.
    """

    def __init__(self, total: int | None = None, desc: str = "", unit: str = "it", every_s: float = 30.0,
                 unit_scale: bool = False):
        self.total, self.desc, self.unit, self.every_s = total, desc, unit, every_s
        self.done = 0
        self.start = self.last = time.monotonic()
        self.bar = tqdm(total=total, desc=desc, unit=unit, dynamic_ncols=True,
                        unit_scale=unit_scale) if is_terminal() else None

    def note(self, text: str) -> None:
        """Text shown after the bar (terminal only), e.g. a second count and its rate."""
        if self.bar is not None:
            self.bar.set_postfix_str(text, refresh=False)

    def update(self, n: int = 1, **stats: object) -> None:
        """Count `n` more units; `stats` (e.g. `loss="0.4210"`) show in the bar's postfix and in the log lines."""
        self.done += n
        if self.bar is not None:
            if stats:
                self.bar.set_postfix(stats, refresh=False)
            self.bar.update(n)
            return
        now = time.monotonic()
        if now - self.last >= self.every_s:
            self.last = now
            log.info("%s", self.line(now, stats))

    def line(self, now: float, stats: dict[str, object] | None = None) -> str:
        """`desc: done/total unit (rate unit/s, s/unit, ETA; stats)`, the plain line logged off a terminal."""
        elapsed = max(now - self.start, 1e-9)
        of = f"/{self.total}" if self.total else ""
        parts = [f"{self.done / elapsed:.1f} {self.unit}/s", f"{elapsed / max(self.done, 1):.2f} s/{self.unit}"]
        if self.total and 0 < self.done < self.total:
            parts.append(f"ETA {_clock(elapsed * (self.total - self.done) / self.done)}")
        parts += [f"{k} {v}" for k, v in (stats or {}).items()]
        return f"{self.desc}: {self.done}{of} {self.unit} ({', '.join(parts)})"

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _clock(seconds: float) -> str:
    """`75` -> `1:15`, `3725` -> `1:02:05` (tqdm's style)."""
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def progress(items: Iterable[T], total: int | None = None, desc: str = "", unit: str = "it",
             every_s: float = 30.0) -> Iterator[T]:
    """Yield from `items`, showing a bar with rate on a terminal or a log line every `every_s` seconds."""
    if is_terminal():
        yield from tqdm(items, total=total, desc=desc, unit=unit, dynamic_ncols=True)
        return
    counter = Progress(total, desc, unit, every_s)
    for item in items:
        yield item
        counter.update()
    if counter.done:
        log.info("%s: %d %s in %.1fs", desc, counter.done, unit, time.monotonic() - counter.start)


class _LinkSafeFileHandler(logging.FileHandler):
    """A FileHandler that appends to a regular file only: a link planted at the log's name is a UsageError."""

    def _open(self):  # noqa: ANN202 -- logging's signature
        return open_append(self.baseFilename, encoding=self.encoding or "utf-8")


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever `sys.stderr` is at emit time (test runners and daemons swap it)."""

    @property  # type: ignore[override]
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


def quiet_library_bars() -> None:
    """No transformers / huggingface_hub progress bars (carriage-return redraws) when stderr is not a terminal; the
    environment variable carries the choice into Ray workers and subprocesses."""
    if is_terminal():
        return
    os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
    import huggingface_hub.utils
    import transformers.utils.logging

    huggingface_hub.utils.disable_progress_bars()
    transformers.utils.logging.disable_progress_bar()


def log_error_to_files(message: str) -> None:
    """Append an ERROR line to every log file set up by `setup_logging` (stderr gets the message separately)."""
    root = logging.getLogger()
    record = root.makeRecord("rpihmif.cli", logging.ERROR, __file__, 0, message, None, None)
    for handler in root.handlers:
        if isinstance(handler, logging.FileHandler):
            handler.handle(record)
            handler.flush()


def setup_logging(log_file: str | Path | None = None, level: int = logging.INFO) -> None:
    """Log to stderr (and `log_file`, appended) with timestamps; idempotent across calls."""
    quiet_library_bars()
    root = logging.getLogger()
    root.setLevel(level)
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%Y-%m-%d %H:%M:%S")
    if not any(isinstance(h, _StderrHandler) for h in root.handlers):
        handler = _StderrHandler()
        handler.setFormatter(fmt)
        root.addHandler(handler)
    if log_file is not None:
        path = Path(log_file).parent.resolve() / Path(log_file).name  # never resolve a link at the log's own name
        if not any(getattr(h, "baseFilename", None) == str(path) for h in root.handlers):
            fh = _LinkSafeFileHandler(path, encoding="utf-8")
            fh.setFormatter(fmt)
            root.addHandler(fh)

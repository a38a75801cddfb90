"""The bookkeeping of one tag-corpus run: counters, chunks in flight per input, reject reasons by kind, and the
progress it shows (a bar on a terminal, a log line every progress_every_s under cron).
"""
from __future__ import annotations

import logging
import re
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from pipeline.runtime.progress import Progress, is_terminal
from pipeline.stage_config import TagConfig
from pipeline.tag.chunks import RawChunk
from pipeline.tag.plan import InputPlan

__all__ = ["InputProgress", "RunState", "reject_kind"]

log = logging.getLogger("rpihmif.tag")


def reject_kind(text: str) -> str:
    """A reject reason without its specifics (numbers, quoted values), to count rejects per kind; never cut inside
    a parenthesis."""
    text = re.sub(r"(?<![\w-])\d+", "N", re.sub(r"'[^']*'|\"[^\"]*\"", "…", text.split(";")[0])).strip()
    if len(text) > 120:
        text = text[:120].rsplit(" ", 1)[0] + " …"
    while text.count("(") > text.count(")"):
        text = text[:text.rindex("(")].rstrip()
    return text


@dataclass
class InputProgress:
    """Per input of this run: chunks in flight, whether reading ended, and whether it changed under the run."""

    plan: InputPlan
    left: int = 0
    read: dict[str, Any] | None = None
    changed: bool = False
    reasons: Counter = field(default_factory=Counter)


class RunState:
    """Counters, progress (a bar on a terminal, log lines otherwise) and the in-flight bookkeeping of one run."""

    def __init__(self, config: TagConfig, todo: list[InputPlan]):
        self.counts: Counter = Counter()
        self.reasons: Counter = Counter()
        self.inflight: dict[str, tuple[InputProgress, RawChunk, float]] = {}
        self.inputs = [InputProgress(p) for p in todo]
        self.total_bytes = sum(p.ident.size for p in todo) or 1
        self.bytes_done = 0
        self.pos: dict[int, int] = {}  # per input: the furthest committed byte offset
        self.in_process = True
        self.start = self.last_log = time.monotonic()
        self.every = float(config.progress_every_s)
        self.worker_cpu = 0.0
        self.commit_s = 0.0  # driver wall time in commits (rename, fsync, commit log)
        self.warm: tuple[float, int] | None = None  # (time, rows) once every worker delivered a chunk
        self.workers = 1
        self.warned = False
        self.bar: Progress | None = None  # made at the first commit, after the start-up log lines
        self.on_terminal = is_terminal()

    def advance(self, nbytes: int) -> None:
        now = time.monotonic()
        elapsed = max(now - self.start, 1e-9)
        if self.on_terminal:
            if self.bar is None:
                self.bar = Progress(self.total_bytes, "tag-corpus", "B", unit_scale=True)
            self.bar.note(f"{self.counts['rows']} records, {self.counts['rows'] / elapsed:.0f} records/s, "
                          f"{self.counts['rejects']} rejects")
            self.bar.update(nbytes)
            return
        if now - self.last_log < self.every:
            return
        self.last_log = now
        frac = min(1.0, self.bytes_done / self.total_bytes)
        eta = f", ETA {elapsed * (1 - frac) / frac:.0f}s" if 0 < frac < 1 else ""
        est = f" of ~{int(self.counts['rows'] / frac)}" if 0 < frac < 1 else ""
        log.info("tagged %d%s records in %d chunks (%.0f records/s, %.0f%% of %.1f MB input)%s",
                 self.counts["rows"], est, self.counts["chunks"], self.counts["rows"] / elapsed, 100 * frac,
                 self.total_bytes / 1e6, eta)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

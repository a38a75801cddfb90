"""Inputs known by content and cut into chunks: sha256 of a dump and of its prefixes (remembered per file stamp in the
commit log, so an unchanged file is never read again), and the raw lines of each chunk.

A chunk is `chunk_records` consecutive lines (a .gz is read in order); the driver only splits lines, workers parse.
"""
from __future__ import annotations

import hashlib
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from exit_codes import InputError
from pipeline.io.dumps import GZIP_ERRORS, open_dump, read_lines, tail_reason

__all__ = ["Identity", "RawChunk", "identify", "read_chunks", "stamp_of"]

_BLOCK = 1 << 20
_RACY_S = 2.0  # a file written this recently may change again within its timestamp's resolution: not remembered


def stamp_of(path: Path) -> tuple[int, int, int, int]:
    """(size, mtime_ns, ctime_ns, inode): changes whenever the file is written or replaced (ctime cannot be set back)."""
    st = os.stat(path)
    return st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino


@dataclass(frozen=True)
class Identity:
    """Content identity of one input file: full sha256 and size, sha256 of its first `n` bytes for asked n, the file's
    stamp when it was hashed, and whether this run read it (False: known from the memo)."""

    sha256: str
    size: int
    prefixes: dict[int, str]
    stamp: tuple[int, int, int, int] = (0, 0, 0, 0)
    read: bool = True


def _hash(path: Path, marks: list[int]) -> tuple[str, int, dict[int, str]]:
    h, pos, prefixes = hashlib.sha256(), 0, {}
    with open(path, "rb") as fh:
        while True:
            while marks and marks[0] == pos:
                prefixes[marks.pop(0)] = h.copy().hexdigest()
            want = min(_BLOCK, marks[0] - pos) if marks else _BLOCK
            block = fh.read(want)
            if not block:
                break
            h.update(block)
            pos += len(block)
    return h.hexdigest(), pos, {n: d for n, d in prefixes.items() if n < pos}


def identify(path: Path, prefix_sizes: set[int] = frozenset(), state: Any = None) -> Identity:
    """Hash `path` once, snapshotting the digest at each of `prefix_sizes` smaller than the file (appended dumps).

    With `state` (the commit log) a file whose stamp is remembered is not read at all; a file that changes while it
    is hashed is hashed again (three times at most, then an InputError).
    """
    key = str(Path(path).resolve())
    for _ in range(3):
        before = stamp_of(path)
        hit = state.memo(key, before) if state is not None else None
        if hit is not None:
            return Identity(hit[0], before[0], hit[1], before, read=False)
        sha, size, prefixes = _hash(path, sorted(n for n in prefix_sizes if 0 < n < before[0]))
        if stamp_of(path) == before and size == before[0]:
            if state is not None and before[1] < (time.time() - _RACY_S) * 1e9:
                state.remember(key, before, sha, prefixes)
            return Identity(sha, size, prefixes, before)
    raise InputError(f"{path}: the file keeps changing while it is read; tag it once it is written completely")


@dataclass
class RawChunk:
    """Lines `first_line..last_line` (1-based) of one input. `lines` holds each line's bytes, None for a line over
    max_record_bytes (its size in `oversize`, by index); `tail` is why a gzip could not be read past the chunk (a
    pseudo-line after the last one). `byte_end` is the file offset after the chunk (the compressed one for .gz)."""

    first_line: int
    last_line: int
    lines: list[bytes | None]
    byte_end: int
    ends_newline: bool
    compressed: bool
    oversize: dict[int, int] = field(default_factory=dict)
    tail: str | None = None


def read_chunks(path: Path, chunk_records: int, max_record_bytes: int,
                done: dict[int, tuple[int, int, bool]], stats: dict[str, Any]) -> Iterator[RawChunk]:
    """Cut `path` into chunks, stepping over `done` ones ({first_line: (last_line, byte_end, ends_newline)}).

    A new chunk stops before the first line of a done chunk, so kept chunks never overlap new ones; a plain file
    seeks over done chunks, a .gz reads through them. At the end `stats` holds `lines` and `ends_newline`. A chunk
    with a cut gzip tail never ends with a newline: it is not done for the completed file that extends it.
    """
    with open_dump(path) as fh:
        compressed = not hasattr(fh, "raw")  # GzipFile vs BufferedReader
        raw = fh.fileobj if compressed else fh  # type: ignore[attr-defined]
        lines = read_lines(fh, max_record_bytes)
        starts = sorted(done)
        line, stats["lines"], stats["ends_newline"] = 0, 0, True
        while True:
            first = line + 1
            if first in done:
                last, byte_end, ends_newline = done[first]
                if not compressed:
                    fh.seek(byte_end)
                    line = last
                else:
                    try:
                        for _ in range(last - line):
                            if next(lines, None) is None:
                                return
                            line += 1
                    except GZIP_ERRORS:
                        return
                stats["lines"], stats["ends_newline"] = line, ends_newline
                continue
            limit = next((s for s in starts if s > first), None)
            n = chunk_records if limit is None else min(chunk_records, limit - first)
            chunk = RawChunk(first, first - 1, [], 0, True, compressed)
            try:
                for raw_line, size in lines:
                    if raw_line is None:
                        chunk.oversize[len(chunk.lines)] = size
                    chunk.lines.append(raw_line)
                    chunk.ends_newline = raw_line is None or raw_line.endswith(b"\n")
                    if len(chunk.lines) >= n:
                        break
            except GZIP_ERRORS as exc:
                chunk.tail, chunk.ends_newline = tail_reason(exc), False
                lines = iter(())
            if not chunk.lines and chunk.tail is None:
                return
            line += len(chunk.lines) + (chunk.tail is not None)
            chunk.last_line, chunk.byte_end = line, raw.tell()
            stats["lines"], stats["ends_newline"] = line, chunk.ends_newline
            yield chunk

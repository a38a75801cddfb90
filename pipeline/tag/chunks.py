"""Inputs known by content and cut into chunks: sha256 of a dump and of its prefixes, and the raw lines of each chunk.

A chunk is `chunk_records` consecutive lines (a .gz is read in order); the driver only splits lines, workers parse.
"""
from __future__ import annotations

import gzip
import hashlib
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from pipeline.io.dumps import _lines, _open

__all__ = ["Identity", "RawChunk", "identify", "read_chunks"]

_BLOCK = 1 << 20


@dataclass(frozen=True)
class Identity:
    """Content identity of one input file: full sha256 and size, plus sha256 of its first `n` bytes for asked n."""

    sha256: str
    size: int
    prefixes: dict[int, str]


def identify(path: Path, prefix_sizes: set[int] = frozenset()) -> Identity:
    """Hash `path` once, snapshotting the digest at each of `prefix_sizes` smaller than the file (appended dumps)."""
    marks = sorted(n for n in prefix_sizes if n > 0)
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
    size = pos
    prefixes = {n: d for n, d in prefixes.items() if n < size}
    return Identity(h.hexdigest(), size, prefixes)


@dataclass
class RawChunk:
    """Lines `first_line..last_line` (1-based) of one input: bytes per line, an int (the size) for an over-long
    line, or a str (the reason) for an unreadable gzip tail; `byte_end` is the file offset after the chunk
    (the compressed offset for .gz)."""

    first_line: int
    last_line: int
    lines: list[bytes | int | str]
    byte_end: int
    ends_newline: bool
    compressed: bool


def read_chunks(path: Path, chunk_records: int, max_record_bytes: int,
                done: dict[int, tuple[int, int, bool]], stats: dict[str, Any]) -> Iterator[RawChunk]:
    """Cut `path` into chunks, stepping over `done` ones ({first_line: (last_line, byte_end, ends_newline)}).

    A new chunk stops before the first line of a done chunk, so kept chunks never overlap new ones; a plain file
    seeks over done chunks, a .gz reads through them. At the end `stats` holds `lines` and `ends_newline`.
    """
    with _open(path) as fh:
        compressed = not hasattr(fh, "raw")  # GzipFile vs BufferedReader
        raw = fh.fileobj if compressed else fh  # type: ignore[attr-defined]
        lines = _lines(fh, max_record_bytes)
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
                    for _ in range(last - line):
                        if next(lines, None) is None:
                            return
                        line += 1
                stats["lines"], stats["ends_newline"] = line, ends_newline
                continue
            limit = next((s for s in starts if s > first), None)
            n = chunk_records if limit is None else min(chunk_records, limit - first)
            chunk: list[bytes | int | str] = []
            ends_newline = True
            try:
                for raw_line, size in lines:
                    chunk.append(raw_line if raw_line is not None else size)
                    ends_newline = raw_line is None or raw_line.endswith(b"\n")
                    if len(chunk) >= n:
                        break
            except EOFError:
                chunk.append("gzip stream ends early (truncated file); the records before it were kept")
                lines = iter(())
            except (gzip.BadGzipFile, zlib.error) as exc:
                chunk.append(f"corrupt gzip data ({exc}); the records before it were kept")
                lines = iter(())
            if not chunk:
                return
            line += len(chunk)
            stats["lines"], stats["ends_newline"] = line, ends_newline
            yield RawChunk(first, line, chunk, raw.tell(), ends_newline, compressed)

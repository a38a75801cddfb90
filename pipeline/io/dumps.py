"""Streaming reader of tweet dumps (JSON Lines, optionally gzip) for tag-corpus and extract-features.

Yields one `DumpRecord` per good line and one `Reject` (file, line, reason) per unusable one, never
holding more than one line in memory; a gzip that ends early keeps the records before the cut.
"""
from __future__ import annotations

import gzip
import hashlib
import json
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Iterator

from exit_codes import InputError

__all__ = ["DumpFields", "DumpRecord", "Reject", "iter_dump", "line_record", "expand_inputs", "DUMP_SUFFIXES",
           "open_dump", "read_lines", "UniqueIds", "duplicate_reject", "tail_reason", "GZIP_ERRORS", "parse_record"]

DUMP_SUFFIXES = (".jsonl", ".jsonl.gz", ".json.gz", ".ndjson", ".ndjson.gz")
_CHUNK = 1 << 16
_BOM = b"\xef\xbb\xbf"
MAX_ID_CHARS = 256


@dataclass(frozen=True)
class DumpFields:
    """The `dump:` section of tag.yaml and extract.yaml: record field names (image, crops and rcnn may be absent or
    null in a record) and the root the records' image paths resolve inside ("" = each dump's folder)."""

    id_field: str = "id"
    text_field: str = "text"
    image_field: str = "image"
    crops_field: str = "crops"
    rcnn_field: str = "rcnn_crops"
    image_root: str = ""


@dataclass
class DumpRecord:
    """One good tweet: `line` is 1-based in the (decompressed) file."""

    file: str
    line: int
    id: str
    text: str
    image: str | None = None
    crops: list[str] = field(default_factory=list)
    rcnn: list[str] = field(default_factory=list)


@dataclass
class Reject:
    """One unusable record (or the truncated tail of a gzip) and why."""

    file: str
    line: int
    reason: str
    id: str | None = None

    def __post_init__(self) -> None:  # an unpaired surrogate in an id must not break the rejects file
        if self.id is not None and _has_surrogate(self.id):
            self.id = self.id.encode("utf-8", "backslashreplace").decode("utf-8")

    def to_json(self) -> dict[str, Any]:
        return {"file": self.file, "line": self.line, "id": self.id, "reason": self.reason}


def expand_inputs(inputs: list[str | Path], exclude: Path | None = None) -> list[Path]:
    """Files as given plus the dump files (by suffix, sorted, recursive) of each folder; duplicates dropped, and any
    file inside `exclude` (an output folder inside its input folder never reads its own files)."""
    found: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found.extend(sorted(p for p in path.rglob("*") if p.is_file() and p.name.endswith(DUMP_SUFFIXES)
                                and not p.name.startswith((".", "_"))))
        elif path.is_file():
            found.append(path)
        else:
            raise InputError(f"{path}: no such file or folder; pass JSONL(.gz) files or folders of them")
    seen: set[Path] = set()
    inside = Path(exclude).resolve() if exclude is not None else None
    kept = []
    for p in found:
        real = p.resolve()
        if real not in seen and (inside is None or not real.is_relative_to(inside)):
            kept.append(p)
        seen.add(real)
    return kept


GZIP_ERRORS = (EOFError, gzip.BadGzipFile, zlib.error)  # what reading a cut or damaged gzip raises


def open_dump(path: Path) -> BinaryIO:
    """The dump's bytes: a gzip (by magic number or suffix) decompressed, else the file as is."""
    with open(path, "rb") as fh:
        magic = fh.read(2)
    if magic == b"\x1f\x8b" or path.name.endswith(".gz"):
        return gzip.open(path, "rb")  # type: ignore[return-value]
    return open(path, "rb")


def read_lines(fh: BinaryIO, max_bytes: int) -> Iterator[tuple[bytes | None, int]]:
    """Yield (line, length); an over-long line yields (None, its length) after being skipped in chunks."""
    while True:
        line = fh.readline(max_bytes + 1)
        if not line:
            return
        if len(line) <= max_bytes or line.endswith(b"\n") and len(line) == max_bytes + 1:
            yield line, len(line)
            continue
        size = len(line)
        while not line.endswith(b"\n"):
            line = fh.readline(_CHUNK)
            if not line:
                break
            size += len(line)
        yield None, size


def tail_reason(exc: BaseException) -> str:
    """The reject reason of a gzip that cannot be read past some line (one of GZIP_ERRORS)."""
    if isinstance(exc, EOFError):
        return "gzip stream ends early (truncated file); the records before it were kept"
    return f"corrupt gzip data ({exc}); the records before it were kept"


class UniqueIds:
    """The duplicate-id rule: the first record of an id is kept, a later one becomes a reject. Ids are held as
    8-byte digests (about 60 bytes of memory per record); `where` names the scope in the reason."""

    def __init__(self, where: str = "this file"):
        self.where = where
        self.seen: set[int] = set()

    @staticmethod
    def digest(rid: str) -> int:
        digest = hashlib.blake2b(rid.encode("utf-8", "surrogatepass"), digest_size=8).digest()
        return int.from_bytes(digest, "big", signed=True)  # signed: what SQLite stores as INTEGER

    def check(self, rec: DumpRecord) -> DumpRecord | Reject:
        """`rec` itself when its id is new, else the duplicate-id reject."""
        d = self.digest(rec.id)
        if d in self.seen:
            return duplicate_reject(rec.file, rec.line, rec.id, self.where)
        self.seen.add(d)
        return rec


def duplicate_reject(name: str, line: int, rid: str, where: str) -> Reject:
    return Reject(name, line, f"duplicate id {rid!r}: an earlier record of {where} has it (ids 1 and \"1\" are the "
                              "same id); the first one is kept", rid)


def _str_list(value: Any) -> list[str] | None:
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return value
    return None


def _has_surrogate(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def parse_record(raw: bytes, name: str, line: int, fields: DumpFields) -> DumpRecord | Reject:
    """Validate one JSON line into a record or a reject whose reason says what is wrong and where."""
    try:
        decoded = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return Reject(name, line, f"invalid UTF-8 at byte {exc.start}; re-encode the dump as UTF-8")
    try:
        obj = json.loads(decoded)
    except json.JSONDecodeError as exc:
        return Reject(name, line, f"bad JSON: {exc.msg} (column {exc.colno})")
    except RecursionError:
        return Reject(name, line, "JSON nested too deeply to read (a tweet record is a flat object)")
    except ValueError as exc:  # e.g. an integer of more than 4300 digits
        return Reject(name, line, f"bad JSON value: {str(exc)[:120]}")
    if not isinstance(obj, dict):
        return Reject(name, line, f"expected a JSON object, got {type(obj).__name__}")
    rid = obj.get(fields.id_field)
    if rid is None:
        return Reject(name, line, f"missing id field {fields.id_field!r}; set id_field to the dump's id key")
    if isinstance(rid, bool) or not isinstance(rid, (str, int)):
        return Reject(name, line, f"id field {fields.id_field!r} must be a string or integer, got {type(rid).__name__}")
    rid = str(rid)  # 1 and "1" are the same tweet id (Twitter's id and id_str); iter_dump rejects a repeat
    if len(rid) > MAX_ID_CHARS:
        return Reject(name, line, f"id of {len(rid)} characters is longer than {MAX_ID_CHARS}")
    text = obj.get(fields.text_field)
    if text is None:
        return Reject(name, line, f"missing text field {fields.text_field!r}; set text_field to the dump's text key", rid)
    if not isinstance(text, str):
        return Reject(name, line, f"text field {fields.text_field!r} must be a string, got {type(text).__name__}", rid)
    if not text.strip():
        return Reject(name, line, "empty text", rid)
    if _has_surrogate(text) or _has_surrogate(rid):
        return Reject(name, line, "invalid UTF-8: unpaired surrogate escape (\\ud8xx) in the text or id", rid)
    image = obj.get(fields.image_field)
    if image is not None and not isinstance(image, str):
        return Reject(name, line, f"image field {fields.image_field!r} must be a path string, got {type(image).__name__}", rid)
    crops, rcnn = _str_list(obj.get(fields.crops_field)), _str_list(obj.get(fields.rcnn_field))
    if crops is None or rcnn is None:
        bad = fields.crops_field if crops is None else fields.rcnn_field
        return Reject(name, line, f"field {bad!r} must be a list of path strings", rid)
    for path in ([image] if image else []) + crops + rcnn:
        if "\x00" in path or _has_surrogate(path):
            return Reject(name, line, f"image or crop path {path[:80]!r} holds a NUL byte or an unpaired surrogate; "
                                      "fix the path", rid)
    return DumpRecord(name, line, rid, text, image or None, crops, rcnn)


def line_record(raw: bytes | None, size: int, name: str, line: int, fields: DumpFields,
                max_record_bytes: int) -> DumpRecord | Reject | None:
    """The record (or reject) of one raw line; None for a blank line. `raw` None means the line was `size` bytes,
    over `max_record_bytes`; a UTF-8 byte-order mark before line 1 is dropped, as some editors write one."""
    if raw is None:
        return Reject(name, line, f"record of {size} bytes is longer than max_record_bytes={max_record_bytes}; "
                                  "raise it with --set max_record_bytes=N")
    if line == 1 and raw.startswith(_BOM):
        raw = raw[len(_BOM):]
    return parse_record(raw, name, line, fields) if raw.strip() else None


def iter_dump(path: Path, fields: DumpFields = DumpFields(), max_record_bytes: int = 100_000,
              name: str | None = None, unique_ids: bool = True) -> Iterator[DumpRecord | Reject]:
    """Stream records and rejects of one JSONL(.gz) file; blank lines are skipped silently.

    `name` is what records and rejects report as their file (default: the path as given). Ids are strings: 1 and
    "1" are the same id; with `unique_ids` a repeated id in the file is a reject (the first record is kept).
    """
    name = name or str(path)
    line = 0
    ids = UniqueIds() if unique_ids else None
    try:
        with open_dump(path) as fh:
            for raw, size in read_lines(fh, max_record_bytes):
                line += 1
                rec = line_record(raw, size, name, line, fields, max_record_bytes)
                if rec is not None:
                    yield ids.check(rec) if ids is not None and isinstance(rec, DumpRecord) else rec
    except GZIP_ERRORS as exc:
        yield Reject(name, line + 1, tail_reason(exc))

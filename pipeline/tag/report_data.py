"""What the report reads from a tag-corpus output: the Parquet parts (as one pyarrow dataset), their footers, the
optional manifest and the rejects, each read defensively (regular files only, never a FIFO, damage noted not raised).

`read_output_state` is the one function that knows where an output records its state (part list, rejects, model ids);
the rest reads only what it returns.
"""
from __future__ import annotations

import json
import os
import stat
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from exit_codes import UsageError
from pipeline.tag.manifest import MANIFEST_NAME, REJECTS_NAME, STATE_NAME, data_folder, read_state
from pipeline.tag.report_stats import AGG_COLUMNS

__all__ = ["OutputState", "read_output_state", "Parts", "find_parts", "read_regular", "read_json_file",
           "reject_reasons", "fetch_rows", "DISPLAY_COLUMNS"]

DISPLAY_COLUMNS = ("id", "text", "entities", "image_used", "image", "crops", "rcnn_crops", "source", "line",
                   "model_id", "tagged_at")
_META_PREFIX = b"rpihmif."
_MAX_META_VALUES = 20  # distinct footer values kept per key
_MAX_REASONS = 200  # distinct reject reasons kept; the rest are counted together
_MAX_JSON_BYTES = 64 << 20
_REQUIRED = {"text": pa.types.is_string, "type": pa.types.is_string, "score": pa.types.is_floating}


@dataclass
class OutputState:
    """What a tag-corpus output says about itself: its part files, its rejects and what produced each chunk."""

    out: Path
    folder: Path  # the data folder the parts sit under (a hive layout: data/dt=YYYY-MM-DD/*.parquet)
    parts: list[Path] = field(default_factory=list)  # candidate part files, sorted by path under `folder`
    rejects: Counter = field(default_factory=Counter)  # reason (up to its first ';' or ' (') -> records
    entries: list[dict[str, Any]] = field(default_factory=list)  # per input or chunk: image_root, load_path, ...
    model_ids: Counter = field(default_factory=Counter)  # model id -> chunks that recorded it
    notes: list[str] = field(default_factory=list)  # optional state present but unusable (shown on the page)


def read_output_state(out: str | os.PathLike) -> OutputState:
    """The state of output `out`: Parquet files under out/data/ (or `out` itself for an older output; any depth,
    hidden and '_' names skipped as Parquet readers do), the commit log's (or an old `_manifest.json`'s) entries and `_rejects.jsonl` reasons."""
    out = Path(out)
    if not out.is_dir():
        raise UsageError(f"{out}: no such output folder; pass the --out folder of a tag-corpus run")
    folder = data_folder(out) if data_folder(out).is_dir() else out
    state = OutputState(out, folder, parts=_parquet_files(folder))
    manifest, note = _state_dicts(out)
    state.entries = _manifest_entries(manifest)
    state.model_ids = Counter(e["model_id"] for e in state.entries if isinstance(e.get("model_id"), str))
    state.rejects, rejects_note = reject_reasons(out)
    state.notes = [n for n in (note, rejects_note) if n]
    return state


def _state_dicts(out: Path) -> tuple[Any, str | None]:
    """(the output's state as dicts or None, a note when present but unusable): the commit log (`_state.sqlite`),
    else a version-2 `_manifest.json` not yet migrated; optional metadata, never fatal."""
    try:
        dicts = read_state(out, limit=20_000)
    except Exception as exc:  # noqa: BLE001 -- damaged or crafted state: the report goes on without it
        return None, f"{out / STATE_NAME}: unreadable ({str(exc)[:200]}); ignored"
    return (dicts, None) if dicts is not None else read_json_file(out)


def _parquet_files(folder: Path) -> list[Path]:
    """`*.parquet` under `folder` at any depth (folder links not followed), skipping '.' and '_' names."""
    found = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith((".", "_")))
        found += [Path(root) / f for f in files if f.endswith(".parquet") and not f.startswith((".", "_"))]
    return sorted(found, key=lambda p: p.relative_to(folder).parts)


def _manifest_entries(manifest: Any) -> list[dict[str, Any]]:
    """Entry dicts of any manifest shape (per input or per chunk, dict or list); [] when absent or odd."""
    if not isinstance(manifest, dict):
        return []
    found = []
    for value in manifest.values():
        items = value.values() if isinstance(value, dict) else value if isinstance(value, list) else []
        found += [e for e in items if isinstance(e, dict)]
    return found


@dataclass
class Parts:
    """The readable parts of a data folder, in name order, and what was set aside (name, reason)."""

    folder: Path
    files: list[Path] = field(default_factory=list)
    names: list[str] = field(default_factory=list)  # path under `folder` per file (`dt=2026-01-02/part.parquet`)
    rows: list[int] = field(default_factory=list)  # footer row count per file
    sources: list[str | None] = field(default_factory=list)  # footer `rpihmif.source` (the input) per file
    schema: pa.Schema | None = None  # unified schema of the readable parts
    skipped: list[tuple[str, str]] = field(default_factory=list)
    meta: dict[str, Counter] = field(default_factory=dict)  # footer key (without prefix) -> value -> files
    mtimes: tuple[float, float] | None = None
    scanned: list[int] = field(default_factory=list)  # rows per file as `batches` read them

    def dataset(self) -> ds.Dataset:
        return ds.dataset([str(f) for f in self.files], format="parquet", schema=self.schema)

    def batches(self, batch_size: int = 65_536) -> Iterator[pa.RecordBatch]:
        """Record batches of the aggregation columns, file by file in name order, rows in file order."""
        cols = [c for c in AGG_COLUMNS if c in self.schema.names and _aggregable(c, self.schema.field(c).type)]
        self.scanned = [0] * len(self.files)
        for i, frag in enumerate(self.dataset().get_fragments()):
            assert Path(frag.path) == self.files[i], (frag.path, self.files[i])  # global row index = file order
            for batch in frag.to_batches(schema=self.schema, columns=cols, batch_size=batch_size):
                self.scanned[i] += batch.num_rows
                yield batch


def _aggregable(name: str, typ: pa.DataType) -> bool:
    """Whether the pass can read column `name` (a tagged_at of another type, say a crafted list, is left out)."""
    if name == "tagged_at":
        return pa.types.is_temporal(typ) or pa.types.is_string(typ) or pa.types.is_integer(typ)
    return True


def _regular(path: Path) -> os.stat_result | None:
    """stat (following links) of `path` when it is a regular file, else None; never opens it."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st if stat.S_ISREG(st.st_mode) else None


def _entities_ok(schema: pa.Schema) -> str | None:
    """Why `schema` is not a tag-corpus part schema the report can aggregate, or None when it is."""
    for name in ("entities", "image_used"):
        if name not in schema.names:
            return f"no {name!r} column"
    etype = schema.field("entities").type
    if not (pa.types.is_list(etype) or pa.types.is_large_list(etype)) or not pa.types.is_struct(etype.value_type):
        return f"'entities' is {etype}, expected list<struct<text, type, score, ...>>"
    struct = etype.value_type
    for name, ok in _REQUIRED.items():
        idx = struct.get_field_index(name)
        if idx < 0 or not ok(struct.field(idx).type):
            return f"entity field {name!r} missing or of the wrong type"
    if not pa.types.is_boolean(schema.field("image_used").type):
        return "'image_used' is not boolean"
    return None


def _footer_meta(parts: Parts, schema: pa.Schema) -> None:
    for key, value in (schema.metadata or {}).items():
        if key.startswith(_META_PREFIX):
            name = key[len(_META_PREFIX):].decode("utf-8", "replace")[:80]
            values = parts.meta.setdefault(name, Counter())
            text = value.decode("utf-8", "replace")
            if text in values or len(values) < _MAX_META_VALUES:
                values[text] += 1
            else:
                values["(other values)"] += 1


def find_parts(state: OutputState | str | os.PathLike) -> Parts:
    """The readable parts among `state.parts` (of an output folder's state when given a path), with their footers;
    UsageError if none."""
    state = state if isinstance(state, OutputState) else read_output_state(state)
    folder = state.folder
    parts = Parts(folder)
    times: list[float] = []
    for path in state.parts:
        name = path.relative_to(folder).as_posix()
        st = _regular(path)
        if st is None:
            parts.skipped.append((name, "not a regular file (or a dangling link)"))
            continue
        try:
            pf = pq.ParquetFile(path)
            schema, rows = pf.schema_arrow, pf.metadata.num_rows
        except Exception as exc:  # noqa: BLE001 -- any Arrow/OS error: the part is reported, not fatal
            parts.skipped.append((name, f"not a readable Parquet file ({type(exc).__name__}: {exc})"[:300]))
            continue
        why = _entities_ok(schema)
        try:
            unified = schema if parts.schema is None else pa.unify_schemas([parts.schema, schema.remove_metadata()])
        except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
            why = why or f"schema conflicts with the other parts ({exc})"[:300]
        if why:
            parts.skipped.append((name, why))
            continue
        parts.schema = unified.remove_metadata()
        parts.files.append(path)
        parts.names.append(name)
        parts.rows.append(rows)
        source = (schema.metadata or {}).get(_META_PREFIX + b"source")
        parts.sources.append(source.decode("utf-8", "replace") if source else None)
        times.append(st.st_mtime)
        _footer_meta(parts, schema)
    if not parts.files:
        why = "; ".join(f"{n}: {r}" for n, r in parts.skipped[:5])
        raise UsageError(f"{folder}: no readable Parquet parts to report on{' (' + why + ')' if why else ''}; "
                         f"run tag-corpus with --out {state.out} first")
    parts.mtimes = (min(times), max(times))
    return parts


def read_regular(path: str | os.PathLike, max_bytes: int) -> bytes:
    """The bytes of a regular file of at most max_bytes; ValueError with a short reason otherwise (a FIFO or device
    is never opened for reading, so nothing blocks)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise ValueError("missing file") from None
    if not stat.S_ISREG(st.st_mode):
        raise ValueError("not a regular file")
    if st.st_size > max_bytes:
        raise ValueError(f"file over {max_bytes >> 20} MiB")
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC)  # path is resolved: no link
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):  # swapped since the stat
            raise ValueError("not a regular file")
        with os.fdopen(fd, "rb", closefd=False) as fh:
            data = fh.read(max_bytes + 1)
    finally:
        os.close(fd)
    if len(data) > max_bytes:
        raise ValueError(f"file over {max_bytes >> 20} MiB")
    return data


def read_json_file(out: Path, name: str = MANIFEST_NAME) -> tuple[Any, str | None]:
    """(parsed JSON or None, note when present but unusable) of `out/name`: optional metadata, never fatal."""
    path = Path(out) / name
    if not path.exists() and not path.is_symlink():
        return None, None
    try:
        return json.loads(read_regular(path, _MAX_JSON_BYTES).decode("utf-8")), None
    except (OSError, ValueError, RecursionError) as exc:
        return None, f"{path}: unreadable ({exc}); ignored"


def _reason(line: bytes) -> str:
    try:
        rec = json.loads(line)
        reason = str(rec.get("reason", "?")) if isinstance(rec, dict) else "?"
    except (ValueError, RecursionError):
        return "(damaged line in the rejects file)"
    return reason.split(";")[0].split(" (")[0][:120] or "?"


def reject_reasons(out: Path) -> tuple[Counter, str | None]:
    """Reject counts per reason (text up to the first ';' or ' (') from `out/_rejects.jsonl`, streamed line by line."""
    path = Path(out) / REJECTS_NAME
    reasons: Counter = Counter()
    if not path.exists() and not path.is_symlink():
        return reasons, None
    if _regular(path) is None:
        return reasons, f"{path}: not a regular file; ignored"
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    with os.fdopen(fd, "rb") as fh:
        if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):
            return reasons, f"{path}: not a regular file; ignored"
        for line in fh:
            if line.strip():
                r = _reason(line)
                reasons[r if r in reasons or len(reasons) < _MAX_REASONS else "(other reasons)"] += 1
    return reasons, None


def fetch_rows(parts: Parts, rows: list[int]) -> dict[int, dict[str, Any]]:
    """Global row index -> row dict (DISPLAY_COLUMNS present in the file), reading only the row groups that hold them.

    Global index = start of the file (rows counted by the `batches` pass, name order) + row in the file.
    """
    starts = np.concatenate([[0], np.cumsum(parts.scanned)]).astype(np.int64)
    found: dict[int, dict[str, Any]] = {}
    want = np.array(sorted(set(rows)), dtype=np.int64)
    file_of = np.searchsorted(starts, want, side="right") - 1
    for f in np.unique(file_of):
        pf = pq.ParquetFile(parts.files[f])
        cols = [c for c in DISPLAY_COLUMNS if c in pf.schema_arrow.names]
        md = pf.metadata
        rg_starts = np.concatenate([[0], np.cumsum([md.row_group(i).num_rows for i in range(md.num_row_groups)])])
        local = want[file_of == f] - starts[f]
        rg_of = np.searchsorted(rg_starts, local, side="right") - 1
        for rg in np.unique(rg_of):
            table = pf.read_row_group(int(rg), columns=cols)
            picked = local[rg_of == rg]
            for g, rec in zip(picked + starts[f], table.take(pa.array(picked - rg_starts[rg])).to_pylist()):
                rec["_part"] = parts.names[f]
                found[int(g)] = rec
    return found

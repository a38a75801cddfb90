"""Driver-side commits of tag-corpus chunks: rename the worker's temp part into `data/` (or `data/dt=YYYY-MM-DD/`),
record it in the commit log in one transaction, then drop what it superseded; at start, migrate a version-2 output,
remove what a killed run left uncommitted (the lock is held) and repair `_rejects.jsonl`.
"""
from __future__ import annotations

import hashlib
import json
from array import array
import logging
import os
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from cache.durable import (
    atomic_file,
    commit_temp,
    ensure_dir,
    fsync_path,
    is_temp_name,
    open_append,
    refuse_link,
    temp_path,
)
from exit_codes import InputError
from pipeline.io.dumps import UniqueIds, duplicate_reject
from pipeline.tag.chunks import stamp_of
from pipeline.tag.manifest import (
    CHUNK_COLUMNS,
    MANIFEST_NAME,
    REJECTS_NAME,
    STATE_NAME,
    Manifest,
    check_part_path,
    chunk_key,
    data_folder,
)

__all__ = ["Committer", "part_name", "STAGING_DIR", "migrate_v2"]

STAGING_DIR = "_staging"  # temp parts being written; data/ only ever holds committed Parquet

log = logging.getLogger("rpihmif.tag")


# --- version-2 outputs (`_manifest.json` + `_rejects.d/`): migrated on first open, the old file kept as .v2 ---
_REJECTS_DIR = "_rejects.d"  # version 2: one rejects file per committed chunk


def _load(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(data, dict) or data.get("version") != 2:
            raise ValueError(f"version {data.get('version') if isinstance(data, dict) else '?'}, expected 2")
        if not isinstance(data.get("inputs"), dict) or not isinstance(data.get("chunks"), dict):
            raise ValueError("no inputs/chunks objects")
        return data
    except (OSError, ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise InputError(f"{path}: unreadable manifest ({exc}); move the output folder away to re-tag every "
                         f"input") from exc


def _chunk_row(key: str, e: Any, data: Path, where: Path) -> tuple[dict[str, Any], list[int]]:
    """The log row of one v2 chunk entry (its part stamped and hashed now) and the ids its part holds."""
    try:
        rel = check_part_path(str(e["output"]), where)
        row = {"key": str(key), "input": str(e["input"]), "source": str(e["source"]),
               "first_line": int(e["first_line"]), "last_line": int(e["last_line"]),
               "byte_end": None if e.get("byte_end") is None else int(e["byte_end"]),
               "ends_newline": int(bool(e["ends_newline"])), "output": rel, "rows": int(e["rows"]),
               "rejects": int(e["rejects"]), "images_used": int(e["images_used"]),
               "images_missing": int(e["images_missing"]), "no_image": int(e["no_image"]),
               "model_id": str(e["model_id"]), "encoder": str(e["encoder"]), "cache_state": str(e["cache_state"]),
               "image_root": str(e.get("image_root", "")), "tagged_at": str(e.get("tagged_at", ""))}
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise InputError(f"{where}: chunk {str(key)[:80]!r} is damaged ({exc!r}); move the output folder away to "
                         f"re-tag every input") from exc
    path, ids = data / rel, []
    row.update(part_size=None, part_mtime_ns=None, part_digest=None)
    if path.is_file() and not path.is_symlink():
        st = os.stat(path)
        with open(path, "rb") as fh:
            row.update(part_size=st.st_size, part_mtime_ns=st.st_mtime_ns,
                       part_digest=hashlib.file_digest(fh, "sha256").hexdigest())
        try:
            ids = [UniqueIds.digest(str(i)) for i in pq.read_table(path, columns=["id"]).column("id").to_pylist()]
        except Exception:  # noqa: BLE001 -- a damaged part: its chunk is re-tagged by the digest check anyway
            ids = []
    return row, ids


def migrate_v2(out: Path) -> None:
    """Build `_state.sqlite` from `_manifest.json` (version 2) and `_rejects.d/`; log one line."""
    src = out / MANIFEST_NAME
    v2 = _load(src)
    data = data_folder(out)
    tmp = temp_path(out / STATE_NAME)
    tmp.unlink()
    m = Manifest(out, "none", path=tmp)
    try:
        with m.transaction() as db:
            for sha, e in v2["inputs"].items():
                try:
                    db.execute("INSERT INTO inputs VALUES (?, ?, ?, ?, ?, ?, ?)",
                               (str(sha), int(e["size"]), str(sha), None if e.get("lines") is None else int(e["lines"]),
                                None if e.get("ends_newline") is None else int(bool(e["ends_newline"])),
                                int(bool(e.get("complete"))), str(e.get("first_seen", ""))))
                    db.executemany("INSERT OR IGNORE INTO input_paths VALUES (?, ?)",
                                   [(str(sha), str(p)) for p in e.get("paths", [])])
                except (KeyError, TypeError, ValueError, AttributeError) as exc:
                    raise InputError(f"{src}: input {str(sha)[:80]!r} is damaged ({exc!r}); move the output folder "
                                     f"away to re-tag every input") from exc
            for key, e in v2["chunks"].items():
                row, ids = _chunk_row(key, e, data, src)
                db.execute(f"INSERT OR REPLACE INTO chunks({','.join(CHUNK_COLUMNS)}) VALUES "
                           f"({','.join('?' * len(CHUNK_COLUMNS))})", [row[c] for c in CHUNK_COLUMNS])
                if ids:
                    db.execute("INSERT OR REPLACE INTO chunk_ids VALUES (?, ?, ?)",
                               (row["key"], row["input"], array("q", ids).tobytes()))
                rejects = out / _REJECTS_DIR / (Path(row["output"]).stem + ".jsonl")
                if row["rejects"] and rejects.is_file() and not rejects.is_symlink():
                    db.execute("INSERT OR REPLACE INTO rejects VALUES (?, ?)",
                               (row["key"], rejects.read_text(encoding="utf-8", errors="replace")))
            db.execute("UPDATE meta SET value = '-1' WHERE key = 'rejects_bytes'")  # rebuilt from the log next
        m.close()
        os.replace(tmp, out / STATE_NAME)
        fsync_path(out, directory=True)
    except BaseException:
        m.close()
        tmp.unlink(missing_ok=True)
        raise
    os.replace(src, out / (MANIFEST_NAME + ".v2"))
    log.info("migrated %s (version 2: %d inputs, %d chunks) into %s; the old file is kept as %s.v2", src,
             len(v2["inputs"]), len(v2["chunks"]), STATE_NAME, MANIFEST_NAME)


def part_name(source: str, sha256: str, first_line: int) -> str:
    """`<dump stem>-<sha256[:12]>-<first line>.parquet`: one name per (input content, chunk start)."""
    stem = Path(source).name
    for suffix in (".gz", ".jsonl", ".ndjson", ".json"):
        stem = stem[: -len(suffix)] if stem.endswith(suffix) else stem
    stem = stem.lstrip("._") or "part"
    return f"{stem}-{sha256[:12]}-{first_line:09d}.parquet"


class Committer:
    """Owns `OUT/data/`, `OUT/_rejects.jsonl` and the commit log of one locked output folder."""

    def __init__(self, out: Path, partition_by: str = "none"):
        self.out = out
        self.data = ensure_dir(data_folder(out))
        self.staging = ensure_dir(out / STAGING_DIR)  # workers' temp parts: outside data/, same file system
        refuse_link(out / MANIFEST_NAME)
        refuse_link(out / REJECTS_NAME)
        if (out / MANIFEST_NAME).exists() and not (out / STATE_NAME).exists():
            migrate_v2(out)
        self.manifest = Manifest(out, partition_by)
        self.rejects_dirty = False  # a superseded chunk had rejects: rebuild _rejects.jsonl at the end
        self._clean()
        self.rejects_size = self._reconcile_rejects()

    def drop_temps(self) -> None:
        """Remove temp parts of dropped in-flight chunks (end of an interrupted run)."""
        for p in self.staging.iterdir():
            if is_temp_name(p.name):
                p.unlink(missing_ok=True)

    def _clean(self) -> None:
        """Drop temps and parts the commit log does not name (killed between a rename and its commit)."""
        removed = 0
        for folder in (self.out, self.staging):
            for p in folder.iterdir():
                if is_temp_name(p.name) and p.is_file():
                    p.unlink(missing_ok=True)
        for folder in [self.data] + sorted(p for p in self.data.iterdir() if p.is_dir() and not p.is_symlink()
                                           and p.name.startswith("dt=")):
            rel = "" if folder is self.data else folder.name + "/"
            for p in folder.iterdir():
                if not p.is_file() or p.is_symlink():
                    continue
                if is_temp_name(p.name) or p.suffix == ".parquet" and not self.manifest.has_output(rel + p.name):
                    p.unlink(missing_ok=True)
                    removed += not is_temp_name(p.name)
            if folder is not self.data and not any(folder.iterdir()):
                folder.rmdir()
        if removed:
            log.info("removed %d file(s) a killed run left uncommitted in %s", removed, self.data)

    def _reconcile_rejects(self) -> int:
        """The size of `_rejects.jsonl`, rebuilt from the log first when it is not the size the last commit recorded
        (a run killed between a commit and its append)."""
        path = self.out / REJECTS_NAME
        size = path.stat().st_size if path.exists() else 0
        if size != self.manifest.rejects_bytes() or not path.exists():
            size = self.write_rejects(force=True)
        return size

    def _dedup(self, plan: Any, result: Any, superseded: set[str]) -> list[dict[str, Any]]:
        """Keep one row per tweet id per input family: drop rows whose id a committed chunk of it holds (rewriting the
        temp part; rare) and return their duplicate-id rejects."""
        known = self.manifest.known_ids(plan.family_id, result.ids, superseded)
        if not known:
            return []
        tmp = Path(result.tmp)
        table = pq.read_table(tmp)
        digests = [UniqueIds.digest(i) for i in table.column("id").to_pylist()]
        keep = pa.array([d not in known for d in digests])
        dups = table.filter(pc.invert(keep))
        rejects = [duplicate_reject(plan.source, line, rid, "this input").to_json()
                   for rid, line in zip(dups.column("id").to_pylist(), dups.column("line").to_pylist())]
        kept = table.filter(keep)
        result.ids = [d for d in digests if d not in known]
        result.rows = kept.num_rows
        if not kept.num_rows:
            tmp.unlink(missing_ok=True)
            result.tmp, result.digest = None, ""
            return rejects
        with atomic_file(tmp, "wb") as fh:
            pq.write_table(kept, fh, compression="zstd")
        with open(tmp, "rb") as fh:
            result.digest = hashlib.file_digest(fh, "sha256").hexdigest()
        return rejects

    def commit(self, plan: Any, chunk: Any, result: Any, extra: dict[str, Any], tagged_at: float) -> dict[str, Any] | None:
        """Make one chunk's part visible and recorded; returns its entry, or None when its input changed since it was
        hashed (the chunk is dropped: its rows would be stored under the wrong digest)."""
        if stamp_of(plan.path) != plan.ident.stamp:
            if result.tmp:
                Path(result.tmp).unlink(missing_ok=True)
            return None
        sha, first = plan.ident.sha256, chunk.first_line
        key, name = chunk_key(sha, first), part_name(plan.source, sha, first)
        m = self.manifest
        old = m.overlapping(plan.family, first, chunk.last_line)  # what this chunk replaces (itself re-tagged too)
        result.rejects += self._dedup(plan, result, {e["key"] for e in old})
        rel = None
        if result.tmp:
            rel = name
            if m.partition_by == "tagged_date":
                rel = datetime.fromtimestamp(tagged_at, timezone.utc).strftime("dt=%Y-%m-%d/") + name
                ensure_dir(self.data / rel.split("/")[0])
            commit_temp(Path(result.tmp), self.data / rel)
        st = os.stat(self.data / rel) if rel else None
        body = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in result.rejects)
        encoded = body.encode("utf-8")
        entry = {"key": key, "input": sha, "source": plan.source, "first_line": first, "last_line": chunk.last_line,
                 "byte_end": chunk.byte_end, "ends_newline": int(chunk.ends_newline), "output": rel,
                 "part_size": st.st_size if st else None, "part_mtime_ns": st.st_mtime_ns if st else None,
                 "part_digest": result.digest or None, "rows": result.rows, "rejects": len(result.rejects),
                 "images_used": result.images_used, "images_missing": result.images_missing,
                 "no_image": result.no_image, "tagged_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **extra}
        self.rejects_dirty |= any(e["rejects"] for e in old)
        new_size = -1 if self.rejects_dirty else self.rejects_size + len(encoded)  # -1: rebuild it at the next start
        m.record_chunk(entry, body, plan.family_id, result.ids, [e["key"] for e in old], new_size, plan.ident.size)
        for e in old:  # recorded as gone first: a kill here leaves orphans the next run removes
            if e["output"] and e["output"] != rel:
                (self.data / e["output"]).unlink(missing_ok=True)
        if encoded and not self.rejects_dirty:
            with open_append(self.out / REJECTS_NAME) as fh:
                fh.write(body)
        self.rejects_size = new_size
        return entry

    def complete_input(self, plan: Any, lines: int, ends_newline: bool) -> None:
        self.manifest.see_input(plan.ident.sha256, plan.ident.size, plan.source, plan.family_id)
        self.manifest.complete_input(plan.ident.sha256, lines, ends_newline)

    def write_rejects(self, force: bool = False) -> int:
        """Rebuild `_rejects.jsonl` from the committed chunks' rejects, in (source, line) order (after a chunk with
        rejects was superseded, or when the file is not what the log recorded); returns its size."""
        if not (force or self.rejects_dirty):
            return self.rejects_size
        final = self.out / REJECTS_NAME
        size = 0
        with atomic_file(final, "w", encoding="utf-8") as dst:
            for body in self.manifest.all_rejects():
                dst.write(body)
                size += len(body.encode("utf-8"))
        with self.manifest.transaction() as db:
            db.execute("UPDATE meta SET value = ? WHERE key = 'rejects_bytes'", (str(size),))
        self.rejects_dirty, self.rejects_size = False, size
        return size

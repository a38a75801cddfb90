"""Migration of a version-2 tag-corpus output (`_manifest.json` + `_rejects.d/`) into the SQLite commit log, built
under a temp name in one transaction and renamed into place; the old manifest is kept as `_manifest.json.v2`.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from cache.durable import fsync_path, temp_path
from pipeline.io.dumps import UniqueIds
from pipeline.tag.manifest import (
    CHUNK_COLUMNS,
    MANIFEST_NAME,
    STATE_NAME,
    Manifest,
    check_part_path,
    data_folder,
    family_number,
)
from rpihmif.errors import InputError

__all__ = ["migrate_v2"]

log = logging.getLogger("rpihmif.tag")
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
                cur = db.execute(f"INSERT OR REPLACE INTO chunks({','.join(CHUNK_COLUMNS)}) VALUES "
                                 f"({','.join('?' * len(CHUNK_COLUMNS))})", [row[c] for c in CHUNK_COLUMNS])
                fam = family_number(row["input"])
                db.executemany("INSERT OR IGNORE INTO ids VALUES (?, ?, ?)", ((fam, i, cur.lastrowid) for i in ids))
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

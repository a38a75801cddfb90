"""The commit log of a tag-corpus output (`OUT/_state.sqlite`): inputs known by content, committed chunks, their
rejects, the tweet ids per input family and a memo of input file stamps, each commit one indexed SQLite transaction
(rollback journal, synchronous=FULL).

The data stays plain Parquet in `OUT/data/`; this file is bookkeeping only, so its cost per commit does not grow with
the output (every lookup is a B-tree index, nothing is rewritten whole) and a killed commit leaves the last one.
"""
from __future__ import annotations

import json
import logging
import os
import sqlite3
from array import array
import time
from pathlib import Path, PurePosixPath
from typing import Any, Iterable, Iterator

from cache.durable import refuse_link
from exit_codes import InputError, PipelineError, UsageError

__all__ = ["Manifest", "STATE_NAME", "MANIFEST_NAME", "REJECTS_NAME", "DATA_DIR", "data_folder", "chunk_key",
           "Stamp", "read_state", "check_part_path", "CHUNK_COLUMNS"]

STATE_NAME = "_state.sqlite"  # the commit log; its -journal sibling is SQLite's own
MANIFEST_NAME = "_manifest.json"  # the version-2 whole-file manifest, migrated into STATE_NAME on first open
DATA_DIR = "data"  # OUT/data/ holds only Parquet parts; state, rejects, report and lock sit beside it in OUT/
REJECTS_NAME = "_rejects.jsonl"  # every committed chunk's rejects: appended per commit, rebuilt when one is superseded
VERSION = 3
Stamp = tuple[int, int, int, int]  # (size, mtime_ns, ctime_ns, inode): changes whenever a file is written or replaced

log = logging.getLogger("rpihmif.tag")

_SCHEMA = """
CREATE TABLE meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE inputs(sha256 TEXT PRIMARY KEY, size INTEGER NOT NULL, family TEXT NOT NULL, lines INTEGER,
    ends_newline INTEGER, complete INTEGER NOT NULL DEFAULT 0, first_seen TEXT NOT NULL);
CREATE INDEX inputs_size ON inputs(size);
CREATE TABLE input_paths(sha256 TEXT NOT NULL, path TEXT NOT NULL, UNIQUE(sha256, path));
CREATE TABLE chunks(key TEXT PRIMARY KEY, input TEXT NOT NULL, source TEXT NOT NULL, first_line INTEGER NOT NULL,
    last_line INTEGER NOT NULL, byte_end INTEGER, ends_newline INTEGER NOT NULL, output TEXT UNIQUE,
    part_size INTEGER, part_mtime_ns INTEGER, part_digest TEXT, rows INTEGER NOT NULL, rejects INTEGER NOT NULL,
    images_used INTEGER NOT NULL, images_missing INTEGER NOT NULL, no_image INTEGER NOT NULL, model_id TEXT NOT NULL,
    encoder TEXT NOT NULL, cache_state TEXT NOT NULL, image_root TEXT NOT NULL, tagged_at TEXT NOT NULL);
CREATE INDEX chunks_input ON chunks(input, first_line);
CREATE TABLE rejects(key TEXT PRIMARY KEY, body TEXT NOT NULL) WITHOUT ROWID;
CREATE TABLE chunk_ids(key TEXT PRIMARY KEY, family TEXT NOT NULL, ids BLOB NOT NULL) WITHOUT ROWID;
CREATE INDEX chunk_ids_family ON chunk_ids(family);
CREATE TABLE files(path TEXT PRIMARY KEY, size INTEGER NOT NULL, mtime_ns INTEGER NOT NULL, ctime_ns INTEGER NOT NULL,
    inode INTEGER NOT NULL, sha256 TEXT NOT NULL, prefixes TEXT NOT NULL);
"""
# column -> the Python types a sane row holds there (SQLite stores any type in any column)
_CHUNK_TYPES = {"key": str, "input": str, "source": str, "first_line": int, "last_line": int, "byte_end": (int, type(None)),
                "ends_newline": int, "output": (str, type(None)), "part_size": (int, type(None)),
                "part_mtime_ns": (int, type(None)), "part_digest": (str, type(None)), "rows": int, "rejects": int,
                "images_used": int, "images_missing": int, "no_image": int, "model_id": str, "encoder": str,
                "cache_state": str, "image_root": str, "tagged_at": str}
_INPUT_TYPES = {"sha256": str, "size": int, "family": str, "lines": (int, type(None)),
                "ends_newline": (int, type(None)), "complete": int, "first_seen": str}
CHUNK_COLUMNS = tuple(_CHUNK_TYPES)


def data_folder(out: str | Path) -> Path:
    """The folder of an output that holds only Parquet parts: what pandas/pyarrow/DuckDB/polars read as one table."""
    return Path(out) / DATA_DIR


def chunk_key(input_sha: str, first_line: int) -> str:
    return f"{input_sha[:16]}:{first_line}"


def check_part_path(rel: str, where: Path) -> str:
    """`rel` (a part path read from state) when it names a Parquet file in data/ or one dt=YYYY-MM-DD/ folder of it;
    anything else (absolute, `..`, hidden, deeper) is an InputError naming the state file."""
    p = PurePosixPath(rel)
    parts = p.parts
    ok = (not p.is_absolute() and 1 <= len(parts) <= 2 and "\\" not in rel and "\x00" not in rel
          and all(x not in ("", ".", "..") and not x.startswith(".") for x in parts) and p.suffix == ".parquet"
          and (len(parts) == 1 or parts[0].startswith("dt=") and len(parts[0]) == 13))
    if not ok:
        raise InputError(f"{where}: part path {rel[:200]!r} is not a Parquet file inside data/; the state is damaged "
                         f"or crafted: move the output folder away and tag into a new one")
    return rel


def db_error(path: Path, exc: sqlite3.DatabaseError) -> Exception:
    """One line for a failed read or write of the commit log: a full disk is a PipelineError (exit 1) naming the
    folder and the space left, a damaged or foreign file an InputError (exit 2)."""
    import shutil

    free = shutil.disk_usage(path.parent).free if path.parent.exists() else -1
    if 0 <= free < 1 << 20 or "full" in str(exc):
        return PipelineError(f"{path}: No space left on device ({free} bytes free in {path.parent}) writing the "
                             f"commit log; free some space and rerun: the last committed state is kept")
    if isinstance(exc, sqlite3.OperationalError) and ("I/O" in str(exc) or "locked" in str(exc)):
        return PipelineError(f"{path}: cannot write the commit log ({exc}); check the disk and rerun")
    return InputError(f"{path}: unreadable commit log ({exc}); move the output folder away to re-tag every input")


def _connect(path: Path, readonly: bool) -> sqlite3.Connection:
    """A connection in autocommit mode (transactions are explicit); read-only ones fall back to `immutable` where the
    folder cannot hold SQLite's shared-memory file (a read-only output)."""
    if not readonly:
        return sqlite3.connect(f"file:{path}", uri=True, isolation_level=None, check_same_thread=False)
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, isolation_level=None, check_same_thread=False)
    try:
        db.execute("SELECT count(*) FROM sqlite_master").fetchone()
        return db
    except sqlite3.OperationalError:
        db.close()
        return sqlite3.connect(f"file:{path}?immutable=1", uri=True, isolation_level=None, check_same_thread=False)


def _typed(row: sqlite3.Row, types: dict[str, Any], where: Path) -> dict[str, Any]:
    d = dict(row)
    for name, typ in types.items():
        if name not in d or not isinstance(d[name], typ) or isinstance(d[name], bool):
            raise InputError(f"{where}: column {name!r} of a row is {type(d.get(name)).__name__} "
                             f"({str(d.get(name))[:60]!r}); the state is damaged: move the output folder away and "
                             f"tag into a new one")
    return d


class Manifest:
    """The commit log of one output; a writer holds the output's lock, readers open it with `readonly=True`."""

    def __init__(self, out_dir: Path, partition_by: str | None = None, readonly: bool = False,
                 path: Path | None = None):
        self.out = Path(out_dir)
        self._sizes: set[int] | None = None
        self._ids: dict[str, dict[int, str]] = {}
        self.path = path or self.out / STATE_NAME  # `path`: the migration builds the log under a temp name
        for name in (STATE_NAME, STATE_NAME + "-wal", STATE_NAME + "-shm", STATE_NAME + "-journal"):
            refuse_link(self.out / name)  # SQLite would follow a link planted at any of them
        fresh = not self.path.exists()
        if readonly and fresh:
            raise FileNotFoundError(self.path)
        if not fresh and not self.path.is_file():
            raise InputError(f"{self.path} is not a regular file; move it away (the output's commit log)")
        try:
            self.db = _connect(self.path, readonly)
            self.db.row_factory = sqlite3.Row
            if not readonly:
                self.db.execute("PRAGMA journal_mode=TRUNCATE")  # a rollback journal: bounded by one commit's pages
                self.db.execute("PRAGMA synchronous=FULL")
            if not self.db.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]:
                if readonly:  # being created by a run right now
                    self.db.close()
                    raise FileNotFoundError(self.path)
                self._create(partition_by or "none")  # new, or killed before its schema was committed
            self.meta = {k: v for k, v in self.db.execute("SELECT key, value FROM meta")}
            self.db.execute("SELECT " + ",".join(CHUNK_COLUMNS) + " FROM chunks LIMIT 0")
            self.db.execute("SELECT " + ",".join(_INPUT_TYPES) + " FROM inputs LIMIT 0")
        except sqlite3.DatabaseError as exc:
            raise db_error(self.path, exc) from exc
        if self.meta.get("version") != str(VERSION):
            raise InputError(f"{self.path}: commit log version {self.meta.get('version')!r}, expected {VERSION}; "
                             f"tag into a new folder")
        self.partition_by = self.meta.get("partition_by", "none")
        if partition_by is not None and partition_by != self.partition_by:
            raise UsageError(f"{self.out} was created with partition_by={self.partition_by}, not {partition_by}; "
                             f"pass --set partition_by={self.partition_by} or tag into a new output folder")

    def _create(self, partition_by: str) -> None:
        self.db.execute("PRAGMA page_size=1024")  # small pages: a new output's log starts at a few KiB
        with self.transaction():
            for stmt in filter(str.strip, _SCHEMA.split(";")):
                self.db.execute(stmt)
            self.db.executemany("INSERT INTO meta VALUES (?, ?)", [("version", str(VERSION)),
                                                                  ("partition_by", partition_by),
                                                                  ("rejects_bytes", "0")])

    class _Tx:
        def __init__(self, db: sqlite3.Connection):
            self.db = db

        def __enter__(self) -> sqlite3.Connection:
            self.db.execute("BEGIN IMMEDIATE")
            return self.db

        def __exit__(self, typ: Any, exc: Any, tb: Any) -> None:
            try:
                self.db.execute("COMMIT" if typ is None else "ROLLBACK")
            except sqlite3.DatabaseError as err:
                exc = exc if isinstance(exc, sqlite3.DatabaseError) else err
            if isinstance(exc, sqlite3.DatabaseError):
                path = Path(self.db.execute("PRAGMA database_list").fetchone()[2])
                raise db_error(path, exc) from exc

    def transaction(self) -> "Manifest._Tx":
        """`with state.transaction() as db:` one atomic, durable commit (synchronous=FULL)."""
        return Manifest._Tx(self.db)

    def close(self) -> None:
        self.db.close()

    # --- inputs and the file-stamp memo -----------------------------------------------------------------------
    def sizes(self) -> set[int]:
        """Sizes of the known inputs: the prefixes a new file is hashed at to find what it extends (read once per
        run: inputs of this run are not prefixes of one another's files)."""
        if self._sizes is None:
            self._sizes = {int(r[0]) for r in self.db.execute("SELECT DISTINCT size FROM inputs")}
        return self._sizes

    def memo(self, path: str, stamp: Stamp) -> tuple[str, dict[int, str]] | None:
        """(sha256, prefix digests) remembered for `path` under exactly this stamp, else None."""
        row = self.db.execute("SELECT * FROM files WHERE path = ?", (path,)).fetchone()
        if row is None or (row["size"], row["mtime_ns"], row["ctime_ns"], row["inode"]) != tuple(stamp):
            return None
        try:
            return str(row["sha256"]), {int(k): str(v) for k, v in json.loads(row["prefixes"]).items()}
        except (ValueError, TypeError, AttributeError):
            return None  # a damaged memo row: hash the file again

    def remember(self, path: str, stamp: Stamp, sha256: str, prefixes: dict[int, str]) -> None:
        with self.transaction() as db:
            db.execute("INSERT OR REPLACE INTO files VALUES (?, ?, ?, ?, ?, ?, ?)",
                       (path, *stamp, sha256, json.dumps({str(k): v for k, v in prefixes.items()})))

    def input(self, sha256: str) -> dict[str, Any] | None:
        row = self.db.execute("SELECT * FROM inputs WHERE sha256 = ?", (sha256,)).fetchone()
        return _typed(row, _INPUT_TYPES, self.path) if row is not None else None

    def paths(self, sha256: str) -> list[str]:
        return [r[0] for r in self.db.execute("SELECT path FROM input_paths WHERE sha256 = ? ORDER BY rowid", (sha256,))]

    def family(self, sha256: str, prefixes: dict[int, str]) -> set[str]:
        """The input itself plus every known input that is a byte prefix of it (it grew by appending)."""
        fam = {sha256}
        for size, digest in prefixes.items():
            if self.db.execute("SELECT 1 FROM inputs WHERE sha256 = ? AND size = ?", (digest, size)).fetchone():
                fam.add(digest)
        return fam

    def family_id(self, family: set[str], sha256: str) -> str:
        """The id family of an input: that of the longest known input it extends, else its own sha256."""
        best = None
        for sha in family - {sha256}:
            row = self.input(sha)
            if row is not None and (best is None or row["size"] > best["size"]):
                best = row
        own = self.input(sha256)
        return own["family"] if own is not None else best["family"] if best is not None else sha256

    def see_input(self, sha256: str, size: int, path: str, family: str, db: sqlite3.Connection | None = None) -> None:
        """Record input `sha256` (if new) and `path` among the paths it was seen under."""
        def write(c: sqlite3.Connection) -> None:
            c.execute("INSERT OR IGNORE INTO inputs(sha256, size, family, first_seen) VALUES (?, ?, ?, ?)",
                      (sha256, size, family, time.strftime("%Y-%m-%dT%H:%M:%S%z")))
            c.execute("INSERT OR IGNORE INTO input_paths VALUES (?, ?)", (sha256, path))
        if db is not None:
            write(db)
        elif self.db.execute("SELECT 1 FROM input_paths WHERE sha256 = ? AND path = ?", (sha256, path)).fetchone():
            return  # known under this path: nothing to commit (a rerun over done inputs writes nothing)
        else:
            with self.transaction() as c:
                write(c)

    def complete_input(self, sha256: str, lines: int, ends_newline: bool) -> None:
        with self.transaction() as db:
            db.execute("UPDATE inputs SET lines = ?, ends_newline = ?, complete = 1 WHERE sha256 = ?",
                       (lines, int(ends_newline), sha256))

    # --- chunks --------------------------------------------------------------------------------------------------
    def _chunks(self, sql: str, args: Iterable[Any]) -> list[dict[str, Any]]:
        rows = [_typed(r, _CHUNK_TYPES, self.path) for r in self.db.execute(sql, tuple(args))]
        for r in rows:
            if r["output"] is not None:
                check_part_path(r["output"], self.path)
        return rows

    def chunks_of(self, family: set[str], sha256: str) -> dict[int, dict[str, Any]]:
        """Committed chunks of input `sha256` whose lines are its bytes: first_line -> entry.

        A chunk read from a shorter member of its `family` counts only if its last line was complete (had a newline).
        """
        found: dict[int, dict[str, Any]] = {}
        for sha in family:
            for e in self._chunks("SELECT * FROM chunks WHERE input = ?", (sha,)):
                if sha == sha256 or e["ends_newline"]:
                    found[e["first_line"]] = e
        return found

    def overlapping(self, family: set[str], first: int, last: int) -> list[dict[str, Any]]:
        """Committed chunks of `family` that share a line with `first..last` (chunks of one input never overlap, so
        two index range scans per member find them)."""
        found = []
        for sha in family:
            found += self._chunks("SELECT * FROM chunks WHERE input = ? AND first_line BETWEEN ? AND ?",
                                  (sha, first, last))
            found += [e for e in self._chunks("SELECT * FROM chunks WHERE input = ? AND first_line < ? ORDER BY "
                                              "first_line DESC LIMIT 1", (sha, first)) if e["last_line"] >= first]
        return found

    def has_output(self, rel: str) -> bool:
        return self.db.execute("SELECT 1 FROM chunks WHERE output = ?", (rel,)).fetchone() is not None

    def update_stamp(self, key: str, size: int, mtime_ns: int) -> None:
        with self.transaction() as db:
            db.execute("UPDATE chunks SET part_size = ?, part_mtime_ns = ? WHERE key = ?", (size, mtime_ns, key))

    def _family_ids(self, family: str) -> dict[int, str]:
        """id digest -> chunk key of every committed chunk of `family`, read once per run (8 bytes per record on disk,
        about 100 bytes per record in memory while its family is tagged)."""
        if family not in self._ids:
            found: dict[int, str] = {}
            for key, blob in self.db.execute("SELECT key, ids FROM chunk_ids WHERE family = ?", (family,)):
                if not isinstance(blob, bytes) or len(blob) % 8:
                    raise InputError(f"{self.path}: the ids of chunk {str(key)[:60]!r} are damaged; move the output "
                                     "folder away and tag into a new one")
                found.update(dict.fromkeys(array("q", blob), key))
            self._ids[family] = found
        return self._ids[family]

    def known_ids(self, family: str, ids: list[int], ignore: set[str]) -> set[int]:
        """Which of `ids` a committed chunk of `family` (other than those in `ignore`) already holds."""
        held = self._family_ids(family)
        return {i for i in ids if i in held and held[i] not in ignore}

    def record_chunk(self, entry: dict[str, Any], rejects: str, family: str, ids: list[int],
                     superseded: list[str], rejects_bytes: int, input_size: int) -> None:
        """One transaction: drop `superseded` chunks (rows, rejects, ids), insert `entry`, its input (if new), its
        rejects and its ids (one blob of 8-byte digests)."""
        held = self._family_ids(family)
        with self.transaction() as db:
            for key in superseded:
                for table in ("chunks", "rejects", "chunk_ids"):
                    db.execute(f"DELETE FROM {table} WHERE key = ?", (key,))
            self.see_input(entry["input"], input_size, entry["source"], family, db)
            db.execute(f"INSERT INTO chunks({','.join(CHUNK_COLUMNS)}) VALUES "
                       f"({','.join('?' * len(CHUNK_COLUMNS))})", [entry[c] for c in CHUNK_COLUMNS])
            if rejects:
                db.execute("INSERT OR REPLACE INTO rejects VALUES (?, ?)", (entry["key"], rejects))
            if ids:
                db.execute("INSERT INTO chunk_ids VALUES (?, ?, ?)", (entry["key"], family, array("q", ids).tobytes()))
            db.execute("UPDATE meta SET value = ? WHERE key = 'rejects_bytes'", (str(rejects_bytes),))
        gone = set(superseded)
        for i in [i for i, k in held.items() if k in gone] if gone else ():
            del held[i]
        held.update(dict.fromkeys(ids, entry["key"]))

    def rejects_bytes(self) -> int:
        row = self.db.execute("SELECT value FROM meta WHERE key = 'rejects_bytes'").fetchone()
        return int(row[0]) if row is not None and str(row[0]).isdigit() else -1

    def all_rejects(self) -> Iterator[str]:
        """Every committed chunk's rejects (JSON lines), in (source, first line) order."""
        for (body,) in self.db.execute("SELECT r.body FROM rejects r JOIN chunks c ON c.key = r.key "
                                       "ORDER BY c.source, c.first_line"):
            if not isinstance(body, str):
                raise InputError(f"{self.path}: a rejects row is {type(body).__name__}; move the output folder away")
            yield body

    def chunk_count(self) -> int:
        return int(self.db.execute("SELECT count(*) FROM chunks").fetchone()[0])


def read_state(out: str | Path, limit: int = 100_000) -> dict[str, Any] | None:
    """The state as plain dicts ({"inputs": {sha: {..., paths}}, "chunks": {key: entry}}), for the report and tests;
    None when the output has no commit log."""
    try:
        m = Manifest(Path(out), readonly=True)
    except FileNotFoundError:
        return None
    try:
        inputs = {}
        for row in m.db.execute("SELECT * FROM inputs LIMIT ?", (limit,)):
            d = _typed(row, _INPUT_TYPES, m.path)
            d["paths"] = m.paths(d["sha256"])
            d["complete"] = bool(d["complete"])
            inputs[d["sha256"]] = d
        chunks = {e["key"]: e for e in m._chunks("SELECT * FROM chunks LIMIT ?", (limit,))}
        return {"version": VERSION, "partition_by": m.partition_by, "inputs": inputs, "chunks": chunks}
    finally:
        m.close()


def state_files(out: Path) -> list[Path]:
    return [out / n for n in (STATE_NAME, STATE_NAME + "-wal", STATE_NAME + "-shm") if os.path.lexists(out / n)]

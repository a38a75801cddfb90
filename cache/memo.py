"""The feature cache's one memo of file stamps: what is known about a file while its (size, mtime, ctime, inode) holds.

`<cache_dir>/.extract_memo.json` keeps input-image hashes and encoder fingerprints (extract's plan) and the shards that
passed verification (`cache.integrity`); `touch_read` keeps the `.last_read` stamp that `cache info` and `prune` use.
"""
from __future__ import annotations

import json
import logging
import os
import re
import stat
import time
from pathlib import Path
from typing import Any, Callable

from cache.durable import atomic_write_text, file_mode, file_stamp

__all__ = ["MEMO_NAME", "READ_STAMP", "StampMemo", "touch_read", "last_read"]

log = logging.getLogger("rpihmif.feature_cache")

MEMO_NAME = ".extract_memo.json"
READ_STAMP = ".last_read"
MEMO_VERSION = 2  # 1: hashes + fingerprints only (read as it is); 2 adds "shards"
MAX_HASHES = 500_000  # entries kept; the oldest beyond this are dropped (they are only re-hashed)
RACY_NS = 2_000_000_000  # a file changed this recently may change again within the same timestamp tick: not memoised
_HEX64 = re.compile(r"[0-9a-f]{64}")
_SECTIONS = ("hashes", "fingerprints", "shards")
_touched: set[tuple[int, str]] = set()  # (pid, folder) read stamps already touched by this process


class StampMemo:
    """Remembered file facts of one cache root; `save()` writes only the sections that changed (never if read_only).

    hashes: path -> [size, mtime_ns, ctime_ns, ino, sha256]; fingerprints: encoder source signature -> fingerprint;
    shards: "<fingerprint id>/<shard name>" -> [size, mtime_ns, ctime_ns, ino] of a shard that passed verification.
    """

    def __init__(self, cache_dir: str | os.PathLike, read_only: bool = False):
        self.path = Path(cache_dir) / MEMO_NAME
        self.read_only = read_only
        self.hashes: dict[str, list[Any]] = {}
        self.fingerprints: dict[str, dict[str, Any]] = {}
        self.shards: dict[str, list[int]] = {}
        self.hashed = 0  # files hashed because the memo missed them, for the summary and tests
        self._dirty: set[str] = set()
        self._load()

    def fingerprint_ok(self, fingerprint: dict[str, Any]) -> bool:
        """Whether a remembered fingerprint is well formed (the extract stage's subclass also checks its id)."""
        return isinstance(fingerprint.get("info"), dict) and isinstance(fingerprint.get("hashed"), dict)

    # ---- input hashes and fingerprints ---------------------------------------------------------------------------
    def lookup(self, path: str, st: os.stat_result) -> str | None:
        """The remembered sha256 of `path` when its signature `st` is unchanged, else None."""
        entry = self.hashes.get(path)
        return entry[4] if entry is not None and entry[:4] == file_stamp(st) else None

    def remember(self, path: str, st: os.stat_result, digest: str) -> None:
        """Remember a hash just computed from the file as `st` describes it, unless the file changed too recently
        for its timestamps to tell a later change apart (racy)."""
        self.hashed += 1
        if time.time_ns() - max(st.st_mtime_ns, st.st_ctime_ns) > RACY_NS:
            self.hashes.pop(path, None)  # re-inserted last: the newest entries survive the cap
            self.hashes[path] = [*file_stamp(st), digest]
            self._dirty.add("hashes")

    def fingerprint(self, signature: str, compute: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        """The fingerprint remembered for this encoder source `signature`, else `compute()` (loads the encoder)."""
        if signature not in self.fingerprints:
            self.fingerprints[signature] = compute()
            self._dirty.add("fingerprints")
        return self.fingerprints[signature]

    # ---- verified shards -------------------------------------------------------------------------------------------
    def verified(self, folder: Path) -> dict[str, list[int]]:
        """Shard name -> stamp of the shards of `folder` that passed verification."""
        prefix = folder.name + "/"
        return {k[len(prefix):]: v for k, v in self.shards.items() if k.startswith(prefix)}

    def set_verified(self, folder: Path, stamps: dict[str, list[int]]) -> None:
        """Replace what is remembered of `folder`'s shards by `stamps` (name -> stamp)."""
        prefix = folder.name + "/"
        kept = {k: v for k, v in self.shards.items() if not k.startswith(prefix)}
        new = {**kept, **{prefix + name: list(s) for name, s in stamps.items()}}
        if new != self.shards:
            self.shards = new
            self._dirty.add("shards")

    # ---- file ------------------------------------------------------------------------------------------------------
    def _read(self) -> dict[str, Any]:
        data = json.loads(self.path.read_text(encoding="utf-8"))
        if not isinstance(data, dict) or data.get("version") not in (1, MEMO_VERSION):
            raise ValueError(f"not a version-{MEMO_VERSION} memo")
        data.setdefault("shards", {})
        return {name: self._checked(name, data[name]) for name in _SECTIONS}

    def _load(self) -> None:
        if not self.path.is_file():
            return
        try:
            data = self._read()
        except (OSError, ValueError, TypeError, KeyError) as exc:
            log.warning("%s: ignored (%s); every file is hashed again and the memo rewritten", self.path, exc)
            self._dirty = set(_SECTIONS)
            return
        self.hashes, self.fingerprints, self.shards = (data[n] for n in _SECTIONS)

    def save(self) -> None:
        """Write the changed sections over a fresh read of the file (another run's other sections survive)."""
        if not self._dirty or self.read_only:
            return
        try:
            data = self._read() if self._dirty != set(_SECTIONS) else {}
        except (OSError, ValueError, TypeError, KeyError):
            data = {}
        self.hashes = dict(list(self.hashes.items())[-MAX_HASHES:])
        for name in _SECTIONS:
            if name in self._dirty or name not in data:
                data[name] = getattr(self, name)
        atomic_write_text(self.path, json.dumps({"version": MEMO_VERSION, **data}, separators=(",", ":")))
        self._dirty = set()

    def _checked(self, name: str, table: Any) -> dict[str, Any]:
        """`table` when every entry has the form of section `name`; ValueError naming the first bad one."""
        if not isinstance(table, dict):
            raise ValueError(f"{name} must be an object")
        for key, entry in table.items():
            if name == "fingerprints":
                good = isinstance(entry, dict) and self.fingerprint_ok(entry)
            else:
                n = 5 if name == "hashes" else 4
                good = (isinstance(entry, list) and len(entry) == n and all(type(v) is int for v in entry[:4])
                        and (n == 4 or (isinstance(entry[4], str) and bool(_HEX64.fullmatch(entry[4])))))
            if not good:
                raise ValueError(f"bad {name} entry {str(key)[:60]!r}")
        return table


def touch_read(folder: Path) -> None:
    """Stamp `folder/.last_read` with now, once per process; silent where the cache cannot be written (read-only)."""
    token = (os.getpid(), str(folder))
    if token in _touched:
        return
    _touched.add(token)
    try:
        fd = os.open(folder / READ_STAMP, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC,
                     file_mode())
    except OSError:  # read-only cache, permissions, or a link planted there: reading goes on unstamped
        return
    try:
        if stat.S_ISREG(os.fstat(fd).st_mode):
            os.utime(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def last_read(folder: Path) -> float | None:
    """When a reader last opened `folder` (POSIX seconds), None when never stamped."""
    try:
        st = os.lstat(folder / READ_STAMP)
    except OSError:
        return None
    return st.st_mtime if stat.S_ISREG(st.st_mode) else None

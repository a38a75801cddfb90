"""What extract-features remembers between runs: file hashes by (path, size, mtime, ctime, inode) and encoder fingerprints.

Kept in `<cache_dir>/.extract_memo.json` so that planning a rerun on a complete cache hashes nothing and loads no
encoder; the memo is verified on load (a malformed one is ignored with a warning) and written atomically.
"""
from __future__ import annotations

import json
import logging
import os
import re
import time
from pathlib import Path
from typing import Any, Callable

from cache.durable import atomic_write_text, file_stamp

__all__ = ["MEMO_NAME", "PlanMemo"]

log = logging.getLogger("rpihmif.extract")

MEMO_NAME = ".extract_memo.json"
MEMO_VERSION = 1
MAX_HASHES = 500_000  # entries kept; the oldest beyond this are dropped (they are only re-hashed)
RACY_NS = 2_000_000_000  # a file changed this recently may change again within the same timestamp tick: not memoised
_HEX64 = re.compile(r"[0-9a-f]{64}")


class PlanMemo:
    """Remembered file hashes and encoder fingerprints of one cache root; `save()` writes only when something changed."""

    def __init__(self, cache_dir: str | os.PathLike):
        self.path = Path(cache_dir) / MEMO_NAME
        self.hashes: dict[str, list[Any]] = {}  # path -> [size, mtime_ns, ctime_ns, ino, sha256]
        self.fingerprints: dict[str, dict[str, Any]] = {}  # encoder source signature (json) -> fingerprint
        self.hashed = 0  # files hashed because the memo missed them, for the summary and tests
        self._dirty = False
        self._load()

    def _load(self) -> None:
        if not self.path.is_file():
            return
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
            hashes, fingerprints = _verified(data)
        except (OSError, ValueError, TypeError, KeyError) as exc:
            log.warning("%s: ignored (%s); every file is hashed again and the memo rewritten", self.path, exc)
            self._dirty = True
            return
        self.hashes, self.fingerprints = hashes, fingerprints

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
            self._dirty = True

    def fingerprint(self, signature: str, compute: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        """The fingerprint remembered for this encoder source `signature`, else `compute()` (loads the encoder)."""
        if signature not in self.fingerprints:
            self.fingerprints[signature] = compute()
            self._dirty = True
        return self.fingerprints[signature]

    def save(self) -> None:
        if not self._dirty:
            return
        hashes = dict(list(self.hashes.items())[-MAX_HASHES:])
        data = {"version": MEMO_VERSION, "hashes": hashes, "fingerprints": self.fingerprints}
        atomic_write_text(self.path, json.dumps(data, separators=(",", ":")))  # creates cache_dir when needed
        self._dirty = False


def _verified(data: Any) -> tuple[dict[str, list[Any]], dict[str, dict[str, Any]]]:
    """The memo's tables when every entry has the expected form; ValueError naming the first bad one otherwise."""
    from pipeline.extract.clip_encoder import fingerprint_id

    if not isinstance(data, dict) or data.get("version") != MEMO_VERSION:
        raise ValueError(f"not a version-{MEMO_VERSION} memo")
    hashes, fingerprints = data["hashes"], data["fingerprints"]
    if not isinstance(hashes, dict) or not isinstance(fingerprints, dict):
        raise ValueError("hashes and fingerprints must be objects")
    for path, entry in hashes.items():
        if not (isinstance(entry, list) and len(entry) == 5 and all(type(v) is int for v in entry[:4])
                and isinstance(entry[4], str) and _HEX64.fullmatch(entry[4])):
            raise ValueError(f"bad hash entry for {path!r}")
    for sig, fp in fingerprints.items():
        if not (isinstance(fp, dict) and isinstance(fp.get("info"), dict) and isinstance(fp.get("hashed"), dict)
                and fp.get("id") == fingerprint_id(fp["hashed"])):
            raise ValueError(f"fingerprint entry {sig[:60]!r} does not hash to its id")
    return hashes, fingerprints

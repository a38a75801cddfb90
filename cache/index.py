"""The index of a feature-cache folder: which shard and row holds each key, plus every alias and reject.

Built from `index.h5` and the shards it does not name (a lost or stale index is only slower); `write_index` saves it.
"""
from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from cache.durable import atomic_write_text, naming_path
from cache.format import (
    FORMAT_VERSION,
    SHARD_GLOB,
    canonical,
    decode_strings,
    memory_file,
    read_alias_tables,
    read_strings,
    save_memory_file,
    write_alias_tables,
    write_strings,
)
from cache.safe_open import open_index, open_shard
from exit_codes import DamagedCacheError

__all__ = ["CacheIndex", "load_index", "read_index_file", "write_index", "INDEX_NAME"]

log = logging.getLogger("rpihmif.feature_cache")

INDEX_NAME = "index.h5"


@dataclass
class CacheIndex:
    """In-memory summary of the visible shards."""

    shards: list[str] = field(default_factory=list)  # shard file names, in commit order
    keys: dict[str, tuple[int, int]] = field(default_factory=dict)  # key -> (shard number, row)
    aliases: dict[tuple[str, str], str] = field(default_factory=dict)  # (source, image id) -> key | NO_IMAGE
    rejects: list[dict[str, Any]] = field(default_factory=list)  # reject records, in commit order
    rejected_keys: dict[str, str] = field(default_factory=dict)  # content key of a rejected image -> reason

    def add_shard(self, name: str, keys: Iterable[str], aliases: Iterable[tuple[str, str, str]],
                  rejects: Iterable[dict[str, Any]]) -> None:
        n = len(self.shards)
        self.shards.append(name)
        for row, key in enumerate(keys):
            self.keys.setdefault(key, (n, row))
        self.add_tables(aliases, rejects)

    def add_tables(self, aliases: Iterable[tuple[str, str, str]], rejects: Iterable[dict[str, Any]]) -> None:
        """Later aliases override earlier ones; image rejects that carry a key mark that key as rejected."""
        for source, image_id, key in aliases:
            self.aliases[(source, image_id)] = key
        for record in rejects:
            self.rejects.append(record)
            if record.get("key") and record.get("kind") == "image":
                self.rejected_keys[record["key"]] = record["reason"]


def load_index(folder: Path, fingerprint: dict[str, Any]) -> CacheIndex:
    """The index of every visible shard of `folder`: index.h5 when valid, plus a scan of the shards it misses."""
    present = [p.name for p in sorted(folder.glob(SHARD_GLOB))]
    index = read_index_file(folder, fingerprint, set(present)) or CacheIndex()
    covered = set(index.shards)
    for name in present:
        if name not in covered:
            _scan_shard(index, folder / name, fingerprint)
    return index


def _scan_shard(index: CacheIndex, path: Path, fingerprint: dict[str, Any]) -> None:
    try:
        with open_shard(path, fingerprint) as f:  # refused before any read when it points elsewhere or is a bomb
            keys = decode_strings(f["keys"][()])  # fletcher32-checked
            aliases, rejects = read_alias_tables(f)
            index.add_shard(path.name, keys, aliases, rejects)
    except (OSError, KeyError, ValueError, RuntimeError) as exc:
        raise DamagedCacheError(path, exc) from exc


def read_index_file(folder: Path, fingerprint: dict[str, Any], present: set[str]) -> CacheIndex | None:
    """The index saved in `folder/index.h5` when it is whole and names only `present` shards, else None (a warning
    when it is unreadable, points elsewhere or holds values out of range: the shards are scanned instead)."""
    path = folder / INDEX_NAME
    if not os.path.lexists(path):
        return None
    try:
        with open_index(path) as f:  # refused before any read when it points elsewhere or holds bad values
            if f.attrs.get("fingerprint") != canonical(fingerprint):
                return None
            shards = read_strings(f, "shards")
            if not set(shards) <= present:  # a shard was removed: rebuild from the shards themselves
                return None
            index = CacheIndex(shards=shards)
            for key, s, r in zip(decode_strings(f["key"][()]), f["key_shard"][()], f["key_row"][()]):
                index.keys.setdefault(key, (int(s), int(r)))
            index.add_tables(*read_alias_tables(f))
            return index
    except (OSError, KeyError, ValueError, DamagedCacheError) as exc:
        log.warning("%s: ignoring unreadable index (%s); scanning shards", path, getattr(exc, "reason", exc))
        return None


def write_index(folder: Path, index: CacheIndex, fingerprint: dict[str, Any]) -> Path:
    """Write `folder/index.h5` (temp + fsync + rename) from `index`, and regenerate rejects.jsonl."""
    path = folder / INDEX_NAME
    keys = list(index.keys.items())
    with naming_path(path):
        f = memory_file(str(path))  # built in memory, written whole: a full disk is one OSError
        f.attrs["fingerprint"] = canonical(fingerprint)
        f.attrs["format"] = FORMAT_VERSION
        write_strings(f, "shards", index.shards)
        checked = {"chunks": True, "maxshape": (None,), "fletcher32": True}  # a flipped byte fails the read
        f.create_dataset("key", data=np.array([k for k, _ in keys], dtype="S64"), **checked)
        f.create_dataset("key_shard", data=np.array([v[0] for _, v in keys], dtype=np.int32), **checked)
        f.create_dataset("key_row", data=np.array([v[1] for _, v in keys], dtype=np.int32), **checked)
        write_alias_tables(f, [(s, i, k) for (s, i), k in index.aliases.items()], index.rejects)
        save_memory_file(f, path)
    lines = "".join(json.dumps(r, sort_keys=True) + "\n" for r in index.rejects)
    atomic_write_text(folder / "rejects.jsonl", lines)
    return path

"""The single writer of a feature-cache folder: features, aliases and rejects go into crash-safe HDF5 shards.

Each shard is written under a temporary name, flushed, fsynced and renamed whole; `.lock` keeps a second writer out.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from cache.durable import (
    FileLock,
    atomic_write_text,
    ensure_dir,
    naming_path,
    refuse_link,
    remove_stale_temps,
)
from cache.format import (
    FEATURE_NAMES,
    FORMAT_VERSION,
    NO_IMAGE,
    canonical,
    describe,
    feature_shapes,
    read_fingerprint,
    spec_of,
    memory_file,
    save_memory_file,
    write_alias_tables,
)
from cache.index import load_index, write_index
from cache.integrity import remember_verified
from exit_codes import UsageError

__all__ = ["CacheWriter", "OWN_FILES"]

OWN_FILES = ("fingerprint.json", "index.h5", "rejects.jsonl")


class CacheWriter:
    """The single writer of one fingerprint folder: rows and aliases go to a temp shard that `commit()` renames.

    Use as a context manager; holds `.lock` (another writer -> LockHeldError, exit 3). A shard is built in memory
    (at most `shard_size` rows) and written whole at commit, so a full disk is one OSError naming the shard and its
    disk, and leaves no temp file.
    """

    checksums = True  # fletcher32 per chunk of every feature dataset (benchmarks/checksum_cost.py turns it off)

    def __init__(self, cache_dir: str | os.PathLike, fingerprint: dict[str, Any], shard_size: int = 512,
                 dtype: str = "float16"):
        if shard_size < 1:
            raise ValueError(f"expected shard_size >= 1, got {shard_size}")
        ensure_dir(cache_dir, "cache_dir")
        self.folder = ensure_dir(Path(cache_dir) / fingerprint["id"], "feature-cache folder")
        for name in OWN_FILES:  # refused before any work: a link where the writer keeps its own file
            refuse_link(self.folder / name)
        self.fingerprint = fingerprint
        self.spec = spec_of(fingerprint)
        self.shard_size = shard_size
        self.dtype = np.dtype(dtype)
        self._lock = FileLock(self.folder, "extract-features run").acquire()
        fp_path = self.folder / "fingerprint.json"
        if fp_path.is_file():
            existing = read_fingerprint(self.folder)
            if canonical(existing) != canonical(fingerprint):
                self._release()
                raise UsageError(f"{fp_path}: cache folder is for {describe(existing)}, not {describe(fingerprint)}; "
                                 "delete the folder or use another cache_dir")
        else:
            atomic_write_text(fp_path, json.dumps(fingerprint, indent=2, sort_keys=True) + "\n")
        remove_stale_temps(self.folder)  # shards, fingerprint.json, index.h5 ... of a killed run; never read
        self._seq = 0
        self._file: h5py.File | None = None
        self._rows = 0
        self._keys: list[str] = []
        self._aliases: list[tuple[str, str, str]] = []
        self._rejects: list[dict[str, Any]] = []
        self.committed: list[Path] = []
        self.rows_written = 0

    def __enter__(self) -> "CacheWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    # ---- adding --------------------------------------------------------------------------------------------------
    def add_rows(self, batch: dict[str, np.ndarray]) -> None:
        """Append features of N keys: batch["key"] (N,) and the FEATURE_NAMES arrays with a leading N axis."""
        keys = [str(k) for k in batch["key"]]
        n = len(keys)
        for name, row_shape in feature_shapes(self.spec).items():
            shape = (n,) + row_shape
            if tuple(np.shape(batch[name])) != shape:
                raise ValueError(f"{name}: expected shape {shape}, got {tuple(np.shape(batch[name]))}")
        with naming_path(self.folder):
            self._add_rows(keys, batch)

    def _add_rows(self, keys: list[str], batch: dict[str, np.ndarray]) -> None:
        n, start = len(keys), 0
        while start < n:
            if self._file is not None and self._rows >= self.shard_size:
                self.commit()
            if self._file is None:
                self._open_shard()
            take = min(n - start, self.shard_size - self._rows)
            sl = slice(start, start + take)
            f, r = self._file, self._rows
            for name in ("keys",) + FEATURE_NAMES:
                f[name].resize(r + take, axis=0)
            f["keys"][r:r + take] = np.array(keys[sl], dtype="S64")
            for name in FEATURE_NAMES:
                arr = np.asarray(batch[name][sl])
                f[name][r:r + take] = arr.astype(bool) if name.endswith("_mask") else arr.astype(self.dtype)
            self._keys.extend(keys[sl])
            self._rows += take
            self.rows_written += take
            start += take

    def maybe_commit(self) -> Path | None:
        """Commit the current shard if it is full (call after adding the aliases of the rows just added)."""
        if self._file is not None and self._rows >= self.shard_size:
            return self.commit()
        return None

    def add_alias(self, source: str, image_id: str, key: str | None) -> None:
        """Map (source, image id) to a content key (None/"" = no image). Committed with the next shard."""
        self._aliases.append((str(source), str(image_id), key or NO_IMAGE))

    def add_reject(self, record: dict[str, Any]) -> None:
        """Record a rejected image or crop: {"source", "image_id", "path", "kind", "reason", "key"(optional)}."""
        self._rejects.append(dict(record))

    @property
    def pending(self) -> int:
        return self._rows + len(self._aliases) + len(self._rejects)

    # ---- shards ------------------------------------------------------------------------------------------------
    def _open_shard(self) -> None:
        self._seq += 1
        name = f"shard-{time.time_ns():020d}-{os.getpid()}-{self._seq:05d}.h5"
        self._final = self.folder / name
        f = memory_file(str(self._final))
        # fletcher32: HDF5 stores a checksum per chunk and verifies it on every read (a flipped byte -> OSError)
        f.create_dataset("keys", shape=(0,), maxshape=(None,), dtype="S64", chunks=(256,), fletcher32=self.checksums)
        for name, shape in feature_shapes(self.spec).items():
            dtype = bool if name.endswith("_mask") else self.dtype
            # one chunk per row: a reader fetches one image with one read per dataset
            f.create_dataset(name, shape=(0,) + shape, maxshape=(None,) + shape, dtype=dtype,
                             chunks=(1,) + shape if shape and all(shape) else (256,) + shape, fletcher32=self.checksums)
        self._file = f
        self._rows = 0
        self._keys = []

    def commit(self) -> Path | None:
        """Finish the current shard (rows + pending aliases/rejects): flush, fsync, rename. None if nothing pending."""
        if self._file is None and not self._aliases and not self._rejects:
            return None
        with naming_path(self._final if self._file is not None else self.folder):
            return self._commit()

    def _commit(self) -> Path:
        if self._file is None:
            self._open_shard()
        f = self._file
        assert f is not None
        write_alias_tables(f, self._aliases, self._rejects)
        f.attrs["fingerprint"] = canonical(self.fingerprint)
        f.attrs["fingerprint_id"] = self.fingerprint["id"]
        f.attrs["fingerprint_full"] = json.dumps(self.fingerprint, sort_keys=True)  # readable, for error messages
        f.attrs["format"] = FORMAT_VERSION
        f.attrs["rows"] = self._rows
        self._file = None
        final = self._final
        save_memory_file(f, final)  # temp + fsync + rename: the shard becomes visible here, whole
        self.committed.append(final)
        self._rows, self._keys, self._aliases, self._rejects = 0, [], [], []
        return final

    def close(self) -> None:
        """Commit what is pending, write the index and rejects.jsonl, release the lock."""
        try:
            self.commit()
            if self.committed or not (self.folder / "index.h5").exists():
                on_disk = read_fingerprint(self.folder)  # what a reader checks shards against
                write_index(self.folder, load_index(self.folder, on_disk), on_disk)
            if self.committed:
                remember_verified(self.folder, self.committed)
        finally:
            self._release()

    def abort(self) -> None:
        """Drop the unfinished shard (finished ones stay) and release the lock."""
        try:
            if self._file is not None:
                self._file.close()  # in memory: nothing on disk to remove
        finally:
            self._file = None
            self._release()

    def _release(self) -> None:
        self._lock.release()

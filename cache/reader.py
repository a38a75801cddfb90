"""Reading the HDF5 feature cache: CLIP features keyed by the SHA-256 of image bytes, one folder per encoder fingerprint.

`find_cache` (read-only: what train, evaluate and tag use) and `open_cache` find a fingerprint folder, `FeatureCache`
reads it lazily through `cache.safe_open`; `cache.writer.CacheWriter` writes it.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

import h5py
import numpy as np

from cache.format import FEATURE_NAMES, FORMAT_VERSION, NO_IMAGE, describe, read_fingerprint, spec_of
from cache.index import CacheIndex, load_index
from cache.memo import touch_read
from cache.safe_open import open_shard
from exit_codes import DamagedCacheError, UsageError
from rpihmif.visual import VisualLayout

__all__ = ["FORMAT_VERSION", "FEATURE_NAMES", "NO_IMAGE", "find_cache", "open_cache", "FeatureCache",
           "fingerprint_folders"]


def fingerprint_folders(cache_dir: str | os.PathLike) -> list[Path]:
    """Fingerprint folders under `cache_dir` (or `[cache_dir]` when it is one itself)."""
    root = Path(cache_dir)
    if (root / "fingerprint.json").is_file():
        return [root]
    if not root.is_dir():
        return []
    return sorted(d for d in root.iterdir() if d.is_dir() and (d / "fingerprint.json").is_file())


def find_cache(cache_dir: str | os.PathLike, fingerprint_id: str | Callable[[], str] | None = None) -> "FeatureCache | None":
    """The feature cache of one encoder for a reading stage, or None when `cache_dir` holds none; writes nothing.

    `fingerprint_id` may be a function (e.g. one that fingerprints the configured encoder): it is called only when
    there is a cache to choose from. Then as `open_cache`.
    """
    if not fingerprint_folders(cache_dir):
        return open_cache(cache_dir)  # None, or the UsageError for a file where the folder belongs
    return open_cache(cache_dir, fingerprint_id() if callable(fingerprint_id) else fingerprint_id)


def open_cache(cache_dir: str | os.PathLike, fingerprint_id: str | None = None) -> "FeatureCache | None":
    """The feature cache of one encoder under `cache_dir`, or None when there is none yet.

    With `fingerprint_id` (e.g. a checkpoint's visual fingerprint): that encoder's folder; a cache that only holds
    other encoders' features raises UsageError naming both. Without: the only fingerprint folder (several -> UsageError).
    """
    if Path(cache_dir).exists() and not Path(cache_dir).is_dir():
        raise UsageError(f"cache_dir {cache_dir} is a file, not a folder; point cache_dir at the feature-cache folder")
    folders = fingerprint_folders(cache_dir)
    if not folders:
        return None
    if fingerprint_id:
        for folder in folders:
            if folder.name == fingerprint_id or read_fingerprint(folder)["id"] == fingerprint_id:
                return FeatureCache(folder)
        have = "; ".join(describe(read_fingerprint(f)) for f in folders)
        raise UsageError(f"feature cache {cache_dir} has no features of encoder {fingerprint_id} (the model's); it holds "
                         f"{have}. Run extract-features with the model's vit_name and sizes, or point cache_dir at the "
                         "cache the model was trained with.")
    if len(folders) > 1:
        have = "; ".join(describe(read_fingerprint(f)) for f in folders)
        raise UsageError(f"feature cache {cache_dir} holds several encoders: {have}; pass the fingerprint id "
                         "(or point cache_dir at one <cache_dir>/<fingerprint id> folder)")
    return FeatureCache(folders[0])


class FeatureCache:
    """Reader of one fingerprint folder. h5py files open lazily in the reading process (safe to pass to workers)."""

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)
        self.fingerprint: dict[str, Any] = read_fingerprint(self.folder)
        self.fingerprint_id: str = self.fingerprint["id"]
        self.spec: VisualLayout = spec_of(self.fingerprint)
        self._index: CacheIndex | None = None
        self._handles: dict[int, h5py.File] = {}
        self._rows: dict[int, int] = {}  # rows of each open shard (checked by open_shard)
        self._pid = os.getpid()

    # ---- public reader API -------------------------------------------------------------------------------------
    @property
    def info(self) -> dict[str, Any]:
        """Readable fingerprint info: encoder ("random-init ..." or its folder) and spec."""
        return self.fingerprint["info"]

    def get(self, key: str | None) -> dict[str, np.ndarray] | None:
        """Features of a content key (dict of numpy arrays as in rpihmif.visual), None when absent or no image."""
        if not key:
            return None
        loc = self.index.keys.get(key)
        if loc is None:
            return None
        f = self._handle(loc[0])
        try:  # every chunk read is verified against its fletcher32 checksum
            if loc[1] >= self._rows[loc[0]]:
                raise IndexError(f"index.h5 points at row {loc[1]} of {self._rows[loc[0]]}")
            return {name: np.asarray(f[name][loc[1]]) for name in FEATURE_NAMES}
        except (OSError, KeyError, ValueError, IndexError, RuntimeError) as exc:
            raise DamagedCacheError(self.folder / self.index.shards[loc[0]], exc) from exc

    def key_for(self, source: str, image_id: str) -> str | None:
        """Content key of an alias (dataset name or "dump", image id); None when unknown or the tweet has no image."""
        key = self.index.aliases.get((source, str(image_id)))
        return key or None

    def alias_status(self, source: str, image_id: str) -> str:
        """"features", "no image" (missing or rejected) or "unknown" (not extracted)."""
        key = self.index.aliases.get((source, str(image_id)))
        if key is None:
            return "unknown"
        return "features" if key and key in self.index.keys else "no image"

    def lookup(self, aliases: list[tuple[str, str]]) -> list[dict[str, np.ndarray] | None]:
        """Features per alias, None for no image or unknown; for `rpihmif.visual.collate_visual`."""
        return [self.get(self.key_for(source, image_id)) for source, image_id in aliases]

    def __contains__(self, key: str) -> bool:
        return key in self.index.keys

    def __len__(self) -> int:
        return len(self.index.keys)

    def keys(self) -> list[str]:
        return list(self.index.keys)

    def aliases(self) -> dict[tuple[str, str], str]:
        return dict(self.index.aliases)

    def rejects(self) -> list[dict[str, Any]]:
        return list(self.index.rejects)

    def rejected_keys(self) -> dict[str, str]:
        return dict(self.index.rejected_keys)

    def refresh(self) -> "FeatureCache":
        """See shards committed since the index was read."""
        self.close()
        self._index = None
        return self

    def close(self) -> None:
        if self._pid == os.getpid():
            for f in self._handles.values():
                try:
                    f.close()
                except Exception:  # noqa: BLE001 -- closing is best effort
                    pass
        self._handles = {}

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_handles"] = {}
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._pid = os.getpid()

    def __repr__(self) -> str:
        return f"FeatureCache({self.folder}, fingerprint={self.fingerprint_id}, spec={self.spec})"

    # ---- index and shards --------------------------------------------------------------------------------------
    @property
    def index(self) -> CacheIndex:
        if self._index is None:
            self._index = load_index(self.folder, self.fingerprint)
            touch_read(self.folder)  # "last read" for `cache info` / `cache prune --unused-since`
        return self._index

    def _handle(self, shard: int) -> h5py.File:
        if self._pid != os.getpid():  # forked: never reuse the parent's HDF5 handles
            self._handles, self._pid = {}, os.getpid()
        f = self._handles.get(shard)
        if f is None:
            # truncated, overwritten, gone since the index, pointing elsewhere or a bomb: DamagedCacheError
            f = open_shard(self.folder / self.index.shards[shard], self.fingerprint)
            self._handles[shard], self._rows[shard] = f, f["keys"].shape[0]
        return f

"""The HDF5 feature cache: CLIP features keyed by the SHA-256 of image bytes, one folder per encoder fingerprint.

`CacheWriter` commits crash-safe shards (temp name, fsync, rename); `FeatureCache` (via `open_cache`) reads them lazily.

Layout of `<cache_dir>/<fingerprint id>/`:
  fingerprint.json        the encoder fingerprint (id, hashed part, readable info) -- written once, checked on every read
  shard-<ns>-<pid>-<n>.h5  finished shards; each holds rows of features, the aliases and rejects it committed, and the
                          fingerprint as an attribute. A shard is visible only after its rename, so readers never see
                          half a shard; the aliases of a key are always in the key's shard or a later one.
  index.h5                a rebuildable summary of the shards it names (keys -> shard/row, aliases, rejects); shards
                          it does not name are scanned directly, so a lost or stale index is only slower, never wrong.
  rejects.jsonl           one line per rejected image or crop with its reason (regenerated from the shards)
  .lock                   held by the single writer run (a second writer exits 3)
Shard datasets: keys (N,) S64; orig (N, Lo, Dv); orig_mask (N,); grounding (N, K, Lg, Dv); grounding_mask (N, K);
rcnn (N, K, Lr, Dv); rcnn_mask (N, K); alias_source/alias_id/alias_key (M,) str ("" key = no image); rejects (R,) JSON str.
"""
from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import h5py
import numpy as np

from rpihmif.visual import VisualSpec

from .errors import LockHeldError, PipelineError, UsageError

__all__ = ["FORMAT_VERSION", "FEATURE_NAMES", "NO_IMAGE", "open_cache", "FeatureCache", "CacheWriter",
           "fingerprint_folders"]

log = logging.getLogger("rpihmif.feature_cache")

FORMAT_VERSION = 1
FEATURE_NAMES = ("orig", "orig_mask", "grounding", "grounding_mask", "rcnn", "rcnn_mask")
NO_IMAGE = ""  # alias value of a tweet whose image is missing or rejected
SHARD_GLOB = "shard-*.h5"
_STR = h5py.string_dtype("utf-8")


def _canonical(fingerprint: dict[str, Any]) -> str:
    """The part of a fingerprint that must match, as a canonical JSON string."""
    return json.dumps({"id": fingerprint["id"], "hashed": fingerprint["hashed"]}, sort_keys=True, separators=(",", ":"))


def _describe(fingerprint: dict[str, Any]) -> str:
    info = fingerprint.get("info", {})
    h = fingerprint.get("hashed", {})
    return (f"{fingerprint.get('id')} [{info.get('encoder', '?')}; sizes {h.get('image_size')}/{h.get('aux_size')}/"
            f"{h.get('rcnn_size')}; {h.get('dtype')}; weights {str(h.get('weights_sha256', '?'))[:12]}]")


def _spec_of(fingerprint: dict[str, Any]) -> VisualSpec:
    return VisualSpec(**fingerprint["info"]["spec"])


def _fsync_path(path: Path, directory: bool = False) -> None:
    fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if directory else 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_path(path.parent, directory=True)


def _read_fingerprint(folder: Path) -> dict[str, Any]:
    path = folder / "fingerprint.json"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        data["id"], data["hashed"], data["info"]["spec"]  # noqa: B018 -- required fields
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise UsageError(f"{path}: unreadable feature-cache fingerprint ({exc}); delete the folder {folder} "
                         "and rerun extract-features") from exc
    return data


def fingerprint_folders(cache_dir: str | os.PathLike) -> list[Path]:
    """Fingerprint folders under `cache_dir` (or `[cache_dir]` when it is one itself)."""
    root = Path(cache_dir)
    if (root / "fingerprint.json").is_file():
        return [root]
    if not root.is_dir():
        return []
    return sorted(d for d in root.iterdir() if d.is_dir() and (d / "fingerprint.json").is_file())


def open_cache(cache_dir: str | os.PathLike, fingerprint_id: str | None = None) -> "FeatureCache | None":
    """The feature cache of one encoder under `cache_dir`, or None when there is none yet.

    With `fingerprint_id` (e.g. a checkpoint's visual fingerprint): that encoder's folder; a cache that only holds
    other encoders' features raises UsageError naming both. Without: the only fingerprint folder (several -> UsageError).
    """
    folders = fingerprint_folders(cache_dir)
    if not folders:
        return None
    if fingerprint_id:
        for folder in folders:
            if folder.name == fingerprint_id or _read_fingerprint(folder)["id"] == fingerprint_id:
                return FeatureCache(folder)
        have = "; ".join(_describe(_read_fingerprint(f)) for f in folders)
        raise UsageError(f"feature cache {cache_dir} has no features of encoder {fingerprint_id} (the model's); it holds "
                         f"{have}. Run extract-features with the model's vit_name and sizes, or point cache_dir at the "
                         "cache the model was trained with.")
    if len(folders) > 1:
        have = "; ".join(_describe(_read_fingerprint(f)) for f in folders)
        raise UsageError(f"feature cache {cache_dir} holds several encoders: {have}; pass the fingerprint id "
                         "(or point cache_dir at one <cache_dir>/<fingerprint id> folder)")
    return FeatureCache(folders[0])


@dataclass
class _Index:
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
        for source, image_id, key in aliases:
            self.aliases[(source, image_id)] = key
        for record in rejects:
            self.rejects.append(record)
            if record.get("key") and record.get("kind") == "image":
                self.rejected_keys[record["key"]] = record["reason"]


def _decode(values: np.ndarray) -> list[str]:
    return [v.decode() if isinstance(v, bytes) else str(v) for v in values]


class FeatureCache:
    """Reader of one fingerprint folder. h5py files open lazily in the reading process (safe to pass to workers)."""

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)
        self.fingerprint: dict[str, Any] = _read_fingerprint(self.folder)
        self.fingerprint_id: str = self.fingerprint["id"]
        self.spec: VisualSpec = _spec_of(self.fingerprint)
        self._expected = _canonical(self.fingerprint)
        self._index: _Index | None = None
        self._handles: dict[int, h5py.File] = {}
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
        row = loc[1]
        return {name: np.asarray(f[name][row]) for name in FEATURE_NAMES}

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

    # ---- index -------------------------------------------------------------------------------------------------
    @property
    def index(self) -> _Index:
        if self._index is None:
            self._index = self._build_index()
        return self._index

    def _check(self, attrs: Any, path: Path) -> None:
        found = attrs.get("fingerprint")
        found = found.decode() if isinstance(found, bytes) else found
        if found != self._expected:
            try:
                full = attrs.get("fingerprint_full")
                other = json.loads(full.decode() if isinstance(full, bytes) else full or found)
                other.setdefault("info", {})
                desc = _describe(other)
            except (TypeError, ValueError):
                desc = repr(found)[:200]
            raise UsageError(f"{path}: written by encoder {desc}, but this cache folder is for "
                             f"{_describe(self.fingerprint)}; features of two encoders never mix: move {path.name} "
                             f"to its own cache folder or delete it and rerun extract-features")

    def _shard_paths(self) -> list[Path]:
        return sorted(self.folder.glob(SHARD_GLOB))

    def _build_index(self) -> _Index:
        present = [p.name for p in self._shard_paths()]
        index = self._read_index_file(set(present)) or _Index()
        covered = set(index.shards)
        for name in present:
            if name not in covered:
                self._scan_shard(index, self.folder / name)
        return index

    def _scan_shard(self, index: _Index, path: Path) -> None:
        try:
            with h5py.File(path, "r") as f:
                self._check(f.attrs, path)
                keys = _decode(f["keys"][()])
                aliases = zip(_decode(f["alias_source"][()]), _decode(f["alias_id"][()]), _decode(f["alias_key"][()]))
                rejects = [json.loads(r) for r in _decode(f["rejects"][()])]
                index.add_shard(path.name, keys, list(aliases), rejects)
        except (OSError, KeyError) as exc:
            raise PipelineError(f"{path}: unreadable feature-cache shard ({exc}); delete it and rerun "
                                "extract-features (only its images are recomputed)") from exc

    def _read_index_file(self, present: set[str]) -> _Index | None:
        path = self.folder / "index.h5"
        if not path.is_file():
            return None
        try:
            with h5py.File(path, "r") as f:
                if f.attrs.get("fingerprint") != self._expected:
                    return None
                shards = _decode(f["shards"][()])
                if not set(shards) <= present:  # a shard was removed: rebuild from the shards themselves
                    return None
                index = _Index(shards=shards)
                for key, s, r in zip(_decode(f["key"][()]), f["key_shard"][()], f["key_row"][()]):
                    index.keys.setdefault(key, (int(s), int(r)))
                for src, iid, key in zip(_decode(f["alias_source"][()]), _decode(f["alias_id"][()]),
                                         _decode(f["alias_key"][()])):
                    index.aliases[(src, iid)] = key
                for raw in _decode(f["rejects"][()]):
                    record = json.loads(raw)
                    index.rejects.append(record)
                    if record.get("key") and record.get("kind") == "image":
                        index.rejected_keys[record["key"]] = record["reason"]
                return index
        except (OSError, KeyError, ValueError) as exc:
            log.warning("%s: ignoring unreadable index (%s); scanning shards", path, exc)
            return None

    def save_index(self) -> Path:
        """Write index.h5 (temp + rename) summarising every visible shard, and regenerate rejects.jsonl."""
        index = self.refresh().index
        path = self.folder / "index.h5"
        tmp = self.folder / f".index.h5.{os.getpid()}.tmp"
        keys = list(index.keys.items())
        aliases = list(index.aliases.items())
        with h5py.File(tmp, "w") as f:
            f.attrs["fingerprint"] = self._expected
            f.attrs["format"] = FORMAT_VERSION
            f.create_dataset("shards", data=np.array(index.shards, dtype=object), dtype=_STR)
            f.create_dataset("key", data=np.array([k for k, _ in keys], dtype="S64"))
            f.create_dataset("key_shard", data=np.array([v[0] for _, v in keys], dtype=np.int32))
            f.create_dataset("key_row", data=np.array([v[1] for _, v in keys], dtype=np.int32))
            f.create_dataset("alias_source", data=np.array([a[0] for a, _ in aliases], dtype=object), dtype=_STR)
            f.create_dataset("alias_id", data=np.array([a[1] for a, _ in aliases], dtype=object), dtype=_STR)
            f.create_dataset("alias_key", data=np.array([k for _, k in aliases], dtype=object), dtype=_STR)
            f.create_dataset("rejects", data=np.array([json.dumps(r, sort_keys=True) for r in index.rejects],
                                                      dtype=object), dtype=_STR)
            f.flush()
        _fsync_path(tmp)
        os.replace(tmp, path)
        lines = "".join(json.dumps(r, sort_keys=True) + "\n" for r in index.rejects)
        _atomic_write_text(self.folder / "rejects.jsonl", lines)
        return path

    def _handle(self, shard: int) -> h5py.File:
        if self._pid != os.getpid():  # forked: never reuse the parent's HDF5 handles
            self._handles, self._pid = {}, os.getpid()
        f = self._handles.get(shard)
        if f is None:
            path = self.folder / self.index.shards[shard]
            f = h5py.File(path, "r")
            self._check(f.attrs, path)
            self._handles[shard] = f
        return f


class CacheWriter:
    """The single writer of one fingerprint folder: rows and aliases go to a temp shard that `commit()` renames.

    Use as a context manager; holds `.lock` (another writer -> LockHeldError, exit 3).
    """

    def __init__(self, cache_dir: str | os.PathLike, fingerprint: dict[str, Any], shard_size: int = 512,
                 dtype: str = "float16"):
        if shard_size < 1:
            raise ValueError(f"expected shard_size >= 1, got {shard_size}")
        self.folder = Path(cache_dir) / fingerprint["id"]
        self.folder.mkdir(parents=True, exist_ok=True)
        self.fingerprint = fingerprint
        self.spec = _spec_of(fingerprint)
        self.shard_size = shard_size
        self.dtype = np.dtype(dtype)
        self._lock_fd = os.open(self.folder / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(self._lock_fd)
            if exc.errno in (errno.EAGAIN, errno.EACCES):
                raise LockHeldError(f"another extract-features run is writing {self.folder}; wait for it to finish "
                                    "(or remove nothing: the lock is released when that process exits)") from exc
            raise
        fp_path = self.folder / "fingerprint.json"
        if fp_path.is_file():
            existing = _read_fingerprint(self.folder)
            if _canonical(existing) != _canonical(fingerprint):
                self._release()
                raise UsageError(f"{fp_path}: cache folder is for {_describe(existing)}, not {_describe(fingerprint)}; "
                                 "delete the folder or use another cache_dir")
        else:
            _atomic_write_text(fp_path, json.dumps(fingerprint, indent=2, sort_keys=True) + "\n")
        for stale in self.folder.glob(".shard-*.tmp"):  # left by a killed run; never visible to readers
            stale.unlink(missing_ok=True)
        self._seq = 0
        self._file: h5py.File | None = None
        self._tmp: Path | None = None
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
        s = self.spec
        expect = {"orig": (n, s.orig_tokens, s.dim), "orig_mask": (n,),
                  "grounding": (n, s.max_crops, s.grounding_tokens, s.dim), "grounding_mask": (n, s.max_crops),
                  "rcnn": (n, s.max_crops, s.rcnn_tokens, s.dim), "rcnn_mask": (n, s.max_crops)}
        for name, shape in expect.items():
            if tuple(np.shape(batch[name])) != shape:
                raise ValueError(f"{name}: expected shape {shape}, got {tuple(np.shape(batch[name]))}")
        start = 0
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
        s, k = self.spec, self.spec.max_crops
        self._seq += 1
        name = f"shard-{time.time_ns():020d}-{os.getpid()}-{self._seq:05d}.h5"
        self._tmp = self.folder / f".{name}.tmp"
        f = h5py.File(self._tmp, "w")
        shapes = {"orig": (s.orig_tokens, s.dim), "orig_mask": (), "grounding": (k, s.grounding_tokens, s.dim),
                  "grounding_mask": (k,), "rcnn": (k, s.rcnn_tokens, s.dim), "rcnn_mask": (k,)}
        f.create_dataset("keys", shape=(0,), maxshape=(None,), dtype="S64", chunks=(256,))
        for name, shape in shapes.items():
            dtype = bool if name.endswith("_mask") else self.dtype
            # one chunk per row: a reader fetches one image with one read per dataset
            f.create_dataset(name, shape=(0,) + shape, maxshape=(None,) + shape, dtype=dtype,
                             chunks=(1,) + shape if shape and all(shape) else (256,) + shape)
        self._file = f
        self._rows = 0
        self._keys = []

    def commit(self) -> Path | None:
        """Finish the current shard (rows + pending aliases/rejects): flush, fsync, rename. None if nothing pending."""
        if self._file is None and not self._aliases and not self._rejects:
            return None
        if self._file is None:
            self._open_shard()
        f, tmp = self._file, self._tmp
        assert f is not None and tmp is not None
        f.create_dataset("alias_source", data=np.array([a[0] for a in self._aliases], dtype=object), dtype=_STR)
        f.create_dataset("alias_id", data=np.array([a[1] for a in self._aliases], dtype=object), dtype=_STR)
        f.create_dataset("alias_key", data=np.array([a[2] for a in self._aliases], dtype=object), dtype=_STR)
        f.create_dataset("rejects", data=np.array([json.dumps(r, sort_keys=True) for r in self._rejects],
                                                  dtype=object), dtype=_STR)
        f.attrs["fingerprint"] = _canonical(self.fingerprint)
        f.attrs["fingerprint_id"] = self.fingerprint["id"]
        f.attrs["fingerprint_full"] = json.dumps(self.fingerprint, sort_keys=True)  # readable, for error messages
        f.attrs["format"] = FORMAT_VERSION
        f.attrs["rows"] = self._rows
        f.flush()
        f.close()
        self._file = None
        _fsync_path(tmp)
        final = self.folder / tmp.name[1:-len(".tmp")]
        os.replace(tmp, final)  # the shard becomes visible here, whole
        _fsync_path(self.folder, directory=True)
        self.committed.append(final)
        self._tmp, self._rows, self._keys, self._aliases, self._rejects = None, 0, [], [], []
        return final

    def close(self) -> None:
        """Commit what is pending, write the index and rejects.jsonl, release the lock."""
        try:
            self.commit()
            if self.committed or not (self.folder / "index.h5").exists():
                FeatureCache(self.folder).save_index()
        finally:
            self._release()

    def abort(self) -> None:
        """Drop the unfinished shard (finished ones stay) and release the lock."""
        try:
            if self._file is not None:
                self._file.close()
            if self._tmp is not None:
                self._tmp.unlink(missing_ok=True)
        finally:
            self._file = self._tmp = None
            self._release()

    def _release(self) -> None:
        if self._lock_fd is not None:
            try:
                fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
            finally:
                os.close(self._lock_fd)
                self._lock_fd = None

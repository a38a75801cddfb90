"""Work items of extract-features: the images (and crops) that benchmark splits and tweet dumps reference.

Items are resolved safely inside their roots, hashed to their content key, and cut into `ClipFeaturizer` batches.
"""
from __future__ import annotations

import logging
import os
import re
import stat
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from cache.durable import sha256_file
from cache import DUMP_SOURCE
from exit_codes import InputError
from pipeline.extract.featurizer import pad_crops
from cache import FingerprintMemo
from pipeline.io.safe_paths import safe_resolve
from pipeline.stage_config import ExtractConfig

__all__ = ["WorkItem", "benchmark_items", "dump_items", "hash_items", "item_batches"]

log = logging.getLogger("rpihmif.extract")

_IMGID = re.compile(r"^\ufeff?IMGID:(.*)$")


@dataclass
class WorkItem:
    """One image reference (a tweet's image): where it is, its crops and the alias it is known by."""

    source: str
    image_id: str
    path: Path | None  # resolved; None when rejected before reading
    grounding: list[str] = field(default_factory=list)  # resolved existing crop paths
    rcnn: list[str] = field(default_factory=list)
    reason: str = ""  # reject reason of the original ("" = fine so far)
    key: str = ""


def _split_image_ids(path: Path) -> list[tuple[int, str]]:
    """(line, IMGID) of a CoNLL split in file order (only the IMGID lines are read: labels do not matter here)."""
    ids: list[tuple[int, str]] = []
    with open(path, encoding="utf-8", errors="replace") as f:
        for number, line in enumerate(f, 1):
            m = _IMGID.match(line.rstrip("\r\n"))
            if m and m.group(1).strip():
                ids.append((number, m.group(1).strip()))
    return ids


def _crop_reject(source: str, image_id: str, kind: str, path: str, reason: str, **extra: Any) -> dict[str, Any]:
    return {"source": source, "image_id": image_id, "kind": kind, "path": path, "reason": reason, **extra}


def benchmark_items(config: ExtractConfig, crop_rejects: list[dict[str, Any]]) -> Iterator[WorkItem]:
    """One item per distinct image of the configured splits; missing or unsafe crops go to `crop_rejects`."""
    from pipeline.io.dataset import BenchmarkDataset
    from pipeline.io.safe_paths import UnsafePathError

    ds = BenchmarkDataset(config.data_dir, config.dataset, config.vision.max_crops)
    k = config.vision.max_crops
    present = ds.splits()
    if not ds.images_dir.is_dir():
        log.warning("%s: no images folder (%s): text-only dataset, no benchmark images to encode", ds.root,
                    ds.images_dir.name)
        return
    seen: set[str] = set()
    for split in config.splits:
        split = ds.canonical_split(split)
        if split not in present:
            log.info("%s: no %s split; skipped", ds.root, split)
            continue
        for line, image_id in _split_image_ids(ds.split_file(split)):
            if "\x00" in image_id:  # HDF5 strings cannot hold NUL: one reject, the run goes on
                crop_rejects.append({"source": ds.name, "kind": "record", "file": str(ds.split_file(split)),
                                     "line": line, "reason": "NUL byte in the IMGID"})
                continue
            alias = ds.image_name(image_id)
            if alias in seen:
                continue
            seen.add(alias)
            item = WorkItem(ds.name, alias, None)
            try:
                item.path = ds.image_path(image_id)
                if item.path is None:
                    item.reason = "missing"
            except UnsafePathError:
                item.reason = "unsafe_path"
            if not item.reason:
                for kind, entries in (("grounding", lambda: ds.grounding_entries(split, image_id)),
                                      ("rcnn", lambda: ds.rcnn_entries(image_id))):
                    try:
                        listed = entries()[:k]
                    except UnsafePathError as exc:
                        crop_rejects.append(_crop_reject(ds.name, alias, kind, "", "unsafe_path",
                                                         detail=str(exc)[:300]))
                        continue
                    for name, path in listed:
                        if path.is_file():
                            getattr(item, kind).append(str(path))
                        else:
                            crop_rejects.append(_crop_reject(ds.name, alias, kind, str(name), "missing"))
            yield item


def dump_items(config: ExtractConfig, dumps: list[Path], crop_rejects: list[dict[str, Any]],
               record_rejects: list[dict[str, Any]]) -> Iterator[WorkItem]:
    """One item per distinct image path of the dumps; bad records -> `record_rejects`, bad crops -> `crop_rejects`."""
    from pipeline.io.dumps import Reject, iter_dump

    fields = config.dump
    k = config.vision.max_crops
    seen: set[str] = set()
    for dump in dumps:
        dump = Path(dump)
        if not dump.is_file():
            raise InputError(f"{dump}: dump file not found; pass existing JSONL(.gz) files with --dump")
        root = Path(config.dump.image_root) if config.dump.image_root else dump.resolve().parent
        for rec in iter_dump(dump, fields, unique_ids=False):  # only image paths matter here, not ids
            if isinstance(rec, Reject):
                record_rejects.append({"source": DUMP_SOURCE, "kind": "record", "file": rec.file, "line": rec.line,
                                       "id": rec.id, "reason": rec.reason})
                continue
            if not rec.image or rec.image in seen:
                continue
            seen.add(rec.image)
            item = WorkItem(DUMP_SOURCE, rec.image, None)
            try:
                item.path = safe_resolve(root, rec.image)
            except InputError:
                item.reason = "unsafe_path"
            if not item.reason:
                for kind, paths in (("grounding", rec.crops), ("rcnn", rec.rcnn)):
                    for p in paths[:k]:
                        try:
                            resolved = safe_resolve(root, p)
                        except InputError:
                            crop_rejects.append(_crop_reject(DUMP_SOURCE, rec.image, kind, p, "unsafe_path"))
                            continue
                        if resolved.is_file():
                            getattr(item, kind).append(str(resolved))
                        else:
                            crop_rejects.append(_crop_reject(DUMP_SOURCE, rec.image, kind, p, "missing"))
            yield item


def _stat(path: str) -> tuple[os.stat_result | None, str]:
    """(stat, "") of a non-empty regular file, or (None, reject reason)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None, "missing"
    except OSError:
        return None, "unreadable"
    if not stat.S_ISREG(st.st_mode):
        return None, "not_a_file"
    return (st, "") if st.st_size else (None, "empty")


def _hash(path: str) -> str:
    try:
        return sha256_file(path)[0]
    except OSError:
        return ""


def hash_items(items: list[WorkItem], memo: FingerprintMemo, threads: int = 4) -> None:
    """Fill `key` (sha256 of the file) or `reason` for each item; files the memo knows unchanged are not read."""
    result: dict[str, tuple[str, str]] = {}
    misses: list[tuple[str, os.stat_result]] = []
    for path in sorted({str(it.path) for it in items if it.path is not None and not it.reason}):
        st, reason = _stat(path)
        known = memo.lookup(path, st) if st is not None else None
        if st is None or known:
            result[path] = (known or "", reason)
        else:
            misses.append((path, st))
    with ThreadPoolExecutor(max_workers=threads) as pool:
        for (path, st), digest in zip(misses, pool.map(_hash, [p for p, _ in misses])):
            result[path] = (digest, "" if digest else "unreadable")
            if digest:
                memo.remember(path, st, digest)
    for it in items:
        if it.path is not None and not it.reason:
            it.key, it.reason = result[str(it.path)]


def item_batches(items: list[WorkItem], batch_size: int, k: int) -> Iterator[dict[str, np.ndarray]]:
    """`ClipFeaturizer` input batches of `batch_size` items: "key", "path" (B,), "grounding"/"rcnn" (B, k)."""
    for start in range(0, len(items), batch_size):
        chunk = items[start:start + batch_size]
        yield {"key": np.array([it.key for it in chunk], dtype=object),
               "path": np.array([str(it.path) for it in chunk], dtype=object),
               "grounding": np.array([pad_crops(it.grounding, k) for it in chunk], dtype=object).reshape(len(chunk), k),
               "rcnn": np.array([pad_crops(it.rcnn, k) for it in chunk], dtype=object).reshape(len(chunk), k)}

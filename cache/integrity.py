"""Integrity of a feature-cache folder: read every shard back against its checksums and set damaged shards aside.

extract-features runs `repair_folder` before planning, so a rerun recomputes what a damaged shard held; shards that
passed are remembered in the cache's stamp memo (`cache.memo`), so only changed shards are read again.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Iterable

from cache.durable import file_stamp
from cache.format import FEATURE_NAMES, SHARD_GLOB, read_alias_tables
from cache.index import INDEX_NAME, load_index, read_index_file, write_index
from cache.memo import StampMemo
from cache.safe_open import open_shard
from exit_codes import DamagedCacheError

__all__ = ["DAMAGED_SUFFIX", "verify_shard", "repair_folder", "remember_verified"]

log = logging.getLogger("rpihmif.feature_cache")

DAMAGED_SUFFIX = ".damaged"  # `shard-….h5.damaged`: kept for inspection, no longer matched by SHARD_GLOB
_BLOCK_ROWS = 64  # rows read at a time while verifying (bounded memory)


def verify_shard(path: Path, fingerprint: dict[str, Any]) -> str:
    """"" when every dataset of the shard reads back and passes its checksums, else why it is damaged.

    Links, virtual or external storage, and shapes or sizes the spec does not allow are damage too (`open_shard`,
    checked before any read). A shard of another encoder is not damage: UsageError, as readers raise.
    """
    try:
        with open_shard(path, fingerprint, strict=True) as f:
            rows = f["keys"].shape[0]
            for name in ("keys",) + FEATURE_NAMES:
                data = f[name]
                for start in range(0, rows, _BLOCK_ROWS):  # each chunk read is checked against its fletcher32
                    data[start:start + _BLOCK_ROWS]
            read_alias_tables(f)  # string tables: checked against their sha256 attributes
    except DamagedCacheError as exc:
        return exc.reason
    except (OSError, KeyError, ValueError, RuntimeError, TypeError) as exc:
        return str(exc)[:300] or type(exc).__name__
    return ""


def remember_verified(folder: Path, shards: Iterable[Path]) -> None:
    """Record shards this process has just written (and so knows whole) as verified."""
    memo = StampMemo(folder.parent)
    present = {p.name for p in folder.glob(SHARD_GLOB)}
    stamps = {k: v for k, v in memo.verified(folder).items() if k in present}
    for path in shards:
        stamps[path.name] = file_stamp(os.lstat(path))
    memo.set_verified(folder, stamps)
    memo.save()


def repair_folder(folder: Path, fingerprint: dict[str, Any], full: bool = False) -> dict[str, Any]:
    """Verify the shards not verified before (all with `full`); rename damaged ones to `*.damaged`; rebuild the index.

    The caller holds the folder's lock. Returns {"verified": n read back, "damaged": [{"shard", "reason"}],
    "index_rebuilt": bool}; what a damaged shard held is simply missing afterwards, so the next plan recomputes it.
    """
    stamp_memo = StampMemo(folder.parent)
    memo = {} if full else stamp_memo.verified(folder)
    fresh: dict[str, list[int]] = {}
    damaged: list[dict[str, str]] = []
    verified = 0
    for path in sorted(folder.glob(SHARD_GLOB)):
        stamp = file_stamp(os.lstat(path))
        if memo.get(path.name) == stamp:
            fresh[path.name] = stamp
            continue
        verified += 1
        reason = verify_shard(path, fingerprint)
        if not reason:
            fresh[path.name] = stamp
            continue
        aside = path.with_name(path.name + DAMAGED_SUFFIX)
        os.replace(path, aside)
        damaged.append({"shard": path.name, "reason": reason})
        log.warning("%s: damaged feature-cache shard (%s); set aside as %s, its images are recomputed now",
                    path, reason, aside.name)
    index_path = folder / INDEX_NAME
    rebuild = bool(damaged) or (index_path.exists() and read_index_file(folder, fingerprint, set(fresh)) is None)
    if rebuild:  # (an unreadable index was already reported by read_index_file)
        write_index(folder, load_index(folder, fingerprint), fingerprint)
    stamp_memo.set_verified(folder, fresh)
    stamp_memo.save()
    return {"verified": verified, "damaged": damaged, "index_rebuilt": rebuild}

"""The plan of an extract-features run: the images the inputs reference, their content keys, and what the cache lacks.

A rerun on a complete cache reads no image and loads no encoder: hashes and the fingerprint come from `FingerprintMemo`.
"""
from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cache import CacheIndex, FeatureCache, FingerprintMemo, fingerprint_folders, repair_folder, resolve_fingerprint
from cache.durable import FileLock
from exit_codes import LockHeldError, UsageError
from pipeline.extract.items import WorkItem, benchmark_items, dump_items, hash_items
from pipeline.stage_config import ExtractConfig
from rpihmif.vision_encoder import VisionSettings

__all__ = ["ExtractPlan", "plan_extract"]

log = logging.getLogger("rpihmif.extract")

Alias = tuple[str, str, str]  # (source, image id, content key or "" = no usable image)


def reject_sig(record: dict[str, Any]) -> tuple:
    """What makes two reject records the same (the cache keeps one of each)."""
    return tuple(str(record.get(f, "")) for f in ("kind", "source", "image_id", "path", "file", "line", "reason"))


@dataclass
class ExtractPlan:
    """What one run must do: images to encode (`todo`), aliases and reject records to add, and the counts so far."""

    settings: VisionSettings
    fingerprint: dict[str, Any]
    cache_dir: Path
    items: int  # image references in the inputs
    todo: list[WorkItem] = field(default_factory=list)  # one item per distinct content key to encode
    by_key: dict[str, list[WorkItem]] = field(default_factory=dict)  # key -> every item with that content
    aliases: list[Alias] = field(default_factory=list)  # new or changed aliases
    rejects: list[dict[str, Any]] = field(default_factory=list)  # reject records the cache lacks
    reused: int = 0  # distinct images already in the cache
    deduplicated: int = 0  # references to an image seen earlier in this run
    rejected: int = 0  # image references rejected (now or by an earlier run)
    reasons: Counter = field(default_factory=Counter)  # reject reason -> image references
    record_rejects: int = 0  # unusable dump records
    known_shards: int = 0  # shards of the cache folder when planned
    files_hashed: int = 0  # image files read to hash them (the memo did not know them unchanged)
    shards_verified: int = 0  # shards read back against their checksums before planning
    damaged_shards: list[dict[str, Any]] = field(default_factory=list)  # set aside; their images are planned again

    @property
    def folder(self) -> Path:
        return self.cache_dir / self.fingerprint["id"]

    @property
    def complete(self) -> bool:
        """The cache already holds everything the inputs reference."""
        return not self.todo and not self.aliases and not self.rejects

    def replan(self, fresh: CacheIndex) -> None:
        """Drop what another run committed since planning (`fresh`: the index read under the writer's lock)."""
        done = [it for it in self.todo if it.key in fresh.keys or it.key in fresh.rejected_keys]
        for it in done:
            key = it.key if it.key in fresh.keys else ""
            self.aliases.extend((other.source, other.image_id, key) for other in self.by_key[it.key])
        done_ids = {id(it) for it in done}
        self.todo = [it for it in self.todo if id(it) not in done_ids]
        self.reused += len(done)
        self.aliases = [a for a in self.aliases if fresh.aliases.get((a[0], a[1])) != a[2]]
        have = {reject_sig(r) for r in fresh.rejects}
        self.rejects = [r for r in self.rejects if reject_sig(r) not in have]


def plan_extract(config: ExtractConfig, dumps: list[Path] | None = None) -> ExtractPlan:
    """Find every image of the dataset splits and `dumps` (plus `config.dump.files`), key it, compare with the cache."""
    cache_dir = Path(config.cache_dir)
    dumps = [Path(p) for p in list(config.dump.files) + list(dumps or [])]
    if not config.dataset and not dumps:
        raise UsageError("nothing to extract: set dataset (with data_dir) or pass --dump files")
    settings = config.vision
    memo = FingerprintMemo(cache_dir)
    fp = resolve_fingerprint(settings, cache_dir, memo)
    log.info("encoder %s: %s; feature cache root %s", fp["id"], fp["info"]["encoder"], cache_dir.resolve())

    crop_rejects: list[dict[str, Any]] = []
    record_rejects: list[dict[str, Any]] = []
    items: list[WorkItem] = []
    if config.dataset:
        items.extend(benchmark_items(config, crop_rejects))
    if dumps:
        items.extend(dump_items(config, dumps, crop_rejects, record_rejects))
    hash_items(items, memo)
    memo.save()

    plan = ExtractPlan(settings, fp, cache_dir, len(items), record_rejects=len(record_rejects),
                       files_hashed=memo.hashed)
    cached = plan.folder in fingerprint_folders(cache_dir)
    repair = _verify_cache(plan.folder, fp, config) if cached else None
    if repair:
        plan.shards_verified, plan.damaged_shards = repair["verified"], repair["damaged"]
    existing = FeatureCache(plan.folder).index if cached else CacheIndex()
    plan.known_shards = len(existing.shards)
    _against_cache(plan, items, existing)
    have = {reject_sig(r) for r in existing.rejects}
    plan.rejects = [r for r in plan.rejects + crop_rejects + record_rejects if reject_sig(r) not in have]
    return plan


def _verify_cache(folder: Path, fp: dict[str, Any], config: ExtractConfig) -> dict[str, Any] | None:
    """Read back the shards not verified before (all with verify_cache: all); damaged ones are set aside here, so
    the plan recomputes their images. None when another run holds the cache (it is writing, not us)."""
    try:
        with FileLock(folder, "extract-features run"):
            result = repair_folder(folder, fp, full=config.verify_cache == "all")
    except LockHeldError:
        log.info("%s: another run holds the cache; shards not verified by this run", folder)
        return None
    if result["damaged"]:
        log.warning("repaired the feature cache: %d damaged shard(s) set aside (%s); their images are recomputed "
                    "by this run", len(result["damaged"]), ", ".join(d["shard"] for d in result["damaged"]))
    return result


def _against_cache(plan: ExtractPlan, items: list[WorkItem], have: CacheIndex) -> None:
    """Deduplicate by content key and sort each item into reused / rejected / to encode, with its alias."""
    aliases: list[Alias] = []
    for it in items:
        if it.reason:
            plan.rejected += 1
            plan.reasons[it.reason] += 1
            plan.rejects.append({"source": it.source, "image_id": it.image_id, "kind": "image",
                                 "path": str(it.path or ""), "reason": it.reason})
            aliases.append((it.source, it.image_id, ""))
            continue
        if it.key in plan.by_key:
            plan.deduplicated += 1
            plan.by_key[it.key].append(it)
            if it.key in have.keys or it.key in have.rejected_keys:
                aliases.append((it.source, it.image_id, it.key if it.key in have.keys else ""))
            continue
        plan.by_key[it.key] = [it]
        if it.key in have.keys:
            plan.reused += 1
            aliases.append((it.source, it.image_id, it.key))
        elif it.key in have.rejected_keys:
            plan.rejected += 1
            plan.reasons[have.rejected_keys[it.key]] += 1
            aliases.append((it.source, it.image_id, ""))
        else:
            plan.todo.append(it)
    plan.aliases = [a for a in aliases if have.aliases.get((a[0], a[1])) != a[2]]

"""extract-features: run the frozen CLIP vision encoder once per distinct image (Ray actors) into the HDF5 cache.

Images come from a benchmark dataset and/or tweet dumps; bad images are rejected with a reason, never made up.
"""
from __future__ import annotations

import json
import logging
import os
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from cache.durable import FileLock
from cache.integrity import repair_folder
from cache.reader import FEATURE_NAMES, CacheWriter, FeatureCache, fingerprint_folders
from pipeline.extract.clip_encoder import VisionSettings
from pipeline.runtime.precision import resolve_precision
from pipeline.extract.featurizer import ClipFeaturizer, featurize_images, resolve_fingerprint
from pipeline.extract.items import WorkItem, benchmark_items, dump_items, hash_items, item_batches
from pipeline.runtime.executor import Executor
from pipeline.runtime.progress import Progress
from pipeline.stage_config import ExtractConfig
from rpihmif.errors import LockHeldError, UsageError

__all__ = ["run_extract", "ClipFeaturizer", "featurize_images", "resolve_fingerprint"]

log = logging.getLogger("rpihmif.extract")


def _reject_sig(record: dict[str, Any]) -> tuple:
    return tuple(str(record.get(f, "")) for f in ("kind", "source", "image_id", "path", "file", "line", "reason"))


def run_extract(config: ExtractConfig, dumps: list[Path] | None = None) -> dict[str, Any]:
    """Encode every distinct image of the dataset splits and dumps not yet in the cache; return a summary dict.

    config: the checked pipeline/conf/extract.yaml. dumps: JSONL(.gz) files (added to config.dump.files).
    `offline: true` sets HF_HUB_OFFLINE for this process and its Ray workers.
    """
    if config.offline:
        os.environ["HF_HUB_OFFLINE"] = "1"
    t0 = time.monotonic()
    settings = VisionSettings.of(config)
    workers, address = config.workers, config.ray_address
    from pipeline.runtime.device import resolve_device
    device = resolve_device(config.device)
    precision = resolve_precision(config.precision, device)  # each worker logs its own choice too
    cache_dir = Path(config.cache_dir)
    dumps = [Path(p) for p in list(config.dump.files) + list(dumps or [])]
    if not config.dataset and not dumps:
        raise UsageError("nothing to extract: set dataset (with data_dir) or pass --dump files")

    fp = resolve_fingerprint(settings, cache_dir)
    log.info("encoder %s: %s; feature cache root %s", fp["id"], fp["info"]["encoder"], cache_dir.resolve())

    # 1. what the inputs reference
    crop_rejects: list[dict[str, Any]] = []
    record_rejects: list[dict[str, Any]] = []
    items: list[WorkItem] = []
    if config.dataset:
        items.extend(benchmark_items(config, crop_rejects))
    if dumps:
        items.extend(dump_items(config, dumps, crop_rejects, record_rejects))
    hash_items(items)

    # 2. dedupe by content key, skip what the cache has
    folder = cache_dir / fp["id"]
    repair = _verify_cache(folder, fp, config) if folder in fingerprint_folders(cache_dir) else None
    existing = FeatureCache(folder) if folder in fingerprint_folders(cache_dir) else None
    have_keys = existing.index.keys if existing else {}
    have_rejected = existing.index.rejected_keys if existing else {}
    have_aliases = existing.index.aliases if existing else {}
    have_rejects = {_reject_sig(r) for r in existing.index.rejects} if existing else set()

    first: dict[str, WorkItem] = {}
    todo: list[WorkItem] = []
    by_key: dict[str, list[WorkItem]] = {}
    new_aliases: list[tuple[str, str, str]] = []
    new_rejects: list[dict[str, Any]] = []
    counts = Counter()
    for it in items:
        if it.reason:
            counts["rejected"] += 1
            counts[f"rejected:{it.reason}"] += 1
            new_rejects.append({"source": it.source, "image_id": it.image_id, "kind": "image",
                                "path": str(it.path or ""), "reason": it.reason})
            new_aliases.append((it.source, it.image_id, ""))
            continue
        if it.key in first:
            counts["deduplicated"] += 1
            by_key[it.key].append(it)
            if it.key in have_keys or it.key in have_rejected:
                new_aliases.append((it.source, it.image_id, it.key if it.key in have_keys else ""))
            continue
        first[it.key] = it
        by_key[it.key] = [it]
        if it.key in have_keys:
            counts["reused"] += 1
            new_aliases.append((it.source, it.image_id, it.key))
        elif it.key in have_rejected:
            counts["rejected"] += 1
            counts[f"rejected:{have_rejected[it.key]}"] += 1
            new_aliases.append((it.source, it.image_id, ""))
        else:
            todo.append(it)
    new_aliases = [a for a in new_aliases if have_aliases.get((a[0], a[1])) != a[2]]
    new_rejects = [r for r in new_rejects + crop_rejects + record_rejects if _reject_sig(r) not in have_rejects]

    summary: dict[str, Any] = {
        "fingerprint_id": fp["id"], "encoder": fp["info"]["encoder"], "cache": str(folder),
        "images": len(items), "unique_images": len(first), "to_compute": len(todo), "computed": 0,
        "reused": counts["reused"], "deduplicated": counts["deduplicated"], "rejected": counts["rejected"],
        "rejected_crops": 0, "rejected_records": len(record_rejects), "aliases_written": 0, "shards_written": 0,
        "workers": workers, "ray_address": address or ("embedded" if workers else "in-process"),
        "shards_verified": repair["verified"] if repair else 0,
        "damaged_shards": repair["damaged"] if repair else [],
    }
    if not todo and not new_aliases and not new_rejects:
        log.info("cache %s is complete for these inputs: nothing to compute", folder)
        summary.update(reject_reasons=_reasons(counts), seconds=round(time.monotonic() - t0, 3), compute_seconds=0.0,
                       images_per_s=0.0)
        return summary

    # 3. compute what is missing; a single writer in this process commits the shards
    featurizer_kwargs = {"settings": settings.__dict__, "max_image_pixels": config.max_image_pixels,
                         "device": str(device), "expected_fingerprint": fp["id"], "precision": config.precision}
    summary["precision"] = precision.name
    n_workers = max(1, workers)
    t_compute = time.monotonic()
    with CacheWriter(cache_dir, fp, shard_size=config.shard_size, dtype=settings.dtype) as writer:
        # another run may have committed shards between the plan above and taking the lock: never store twice
        fresh = FeatureCache(folder).index
        if len(fresh.shards) != (len(existing.index.shards) if existing else 0):
            todo, new_aliases, new_rejects = _replan(fresh, todo, by_key, new_aliases, new_rejects, summary)
        todo.sort(key=lambda it: str(it.path))  # deterministic batches
        batches = item_batches(todo, config.batch_size, settings.max_crops)
        crop_reject_count = sum(r["kind"] in ("grounding", "rcnn") for r in new_rejects)
        for r in new_rejects:
            writer.add_reject(r)
        for a in new_aliases:
            writer.add_alias(*a)
        summary["aliases_written"] += len(new_aliases)
        if todo:
            log.info("extracting into %s with %s", folder.resolve(),
                     "in-process" if workers == 0 else f"{n_workers} Ray worker(s)")
            executor = Executor(ClipFeaturizer, featurizer_kwargs, workers=n_workers, in_process=workers == 0,
                                address=address, gpus_per_worker=1.0 if device.type == "cuda" else 0.0)
            results = executor.map_unordered(batches)
            bar = Progress(len(todo), desc="extract-features", unit="img")
            try:
                # steady-state rate: images after every worker delivered its first batch (start-up excluded)
                n_results, warm_t, warm_n = 0, None, 0
                for out in results:
                    n_ok, n_crop_bad = _store(writer, out, by_key, summary)
                    crop_reject_count += n_crop_bad
                    bar.update(len(out["key"]))
                    summary["computed"] += n_ok
                    n_results += 1
                    if warm_t is None:
                        if n_results >= n_workers:
                            warm_t, warm_n = time.monotonic(), summary["computed"]
                    steady = (summary["computed"] - warm_n, time.monotonic() - warm_t) if warm_t else (0, 0.0)
                summary["steady_images_per_s"] = round(steady[0] / steady[1], 3) if steady[0] and steady[1] > 0 else None
            finally:
                bar.close()
                results.close()
                executor.close()  # stops the actors before Ray shuts down
    summary["shards_written"] = len(writer.committed)
    elapsed = time.monotonic() - t_compute
    summary["rejected_crops"] = crop_reject_count
    summary.update(reject_reasons=_reasons(counts, summary.pop("_reasons", {})),
                   seconds=round(time.monotonic() - t0, 3), compute_seconds=round(elapsed, 3),
                   images_per_s=round(summary["computed"] / elapsed, 3) if elapsed > 0 else 0.0)
    log.info("extract-features: %s", json.dumps({k: summary[k] for k in (
        "computed", "reused", "deduplicated", "rejected", "rejected_crops", "seconds")}))
    return summary


def _verify_cache(folder: Path, fp: dict[str, Any], config: ExtractConfig) -> dict[str, Any] | None:
    """Read back the shards not verified before (all with verify_cache: all); damaged ones are set aside here, so
    the plan below recomputes their images. None when another run holds the cache (it is writing, not us)."""
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


def _replan(fresh: Any, todo: list[WorkItem], by_key: dict[str, list[WorkItem]], aliases: list[tuple[str, str, str]],
            rejects: list[dict[str, Any]], summary: dict[str, Any]) -> tuple[list, list, list]:
    """Drop from the plan what another run committed meanwhile (`fresh`: the index read under the lock)."""
    done = [it for it in todo if it.key in fresh.keys or it.key in fresh.rejected_keys]
    for it in done:
        for other in by_key[it.key]:
            aliases.append((other.source, other.image_id, it.key if it.key in fresh.keys else ""))
    have = {_reject_sig(r) for r in fresh.rejects}
    summary["reused"] += len(done)
    done_ids = {id(it) for it in done}
    todo = [it for it in todo if id(it) not in done_ids]
    summary["to_compute"] = len(todo)
    return (todo, [a for a in aliases if fresh.aliases.get((a[0], a[1])) != a[2]],
            [r for r in rejects if _reject_sig(r) not in have])


def _reasons(counts: Counter, extra: dict[str, int] | None = None) -> dict[str, int]:
    out = {k.split(":", 1)[1]: v for k, v in counts.items() if k.startswith("rejected:")}
    for k, v in (extra or {}).items():
        out[k] = out.get(k, 0) + v
    return dict(sorted(out.items()))


def _store(writer: CacheWriter, out: dict[str, np.ndarray], by_key: dict[str, list[WorkItem]],
           summary: dict[str, Any]) -> tuple[int, int]:
    """Write one featurizer result: good rows + their aliases, rejects (image and crop) with "no image" aliases."""
    keys = [str(k) for k in out["key"]]
    ok = [i for i, r in enumerate(out["reason"]) if not r]
    if ok:
        writer.add_rows({"key": np.array([keys[i] for i in ok]), **{n: out[n][ok] for n in FEATURE_NAMES}})
    reasons = summary.setdefault("_reasons", {})
    crop_bad = 0
    for i, key in enumerate(keys):
        its = by_key[key]
        reason = str(out["reason"][i])
        if reason:
            summary["rejected"] += 1
            reasons[reason] = reasons.get(reason, 0) + 1
            writer.add_reject({"source": its[0].source, "image_id": its[0].image_id, "kind": "image",
                               "path": str(its[0].path), "reason": reason, "key": key if reason != "changed" else ""})
        for kind in ("grounding", "rcnn"):
            for value in out[f"{kind}_reason"][i]:
                if value:
                    crop_bad += 1
                    why, _, path = str(value).partition("\t")
                    writer.add_reject({"source": its[0].source, "image_id": its[0].image_id, "kind": kind,
                                       "path": path, "reason": why})
        for it in its:
            writer.add_alias(it.source, it.image_id, "" if reason else key)
            summary["aliases_written"] += 1
    writer.maybe_commit()
    return len(ok), crop_bad

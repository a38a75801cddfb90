"""extract-features: run the frozen CLIP vision encoder once per distinct image (Ray actors) into the HDF5 cache.

`run_extract` = `plan_extract` (what the cache lacks) -> `_compute` (encode and store it) -> an `ExtractSummary`.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cache import FEATURE_NAMES, CacheWriter, FeatureCache
from pipeline.extract.featurizer import ClipFeaturizer, featurize_images
from pipeline.extract.items import WorkItem, item_batches
from pipeline.extract.plan import ExtractPlan, plan_extract
from pipeline.runtime.executor import Executor
from pipeline.runtime.progress import Progress
from pipeline.stage_config import ExtractConfig
from rpihmif.hub import go_offline
from rpihmif.precision import resolve_precision

__all__ = ["run_extract", "ExtractSummary", "ClipFeaturizer", "featurize_images"]

log = logging.getLogger("rpihmif.extract")


@dataclass
class ExtractSummary:
    """What one run found and did (printed as JSON by the CLI)."""

    fingerprint_id: str
    encoder: str  # readable encoder kind
    cache: str  # the fingerprint folder
    images: int  # image references in the inputs
    unique_images: int  # distinct content keys
    to_compute: int  # distinct images the cache lacked (after a replan under the lock)
    reused: int  # distinct images already cached
    deduplicated: int  # references to an image seen earlier in the run
    rejected: int  # image references rejected (now or by an earlier run)
    rejected_records: int  # unusable dump records
    workers: int
    ray_address: str  # "embedded", "in-process" or the cluster's host:port
    precision: str  # of the encoder forward: fp32 or bf16 (stored features are `dtype` either way)
    files_hashed: int  # image files read to hash them (0 on a rerun: the memo knows them unchanged)
    shards_verified: int  # shards read back against their checksums before planning
    damaged_shards: list[dict[str, Any]]  # shards set aside as damaged (their images are computed again)
    computed: int = 0  # images encoded and stored
    rejected_crops: int = 0  # crops rejected (missing, unsafe or undecodable)
    aliases_written: int = 0
    shards_written: int = 0
    reject_reasons: dict[str, int] = field(default_factory=dict)  # reason -> image references
    plan_seconds: float = 0.0
    compute_seconds: float = 0.0
    seconds: float = 0.0
    images_per_s: float = 0.0
    steady_images_per_s: float | None = None  # after every worker delivered its first batch (start-up excluded)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def run_extract(config: ExtractConfig, dumps: list[Path] | None = None) -> ExtractSummary:
    """Encode every distinct image of the dataset splits and dumps not yet in the cache; return the summary.

    config: the checked conf/extract.yaml. dumps: JSONL(.gz) files (added to config.dump.files).
    `offline: true` sets HF_HUB_OFFLINE for this process and its Ray workers.
    """
    if config.offline:
        go_offline()
    t0 = time.monotonic()
    from pipeline.runtime.device import resolve_device
    device = resolve_device(config.device)
    precision = resolve_precision(config.precision, device)  # each worker logs its own choice too
    plan = plan_extract(config, dumps)
    fp = plan.fingerprint
    summary = ExtractSummary(
        fingerprint_id=fp["id"], encoder=fp["info"]["encoder"], cache=str(plan.folder), images=plan.items,
        unique_images=len(plan.by_key), to_compute=len(plan.todo), reused=plan.reused,
        deduplicated=plan.deduplicated, rejected=plan.rejected, rejected_records=plan.record_rejects,
        workers=config.workers, precision=precision.name, files_hashed=plan.files_hashed, shards_verified=plan.shards_verified,
        damaged_shards=plan.damaged_shards,
        ray_address=config.ray_address or ("embedded" if config.workers else "in-process"))
    summary.plan_seconds = round(time.monotonic() - t0, 3)
    if plan.complete:
        log.info("cache %s is complete for these inputs: nothing to compute", plan.folder)
    else:
        _compute(plan, config, str(device), summary)
    summary.reject_reasons = dict(sorted((plan.reasons + Counter(summary.reject_reasons)).items()))
    summary.seconds = round(time.monotonic() - t0, 3)
    log.info("extract-features: %s", json.dumps({k: getattr(summary, k) for k in (
        "computed", "reused", "deduplicated", "rejected", "rejected_crops", "files_hashed", "seconds")}))
    return summary


def _compute(plan: ExtractPlan, config: ExtractConfig, device: str, summary: ExtractSummary) -> None:
    """Encode `plan.todo` (Ray actors, or in-process with `workers: 0`); a single writer here commits the shards."""
    t_compute = time.monotonic()
    with CacheWriter(plan.cache_dir, plan.fingerprint, shard_size=config.shard_size, dtype=plan.settings.dtype) as writer:
        # another run may have committed shards between planning and taking the lock: never store twice
        fresh = FeatureCache(plan.folder).index
        if len(fresh.shards) != plan.known_shards:
            plan.replan(fresh)
            summary.reused, summary.to_compute = plan.reused, len(plan.todo)
        plan.todo.sort(key=lambda it: str(it.path))  # deterministic batches
        for r in plan.rejects:
            writer.add_reject(r)
        for a in plan.aliases:
            writer.add_alias(*a)
        summary.rejected_crops = sum(r["kind"] in ("grounding", "rcnn") for r in plan.rejects)
        summary.aliases_written = len(plan.aliases)
        if plan.todo:
            _encode(plan, config, device, writer, summary)
    summary.shards_written = len(writer.committed)
    elapsed = time.monotonic() - t_compute
    summary.compute_seconds = round(elapsed, 3)
    summary.images_per_s = round(summary.computed / elapsed, 3) if elapsed > 0 else 0.0


def _encode(plan: ExtractPlan, config: ExtractConfig, device: str, writer: CacheWriter,
            summary: ExtractSummary) -> None:
    """Run the featurizer over the batches of `plan.todo` and store every result as it arrives."""
    kwargs = {"settings": plan.settings.__dict__, "max_image_pixels": config.max_image_pixels, "device": device,
              "expected_fingerprint": plan.fingerprint["id"], "precision": config.precision}
    batches = item_batches(plan.todo, config.batch_size, plan.settings.max_crops)
    n_workers = max(1, config.workers)
    log.info("extracting into %s with %s", plan.folder.resolve(),
             "in-process" if config.workers == 0 else f"{n_workers} Ray worker(s)")
    executor = Executor(ClipFeaturizer, kwargs, workers=n_workers, in_process=config.workers == 0,
                        address=config.ray_address, gpus_per_worker=1.0 if device.startswith("cuda") else 0.0)
    results = executor.map_unordered(batches)
    bar = Progress(len(plan.todo), desc="extract-features", unit="img")
    try:
        n_results, warm_t, warm_n = 0, None, 0
        for out in results:
            _store(writer, out, plan.by_key, summary)
            bar.update(len(out["key"]))
            n_results += 1
            if warm_t is None and n_results >= n_workers:
                warm_t, warm_n = time.monotonic(), summary.computed
        n, secs = (summary.computed - warm_n, time.monotonic() - warm_t) if warm_t else (0, 0.0)
        summary.steady_images_per_s = round(n / secs, 3) if n and secs > 0 else None
    finally:
        bar.close()
        results.close()
        executor.close()  # stops the actors before Ray shuts down


def _store(writer: CacheWriter, out: dict[str, np.ndarray], by_key: dict[str, list[WorkItem]],
           summary: ExtractSummary) -> None:
    """Write one featurizer result: good rows + their aliases, rejects (image and crop) with "no image" aliases."""
    keys = [str(k) for k in out["key"]]
    ok = [i for i, r in enumerate(out["reason"]) if not r]
    if ok:
        writer.add_rows({"key": np.array([keys[i] for i in ok]), **{n: out[n][ok] for n in FEATURE_NAMES}})
    summary.computed += len(ok)
    for i, key in enumerate(keys):
        its = by_key[key]
        reason = str(out["reason"][i])
        if reason:
            summary.rejected += 1
            summary.reject_reasons[reason] = summary.reject_reasons.get(reason, 0) + 1
            writer.add_reject({"source": its[0].source, "image_id": its[0].image_id, "kind": "image",
                               "path": str(its[0].path), "reason": reason, "key": key if reason != "changed" else ""})
        for kind in ("grounding", "rcnn"):
            for value in out[f"{kind}_reason"][i]:
                if value:
                    summary.rejected_crops += 1
                    why, _, path = str(value).partition("\t")
                    writer.add_reject({"source": its[0].source, "image_id": its[0].image_id, "kind": kind,
                                       "path": path, "reason": why})
        for it in its:
            writer.add_alias(it.source, it.image_id, "" if reason else key)
            summary.aliases_written += 1
    writer.maybe_commit()

"""tag-corpus stage (driver): plan chunks of every input, have workers tag them into Parquet parts, commit each
part exactly once under the output's lock; a rerun redoes only chunks not committed or no longer valid.
"""
from __future__ import annotations

import logging
import re
import signal
import threading
import time
from collections import Counter
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from cache.durable import FileLock, ensure_dir, refuse_link
from pipeline.io.dumps import expand_inputs
from pipeline.runtime.executor import Executor
from pipeline.stage_config import TagConfig
from pipeline.tag.chunks import read_chunks
from pipeline.tag.commit import Committer, part_name
from pipeline.tag.manifest import MANIFEST_NAME, REJECTS_NAME, data_folder
from pipeline.tag.parquet_parts import footer
from pipeline.tag.plan import (
    Freshness,
    InputPlan,
    ModelSpec,
    cache_state,
    check_image_cache,
    model_spec,
    plan_input,
    resolve_model_path,
)
from pipeline.tag.worker import ChunkTagger
from rpihmif.errors import PipelineError, UsageError

__all__ = ["run_tag", "resolve_model_path"]

log = logging.getLogger("rpihmif.tag")

class _Terminated(BaseException):
    """Raised in the driver by SIGTERM (outside a commit): stop, keep what is committed."""


@contextmanager
def _on_sigterm(state: dict[str, Any]) -> Iterator[None]:
    """SIGTERM stops the run between commits (a commit in progress finishes first)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        state["stop"] = True
        if not state["in_commit"]:
            raise _Terminated()

    old = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


def _open_cache(config: TagConfig, spec: ModelSpec) -> Any:
    if not spec.uses_images:
        return None
    from cache.reader import open_cache

    return open_cache(config.cache_dir, spec.fingerprint)


def _reason(text: str) -> str:
    """A reject reason without its specifics (numbers, quoted values), to count rejects per kind."""
    return re.sub(r"(?<![\w-])\d+", "N", re.sub(r"'[^']*'|\"[^\"]*\"", "…", text.split(";")[0]))[:80]


class _Run:
    """Counters, progress lines and the in-flight bookkeeping of one run."""

    def __init__(self, config: TagConfig, todo: list[InputPlan]):
        self.counts: Counter = Counter()
        self.reasons: Counter = Counter()
        self.inflight: dict[str, tuple[InputPlan, Any]] = {}
        self.left = {id(p): 0 for p in todo}  # chunks submitted and not committed, per input
        self.read_done: dict[int, dict[str, Any]] = {}
        self.total_bytes = sum(p.ident.size for p in todo) or 1
        self.bytes_done = 0
        self.pos: dict[int, int] = {}  # per input: the furthest committed byte offset
        self.in_process = True
        self.start = self.last_log = time.monotonic()
        self.every = float(config.progress_every_s)
        self.worker_cpu = 0.0
        self.commit_s = 0.0  # driver wall time in commits (rename, fsync, manifest)
        self.warm: tuple[float, int] | None = None  # (time, rows) once every worker delivered a chunk
        self.workers = 1
        self.warned = False

    def progress(self, final: bool = False) -> None:
        now = time.monotonic()
        if not final and now - self.last_log < self.every:
            return
        self.last_log = now
        elapsed = max(now - self.start, 1e-9)
        frac = min(1.0, self.bytes_done / self.total_bytes)
        eta = f", ETA {elapsed * (1 - frac) / frac:.0f}s" if 0 < frac < 1 else ""
        est = f" of ~{int(self.counts['rows'] / frac)}" if 0 < frac < 1 else ""
        log.info("tagged %d%s records in %d chunks (%.0f records/s, %.0f%% of %.1f MB input)%s",
                 self.counts["rows"], est, self.counts["chunks"], self.counts["rows"] / elapsed, 100 * frac,
                 self.total_bytes / 1e6, eta)


def _tasks(todo: list[InputPlan], config: TagConfig, run: _Run, staging: Path) -> Iterator[dict[str, Any]]:
    """Read each input in turn and yield one task per chunk to tag (the driver only splits lines)."""
    for plan in todo:
        stats: dict[str, Any] = {}
        for chunk in read_chunks(plan.path, int(config.chunk_records), int(config.max_record_bytes),
                                 plan.done, stats):
            key = f"{plan.ident.sha256[:16]}:{chunk.first_line}"
            run.inflight[key] = (plan, chunk)
            run.left[id(plan)] += 1
            yield {"key": key, "source": plan.source, "first_line": chunk.first_line, "lines": chunk.lines,
                   "part": str(staging / part_name(plan.source, plan.ident.sha256, chunk.first_line)),
                   "tagged_at": time.time()}
            chunk.lines = []  # the task holds them now; keep only the chunk's coordinates
        run.read_done[id(plan)] = stats


def run_tag(inputs: list[Path], config: TagConfig, spec: ModelSpec | None = None) -> dict[str, Any]:
    """Tag every input dump (files or folders) into `config.out`; returns the run's summary dict.

    `spec` replaces the checkpoint's model (benchmarks pass a null model); by default it is read from load_path.
    """
    started, cpu0 = time.monotonic(), time.process_time()
    if not config.out:
        raise UsageError("no output folder: pass --out DIR (or --set out=DIR)")
    spec = spec or model_spec(config)
    files = expand_inputs(list(inputs))
    if not files:
        raise UsageError(f"no JSONL(.gz) dumps found in {', '.join(map(str, inputs))}")
    out = Path(config.out).absolute()
    ensure_dir(out)
    cache = _open_cache(config, spec)
    encoder = ("text-only model (images not used)" if not spec.uses_images else
               f"{spec.fingerprint}: {cache.info.get('encoder')}" if cache is not None else
               f"{spec.fingerprint} (no cache folder of it)")
    log.info("tag-corpus: output %s (Parquet parts in %s/), feature cache %s, model %s, encoder %s",
             out, data_folder(out).name, Path(config.cache_dir).absolute(), spec.model_id, encoder)
    fresh = Freshness(spec.model_id, spec.fingerprint if cache is not None else "", cache_state(cache),
                      bool(config.force))
    state = {"stop": False, "in_commit": False}
    with FileLock(out, "tag-corpus run"), _on_sigterm(state):
        for name in (MANIFEST_NAME, REJECTS_NAME):  # read and rewritten by this run: never through a link
            refuse_link(out / name)
        committer = Committer(out)
        plans = [plan_input(p, committer.manifest, fresh) for p in files]
        for p in plans:
            if p.skip:
                committer.manifest.see_input(p.ident.sha256, p.ident.size, p.source)
                log.info("skip %s: same content as %s, every chunk done", p.source,
                         committer.manifest.inputs[p.ident.sha256]["paths"][0])
        todo = [p for p in plans if not p.skip]
        check_image_cache(spec, cache, todo, config)
        run = _Run(config, todo)
        executor = None
        try:
            if todo:
                executor = _executor(config, spec, cache, fresh)
                run.workers = executor.workers
                log.info("tagging %d input(s) in chunks of %d records with %s", len(todo), config.chunk_records,
                         executor.description)
                extra = {"model_id": spec.model_id, "encoder": fresh.encoder, "cache_state": fresh.cache_state,
                         "image_root": str(Path(config.image_root).absolute()) if config.image_root else ""}
                for result in executor.map_unordered(_tasks(todo, config, run, committer.staging)):
                    _commit(result, run, committer, extra, state)
                    _finish_inputs(todo, run, committer)
                run.in_process = executor.in_process
                _finish_inputs(todo, run, committer)
            committer.write_rejects()
        except _Terminated:
            log.warning("SIGTERM: stopped; %d chunks (%d records) committed this run, %d in flight dropped; rerun "
                        "the same command to tag the rest", run.counts["chunks"], run.counts["rows"],
                        len(run.inflight))
            committer.write_rejects()
            raise PipelineError("tag-corpus stopped by SIGTERM; committed chunks are kept, rerun to continue")
        finally:
            if executor is not None:
                executor.close()
            committer.drop_temps()
        if not todo:
            committer.manifest.save()
    return _summary(out, spec, files, plans, run, started, cpu0)


def _executor(config: TagConfig, spec: ModelSpec, cache: Any, fresh: Freshness) -> Executor:
    keys = ("seed", "device", "precision", "threads", "batch_size", "bucket_size", "row_group_bytes",
            "max_record_bytes", "require_images", "text_only")
    settings = {k: getattr(config, k) for k in keys}
    settings["sources"] = list(config.visual.sources)
    settings["fields"] = {"id": config.id_field, "text": config.text_field, "image": config.image_field,
                          "crops": config.crops_field, "rcnn": config.rcnn_field}
    kwargs = dict(load_path=spec.load_path, settings=settings, model_id=spec.model_id, factory=spec.factory,
                  footer=footer(spec.model_id, fresh.encoder, spec.labels, cache_state=fresh.cache_state),
                  cache_folder=str(cache.folder) if cache is not None else "")
    in_process = config.workers <= 1 and not config.ray_address and not config.use_ray
    gpus = 0.0
    if config.device != "cpu" and not in_process and spec.factory is None:
        import torch

        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        gpus = min(1.0, n / max(config.workers, 1))
    return Executor(ChunkTagger, kwargs, workers=config.workers, in_process=in_process,
                    address=config.ray_address, cpus_per_worker=config.cpus_per_worker, gpus_per_worker=gpus)


def _commit(result: dict[str, Any], run: _Run, committer: Committer, extra: dict[str, Any],
            state: dict[str, Any]) -> None:
    plan, chunk = run.inflight[result["key"]]
    state["in_commit"] = True
    t0 = time.monotonic()
    committer.commit(plan, chunk, result, {**extra, "image_root": extra["image_root"] or str(Path(plan.source).parent)})
    run.commit_s += time.monotonic() - t0
    del run.inflight[result["key"]]
    run.left[id(plan)] -= 1
    state["in_commit"] = False
    c = run.counts
    c["chunks"] += 1
    for k in ("rows", "images_used", "images_missing", "no_image"):
        c[k] += result[k]
    c["rejects"] += len(result["rejects"])
    run.reasons.update(_reason(r["reason"]) for r in result["rejects"])
    run.worker_cpu += result["cpu_s"]
    pos = run.pos.get(id(plan), 0)
    run.bytes_done += max(0, chunk.byte_end - pos)
    run.pos[id(plan)] = max(pos, chunk.byte_end)
    if result["images_missing"] and not run.warned:
        run.warned = True
        log.warning("%s lines %d-%d: %d tweets have an image with no cached features (tagged text-only); the "
                    "summary counts them all", plan.source, chunk.first_line, chunk.last_line, result["images_missing"])
    if run.warm is None and c["chunks"] >= run.workers:
        run.warm = (time.monotonic(), c["rows"])
    run.progress()
    if state["stop"]:
        raise _Terminated()


def _finish_inputs(todo: list[InputPlan], run: _Run, committer: Committer) -> None:
    """Mark inputs whose reading ended and whose chunks are all committed as complete."""
    for plan in todo:
        stats = run.read_done.get(id(plan))
        if stats is not None and not run.left[id(plan)]:
            committer.complete_input(plan, stats["lines"], stats["ends_newline"])
            del run.read_done[id(plan)]


def _summary(out: Path, spec: ModelSpec, files: list[Path], plans: list[InputPlan], run: _Run, started: float,
             cpu0: float) -> dict[str, Any]:
    run.progress(final=True)
    c, seconds = run.counts, time.monotonic() - started
    tagged = [p for p in plans if not p.skip]
    summary = {"out": str(out), "data": str(data_folder(out)), "model_id": spec.model_id, "inputs": len(files),
               "tagged": len(tagged), "skipped": len(files) - len(tagged), "chunks": c["chunks"],
               "retagged_chunks": sum(p.stale for p in tagged), "rows": c["rows"], "rejects": c["rejects"],
               "reject_reasons": dict(run.reasons), "images_used": c["images_used"],
               "images_missing": c["images_missing"], "no_image": c["no_image"], "seconds": round(seconds, 3),
               "tweets_per_s": round(c["rows"] / seconds, 1) if c["rows"] else None,
               "worker_cpu_s": round(run.worker_cpu, 3), "commit_s": round(run.commit_s, 3)}
    if run.warm and c["rows"] > run.warm[1]:  # start-up excluded (model loading, Ray workers starting)
        summary["steady_tweets_per_s"] = round((c["rows"] - run.warm[1]) / (time.monotonic() - run.warm[0]), 1)
    driver_cpu = time.process_time() - cpu0 - (run.worker_cpu if run.in_process else 0.0)
    summary["driver_cpu_s"] = round(driver_cpu, 3)  # planning, reading lines, committing: not tagging
    if c["rows"]:
        summary["driver_cpu_us_per_record"] = round(1e6 * driver_cpu / c["rows"], 2)
        summary["worker_cpu_us_per_record"] = round(1e6 * run.worker_cpu / c["rows"], 2)
    for reason, n in run.reasons.most_common():
        log.info("rejects: %d x %s", n, reason)
    if c["images_missing"]:
        log.warning("%d tweets had an image with no cached features and were tagged text-only (%d used images); "
                    "run extract-features over these dumps, then rerun: the affected chunks are re-tagged",
                    c["images_missing"], c["images_used"])
    log.info("tag-corpus done: %d rows in %d chunks, %d rejects, %d input(s) tagged, %d skipped in %.1fs -> %s",
             c["rows"], c["chunks"], c["rejects"], len(tagged), summary["skipped"], seconds, data_folder(out))
    return summary

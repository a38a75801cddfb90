"""tag-corpus stage (driver): plan chunks of every input, have workers tag them into Parquet parts, commit each
part exactly once under the output's lock; a rerun redoes only chunks not committed or no longer valid.
"""
from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections import Counter
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterator

from cache.durable import FileLock, ensure_dir
from exit_codes import PipelineError, UsageError
from pipeline.io.dumps import expand_inputs
from pipeline.runtime.executor import Executor
from pipeline.stage_config import TagConfig
from pipeline.tag.chunks import read_chunks
from pipeline.tag.commit import Committer, part_name
from pipeline.tag.manifest import data_folder
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
from pipeline.tag.run_state import RunState, reject_kind
from pipeline.tag.worker import ChunkTagger, TaggerSettings, TagResult, TagTask

__all__ = ["run_tag", "resolve_model_path", "RunSummary"]

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
    from cache import open_cache

    return open_cache(config.cache_dir, spec.fingerprint)


@dataclass
class RunSummary:
    """What one run did (printed as JSON by the CLI); the per-record CPU split shows where the time went."""

    out: str
    data: str
    model_id: str
    inputs: int
    tagged: int
    skipped: int
    chunks: int
    retagged_chunks: int
    rows: int
    rejects: int
    reject_reasons: dict[str, int]
    images_used: int
    images_missing: int
    no_image: int
    seconds: float
    tweets_per_s: float | None
    worker_cpu_s: float
    commit_s: float
    driver_cpu_s: float
    inputs_read: int  # inputs hashed this run (the others were known by their file stamp)
    steady_tweets_per_s: float | None = None
    driver_cpu_us_per_record: float | None = None
    worker_cpu_us_per_record: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None or k == "tweets_per_s"}


@dataclass
class _Plan:
    """A planned run: the output, model, cache, the inputs (all, and those with work) and what keeps a chunk."""

    out: Path
    spec: ModelSpec
    cache: Any
    files: list[Path]
    plans: list[InputPlan]
    fresh: Freshness
    config: TagConfig

    @property
    def todo(self) -> list[InputPlan]:
        return [p for p in self.plans if not p.skip]


def _tasks(run: RunState, config: TagConfig, staging: Path) -> Iterator[TagTask]:
    """Read each input in turn and yield one task per chunk to tag (the driver only splits lines)."""
    for inp in run.inputs:
        plan, stats = inp.plan, {}
        for chunk in read_chunks(plan.path, int(config.chunk_records), int(config.max_record_bytes),
                                 plan.done, stats):
            if inp.changed:
                break
            key, now = f"{plan.ident.sha256[:16]}:{chunk.first_line}", time.time()
            run.inflight[key] = (inp, chunk, now)
            inp.left += 1
            yield TagTask(key, plan.source, chunk.first_line, chunk.lines,
                          str(staging / part_name(plan.source, plan.ident.sha256, chunk.first_line)), now,
                          chunk.oversize, chunk.tail)
            chunk.lines, chunk.oversize = [], {}  # the task holds them now; keep only the chunk's coordinates
        inp.read = stats


def _encoder(config: TagConfig, spec: ModelSpec, cache: Any) -> str:
    """The visual features a chunk is tagged from, as recorded with it: the encoder fingerprint ("" = none used),
    with the prediction-time source selection when it is not every source (a change re-tags the chunk)."""
    if cache is None or config.text_only:
        return ""
    return spec.fingerprint + (f"[{','.join(config.visual.sources)}]" if config.visual.sources else "")


def _plan(files: list[Path], config: TagConfig, spec: ModelSpec | None, committer: Committer, out: Path,
          cache: Any) -> _Plan:
    """Identify every input (by memo when unchanged) and decide per input which chunks are done."""
    fresh = Freshness(spec.model_id, _encoder(config, spec, cache), cache_state(cache), bool(config.force))
    plans = [plan_input(p, committer.manifest, fresh) for p in files]
    for p in plans:
        if p.skip:
            committer.manifest.see_input(p.ident.sha256, p.ident.size, p.source, p.family_id)
            log.info("skip %s: same content as %s, every chunk done", p.source,
                     committer.manifest.paths(p.ident.sha256)[0])
    planned = _Plan(out, spec, cache, files, plans, fresh, config)
    check_image_cache(spec, cache, planned.todo, config)
    return planned


def run_tag(inputs: list[Path], config: TagConfig, spec: ModelSpec | None = None) -> dict[str, Any]:
    """Tag every input dump (files or folders) into `config.out`; returns the run's summary (RunSummary as a dict).

    `spec` replaces the checkpoint's model (benchmarks pass a null model); by default it is read from load_path.
    """
    started, cpu0 = time.monotonic(), time.process_time()
    if not config.out:
        raise UsageError("no output folder: pass --out DIR (or --set out=DIR)")
    spec = spec or model_spec(config)
    out = Path(config.out).absolute()
    files = expand_inputs(list(inputs), exclude=out)  # checked before the output folder is made
    if not files:
        raise UsageError(f"no JSONL(.gz) dumps found in {', '.join(map(str, inputs))}")
    ensure_dir(out)
    cache = _open_cache(config, spec)
    encoder = ("text-only model (images not used)" if not spec.uses_images else
               f"{spec.fingerprint}: {cache.info.get('encoder')}" if cache is not None else
               f"{spec.fingerprint} (no cache folder of it)")
    log.info("tag-corpus: output %s (Parquet parts in %s/), feature cache %s, model %s, encoder %s",
             out, data_folder(out).name, Path(config.cache_dir).absolute(), spec.model_id, encoder)
    with FileLock(out, "tag-corpus run"):
        committer = Committer(out, config.partition_by)
        try:
            planned = _plan(files, config, spec, committer, out, cache)
            run = _execute(planned, committer)
            return _summarise(planned, committer, run, started, cpu0).to_dict()
        finally:
            committer.manifest.close()


def _execute(planned: _Plan, committer: Committer) -> RunState:
    """Tag the chunks still to do, committing each as it arrives; SIGTERM stops between commits."""
    config, todo = planned.config, planned.todo
    run = RunState(config, todo)
    state = {"stop": False, "in_commit": False}
    executor = None
    try:
        with _on_sigterm(state):
            if todo:
                executor = _executor(config, planned.spec, planned.cache, planned.fresh)
                run.workers = executor.workers
                log.info("tagging %d input(s) in chunks of %d records with %s", len(todo), config.chunk_records,
                         executor.description)
                extra = {"model_id": planned.spec.model_id, "encoder": planned.fresh.encoder,
                         "cache_state": planned.fresh.cache_state,
                         "image_root": str(Path(config.dump.image_root).absolute()) if config.dump.image_root else ""}
                for result in executor.map_unordered(_tasks(run, config, committer.staging)):
                    _commit(result, run, committer, extra, state)
                    _finish_inputs(run, committer)
                run.in_process = executor.in_process
                _finish_inputs(run, committer)
            committer.write_rejects()
    except _Terminated:
        run.close()
        log.warning("SIGTERM: stopped; %d chunks (%d records) committed this run, %d in flight dropped; rerun "
                    "the same command to tag the rest", run.counts["chunks"], run.counts["rows"],
                    len(run.inflight))
        committer.write_rejects()
        raise PipelineError("tag-corpus stopped by SIGTERM; committed chunks are kept, rerun to continue")
    finally:
        if executor is not None:
            executor.close()
        committer.drop_temps()
        run.close()
    return run


def _executor(config: TagConfig, spec: ModelSpec, cache: Any, fresh: Freshness) -> Executor:
    settings = TaggerSettings(config.dump, config.seed, config.device, config.precision,
                              config.threads, config.batch_size, config.bucket_size, config.row_group_bytes,
                              config.max_record_bytes, config.require_images,
                              tuple(config.visual.sources), config.text_only)
    kwargs = dict(load_path=spec.load_path, settings=settings, model_id=spec.model_id, factory=spec.factory,
                  footer=footer(spec.model_id, fresh.encoder, spec.labels, cache_state=fresh.cache_state),
                  cache_folder=str(cache.folder) if cache is not None else "")
    in_process = config.workers == 0  # as in extract-features: 0 = this process, no Ray
    workers = max(1, config.workers)
    if not in_process and not config.ray_address and workers * config.cpus_per_worker > (os.cpu_count() or 1):
        workers = max(1, int((os.cpu_count() or 1) / config.cpus_per_worker))
        log.warning("workers=%d asks for more CPUs than this machine has (%d): running %d", config.workers,
                    os.cpu_count() or 1, workers)
    gpus = 0.0
    if config.device != "cpu" and not in_process and spec.factory is None:
        import torch

        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        gpus = min(1.0, n / max(workers, 1))
    return Executor(ChunkTagger, kwargs, workers=workers, in_process=in_process,
                    address=config.ray_address, cpus_per_worker=config.cpus_per_worker, gpus_per_worker=gpus)


def _commit(result: TagResult, run: RunState, committer: Committer, extra: dict[str, Any],
            state: dict[str, Any]) -> None:
    inp, chunk, tagged_at = run.inflight.pop(result.key)
    plan = inp.plan
    inp.left -= 1
    if inp.changed:
        if result.tmp:
            Path(result.tmp).unlink(missing_ok=True)
        return
    state["in_commit"] = True
    t0 = time.monotonic()
    entry = committer.commit(plan, chunk, result, {**extra, "image_root": extra["image_root"] or
                                                   str(Path(plan.source).parent)}, tagged_at)
    run.commit_s += time.monotonic() - t0
    state["in_commit"] = False
    if entry is None:
        inp.changed = True
        log.warning("%s changed while it was being tagged (size, mtime or inode differ from when it was hashed): its "
                    "remaining chunks are dropped; rerun once the file is complete", plan.source)
        return
    c = run.counts
    c["chunks"] += 1
    for k in ("rows", "images_used", "images_missing", "no_image"):
        c[k] += getattr(result, k)
    c["rejects"] += len(result.rejects)
    reasons = Counter(reject_kind(r["reason"]) for r in result.rejects)
    run.reasons.update(reasons)
    inp.reasons.update(reasons)
    run.worker_cpu += result.cpu_s
    pos = run.pos.get(id(plan), 0)
    nbytes = max(0, chunk.byte_end - pos)
    run.bytes_done += nbytes
    run.pos[id(plan)] = max(pos, chunk.byte_end)
    if result.images_missing and not run.warned:
        run.warned = True
        log.warning("%s lines %d-%d: %d tweets have an image with no cached features (tagged text-only); the "
                    "summary counts them all", plan.source, chunk.first_line, chunk.last_line, result.images_missing)
    if run.warm is None and c["chunks"] >= run.workers:
        run.warm = (time.monotonic(), c["rows"])
    run.advance(nbytes)
    if state["stop"]:
        raise _Terminated()


def _finish_inputs(run: RunState, committer: Committer) -> None:
    """Mark inputs whose reading ended and whose chunks are all committed as complete."""
    for inp in run.inputs:
        if inp.read is not None and not inp.left:
            if not inp.changed:
                committer.complete_input(inp.plan, inp.read["lines"], inp.read["ends_newline"])
            inp.read = None


def _check_rejects(planned: _Plan, committer: Committer, run: RunState) -> list[str]:
    """One line per input of this run with at least `max_reject_rate` of its records rejected (its top reasons)."""
    bad = []
    by_plan = {id(i.plan): i for i in run.inputs}
    for plan in planned.todo:
        chunks = committer.manifest.chunks_of(plan.family, plan.ident.sha256).values()
        rows, rejects = sum(e["rows"] for e in chunks), sum(e["rejects"] for e in chunks)
        if rows + rejects and rejects / (rows + rejects) >= planned.config.max_reject_rate:
            top = "; ".join(f"{n} x {r}" for r, n in by_plan[id(plan)].reasons.most_common(3))
            bad.append(f"{plan.source}: {rejects} of {rows + rejects} records rejected "
                       f"(max_reject_rate={planned.config.max_reject_rate}): {top or 'see _rejects.jsonl'}")
    return bad


def _summarise(planned: _Plan, committer: Committer, run: RunState, started: float, cpu0: float) -> RunSummary:
    """Log the run's end once and return its summary; exit 1 (PipelineError) for inputs that were mostly rejected or
    changed under the run, after everything else was committed."""
    c, seconds = run.counts, time.monotonic() - started
    tagged = planned.todo
    driver_cpu = time.process_time() - cpu0 - (run.worker_cpu if run.in_process else 0.0)
    summary = RunSummary(
        str(planned.out), str(data_folder(planned.out)), planned.spec.model_id, len(planned.files), len(tagged),
        len(planned.files) - len(tagged), c["chunks"], sum(p.stale for p in tagged), c["rows"], c["rejects"],
        dict(run.reasons), c["images_used"], c["images_missing"], c["no_image"], round(seconds, 3),
        round(c["rows"] / seconds, 1) if c["rows"] else None, round(run.worker_cpu, 3), round(run.commit_s, 3),
        round(driver_cpu, 3), sum(p.ident.read for p in planned.plans))
    if run.warm and c["rows"] > run.warm[1]:  # start-up excluded (model loading, Ray workers starting)
        summary.steady_tweets_per_s = round((c["rows"] - run.warm[1]) / (time.monotonic() - run.warm[0]), 1)
    if c["rows"]:
        summary.driver_cpu_us_per_record = round(1e6 * driver_cpu / c["rows"], 2)
        summary.worker_cpu_us_per_record = round(1e6 * run.worker_cpu / c["rows"], 2)
    for reason, n in run.reasons.most_common():
        log.info("rejects: %d x %s", n, reason)
    if c["images_missing"]:
        log.warning("%d tweets had an image with no cached features and were tagged text-only (%d used images); "
                    "run extract-features over these dumps, then rerun: the affected chunks are re-tagged",
                    c["images_missing"], c["images_used"])
    log.info("tag-corpus done: tagged %d records in %d chunks, %d rejects, %d input(s) tagged, %d skipped in %.1fs "
             "-> %s", c["rows"], c["chunks"], c["rejects"], len(tagged), summary.skipped, seconds,
             data_folder(planned.out))
    problems = _check_rejects(planned, committer, run)
    problems += [f"{i.plan.source}: changed while it was tagged; rerun once it is complete"
                 for i in run.inputs if i.changed]
    if problems:
        more = f" (and {len(problems) - 1} more input(s), see the log)" if len(problems) > 1 else ""
        for p in problems[1:]:
            log.error("%s", p)
        raise PipelineError(problems[0][:600] + more)
    return summary

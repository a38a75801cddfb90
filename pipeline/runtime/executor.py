"""The one executor of the batch stages: a worker class (loaded once in `__init__`, one task per `__call__`) mapped
over a stream of tasks, in this process or as Ray actors that Ray restarts and retries when a process or node dies.

Results come back in completion order; each result must name its task (the callers key them themselves).
"""
from __future__ import annotations

import logging
import os
from contextlib import ExitStack
from typing import Any, Callable, Iterable, Iterator

from exit_codes import PipelineError
from rpihmif.errors import ModelError

__all__ = ["Executor", "ray_failure", "capped_workers", "available_cpus"]

log = logging.getLogger("rpihmif.executor")


def ray_failure(exc: BaseException, what: str) -> Exception:
    """One line for a failed Ray task or a dead actor; a PipelineError (or the model library's ModelError) raised
    inside the actor comes back as itself, keeping its exit code."""
    cause = getattr(exc, "cause", None)
    if isinstance(cause, (PipelineError, ModelError)):
        return cause
    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
    return PipelineError(f"Ray worker {what} failed ({type(exc).__name__}: {first}); rerun the command: the work "
                         "already committed is kept and only the rest is redone")


def available_cpus() -> int:
    """CPUs this process may run on (its affinity mask, as taskset or a container's cpuset narrow it)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def capped_workers(requested: int, available: float, per_worker: float, where: str, kind: str = "CPU") -> int:
    """`requested` workers, at most as many as `available` units of `kind` hold at `per_worker` each (at least one);
    a cut is logged as one warning."""
    if per_worker <= 0:
        return requested
    cap = max(1, int(available / per_worker + 1e-9))
    if requested <= cap:
        return requested
    log.warning("workers %d capped to %d: %s has %g %s(s), %g per worker", requested, cap, where, available, kind,
                per_worker)
    return cap


class Executor:
    """`workers` copies of `worker_cls(**worker_kwargs)`; `in_process` runs one copy here without Ray.

    Ray mode: actors with `max_restarts` / `max_task_retries` (a killed worker process or a removed node is replaced and
    its task re-run by Ray), `in_flight` tasks queued per actor through `ray.util.ActorPool`, actors spread over nodes.
    Tasks must therefore be idempotent (the tag workers write only temp files the driver commits).
    """

    def __init__(self, worker_cls: Callable[..., Callable[[Any], Any]], worker_kwargs: dict[str, Any], *,
                 workers: int = 1, in_process: bool = True, address: str = "", cpus_per_worker: float = 1.0,
                 gpus_per_worker: float = 0.0, in_flight: int = 2, max_restarts: int = 4):
        self._stack = ExitStack()
        self.in_process = in_process
        if in_process:
            self._local = worker_cls(**worker_kwargs)
            self.workers, self.description = 1, "in-process (no Ray)"
            return
        import math

        import ray
        from ray.util import ActorPool

        from pipeline.runtime.ray_cluster import check_address, init_ray

        self._ray = ray
        self._what = getattr(worker_cls, "__name__", "actor")
        self.workers = max(1, workers)
        joined = ray.is_initialized()
        address = address if joined else check_address(address)  # RAY_ADDRESS and `auto` resolved, probed
        if not address and not joined:  # embedded Ray gets at most this machine's CPUs, whatever --workers says
            self.workers = capped_workers(self.workers, available_cpus(), cpus_per_worker, "this machine")
        self._stack.enter_context(init_ray(address, max(1, math.ceil(self.workers * cpus_per_worker))))
        try:
            resources = ray.cluster_resources()
            where = f"the Ray cluster at {address}" if address else "embedded Ray"
            self.workers = capped_workers(self.workers, resources.get("CPU", 0.0), cpus_per_worker, where)
            if gpus_per_worker > 0:  # an actor asking for a GPU the cluster lacks would wait forever
                self.workers = capped_workers(self.workers, resources.get("GPU", 0.0), gpus_per_worker, where, "GPU")
            remote = ray.remote(worker_cls).options(
                num_cpus=cpus_per_worker, num_gpus=gpus_per_worker, max_restarts=max_restarts,
                max_task_retries=max_restarts, scheduling_strategy="SPREAD")
            self.actors = [remote.remote(**worker_kwargs) for _ in range(self.workers)]
            # each actor appears `in_flight` times: one queued task per slot keeps it busy while the driver commits
            self._pool = ActorPool([a for a in self.actors for _ in range(max(1, in_flight))])
        except BaseException:
            self._stack.close()
            raise
        self.description = (f"{self.workers} Ray worker(s) on {address or 'embedded Ray'} "
                            f"(restarts {max_restarts}, {cpus_per_worker:g} CPU each)")

    def map_unordered(self, tasks: Iterable[Any]) -> Iterator[Any]:
        """Yield `worker(task)` for each task as it finishes; at most workers*in_flight tasks are held at once."""
        if self.in_process:
            for task in tasks:
                yield self._local(task)
            return
        pool = self._pool
        for task in tasks:
            while not pool.has_free():
                yield self._next(pool)
            pool.submit(lambda actor, t: actor.__call__.remote(t), task)
        while pool.has_next():
            yield self._next(pool)

    def _next(self, pool: Any) -> Any:
        try:
            return pool.get_next_unordered()
        except self._ray.exceptions.RayError as exc:
            raise ray_failure(exc, self._what) from exc

    def close(self) -> None:
        """Stop the actors (pending tasks are dropped) and shut down Ray if this executor started it."""
        if not self.in_process:
            for actor in self.actors:
                try:
                    self._ray.kill(actor, no_restart=True)
                except Exception:  # noqa: BLE001 -- best effort at shutdown; Ray stops them anyway
                    pass
            self.actors = []
        self._stack.close()

    def __enter__(self) -> "Executor":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

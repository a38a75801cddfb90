"""Streaming batches through a callable model class: in-process, or through a bounded pool of Ray actors.

The class loads in `__init__` and maps a batch dict in `__call__` (STYLE §4); resources are set by the caller.
"""
from __future__ import annotations

from typing import Any, Callable, Iterable, Iterator

from rpihmif.errors import PipelineError

__all__ = ["run_inprocess", "run_actor_pool", "ray_failure"]

Batch = dict[str, Any]


def ray_failure(exc: BaseException, what: str) -> PipelineError:
    """One line for a failed Ray task or a dead actor; a PipelineError raised inside the actor keeps its exit code."""
    cause = getattr(exc, "cause", None)
    if isinstance(cause, PipelineError):
        return cause
    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
    return PipelineError(f"Ray worker {what} failed ({type(exc).__name__}: {first}); rerun the command: the work "
                         "already committed is kept and only the rest is redone")


def run_inprocess(model_cls: Callable[..., Callable[[Batch], Batch]], model_kwargs: dict[str, Any],
                  batches: Iterable[Batch]) -> Iterator[Batch]:
    """One `model_cls(**model_kwargs)` in this process, applied to each batch in order."""
    model = model_cls(**model_kwargs)
    for batch in batches:
        yield model(batch)


def run_actor_pool(model_cls: type, model_kwargs: dict[str, Any], batches: Iterable[Batch], workers: int,
                   num_gpus: float, in_flight: int = 2) -> Iterator[Batch]:
    """Stream batches through `workers` actors, at most `in_flight` per actor: driver memory stays bounded.

    Results come in completion order. Closing the generator early cancels what is pending and kills the actors.
    """
    import ray

    actor_cls = ray.remote(model_cls).options(num_cpus=1, num_gpus=num_gpus)
    actors = [actor_cls.remote(**model_kwargs) for _ in range(workers)]
    pending: dict[Any, Any] = {}
    it = iter(batches)
    exhausted = False

    def submit(actor: Any) -> bool:
        nonlocal exhausted
        if exhausted:
            return False
        batch = next(it, None)
        if batch is None:
            exhausted = True
            return False
        pending[actor.__call__.remote(batch)] = actor
        return True

    try:
        for _ in range(in_flight):
            for actor in actors:
                submit(actor)
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            actor = pending.pop(done[0])
            try:
                result = ray.get(done[0])
            except ray.exceptions.RayError as exc:
                raise ray_failure(exc, getattr(model_cls, "__name__", "actor")) from exc
            submit(actor)
            yield result
    finally:
        for ref in pending:  # only on error or early close
            try:
                ray.cancel(ref)
            except Exception:  # noqa: BLE001 -- best effort; the actors are killed next
                pass
        for actor in actors:
            ray.kill(actor)

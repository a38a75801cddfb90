"""Streaming batches through a callable model class: in-process, or through a bounded pool of Ray actors.

The class loads in `__init__` and maps a batch dict in `__call__` (STYLE §4); resources are set by the caller.
"""
from __future__ import annotations

from typing import Any, Callable, Iterable, Iterator

__all__ = ["run_inprocess", "run_actor_pool"]

Batch = dict[str, Any]


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
            result = ray.get(done[0])
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

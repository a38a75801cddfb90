"""Inference side of tag-corpus: a callable `TagActor` (model loaded once) and in-order batch executors.

`LocalExecutor` runs the actor in this process; `RayExecutor` runs `workers` copies as Ray actors with
a bounded number of batches in flight, and yields results in submission order (deterministic rows).
"""
from __future__ import annotations

import logging
import math
from collections import deque
from contextlib import ExitStack
from typing import Any, Iterable, Iterator

from pipeline.runtime.executor import ray_failure
from pipeline.stage_config import TagConfig

log = logging.getLogger("rpihmif.tag")

__all__ = ["TagActor", "LocalExecutor", "RayExecutor", "make_executor"]


class TagActor:
    """Loads the checkpoint (and opens the feature cache) once; tags one batch per call.

    A batch is `{"words": list[list[str]], "keys": list[str | None]}` (cache keys, None = no image);
    the result is `{"entities": list[list[tuple]], "image_used": list[bool]}` with one entity tuple
    `(type, start_word, end_word_excl, score, routing_orig, routing_grounding, routing_rcnn)` per entity.
    """

    def __init__(self, load_path: str, device: str = "auto", seed: int = 0, cache_folder: str = "",
                 inference_batch: int = 64, threads: int = 0, precision: str = "fp32"):
        import torch

        from pipeline.runtime.device import resolve_device, seed_everything
        from pipeline.runtime.precision import resolve_precision
        from rpihmif.predictor import Tagger

        if threads > 0:  # 0 keeps torch's default (in a Ray actor: its num_cpus, via OMP_NUM_THREADS)
            torch.set_num_threads(threads)
        seed_everything(seed)
        device = resolve_device(device)
        self.tagger = Tagger.from_pretrained(load_path, str(device), autocast=resolve_precision(precision, device).autocast)
        self.tagger.predict([["warm", "up"]])  # first-call costs (lazy imports, kernel set-up) belong to loading
        self.inference_batch = inference_batch
        self.cache_folder = cache_folder  # one fingerprint folder of the feature cache ("" = none)
        self._cache: Any = None
        self._torch = torch

    def _features(self, keys: list[str | None]) -> list[dict | None]:
        if not any(keys) or not self.cache_folder:
            return [None] * len(keys)
        if self._cache is None:  # opened lazily in the process that reads (h5py is not fork-safe)
            from cache.reader import FeatureCache

            self._cache = FeatureCache(self.cache_folder)
        return [self._cache.get(k) if k else None for k in keys]

    def __call__(self, batch: dict[str, list]) -> dict[str, list]:
        words, keys = batch["words"], batch["keys"]
        feats = self._features(keys)
        with self._torch.inference_mode():
            preds = self.tagger.predict(words, feats, batch_size=self.inference_batch)
        entities = []
        for pred, feat in zip(preds, feats):
            row = []
            for ent in pred.entities:
                r = ent.routing if feat is not None and ent.routing else {}
                row.append((ent.type, int(ent.start), int(ent.end), float(ent.score),
                            r.get("orig"), r.get("grounding"), r.get("rcnn")))
            entities.append(row)
        return {"entities": entities, "image_used": [bool(p.image_used) for p in preds]}


class LocalExecutor:
    """Runs one TagActor in this process (workers <= 1 and no Ray address): no Ray start-up cost."""

    def __init__(self, **actor_kwargs: Any):
        self.actor = TagActor(**actor_kwargs)
        self.description = "in-process"

    def map(self, batches: Iterable[dict]) -> Iterator[dict]:
        for batch in batches:
            yield self.actor(batch)

    def close(self) -> None:
        pass


class RayExecutor:
    """`workers` TagActors on Ray (embedded when `address` is "", else that cluster); in-order results."""

    def __init__(self, address: str, workers: int, cpus_per_worker: float = 1.0, gpus_per_worker: float = 0.0,
                 **actor_kwargs: Any):
        import ray

        from pipeline.runtime.ray_cluster import init_ray

        self._ray = ray
        self._stack = ExitStack()  # shuts Ray down at close() only if init_ray started it
        self._stack.enter_context(init_ray(address, max(1, math.ceil(max(workers, 1) * cpus_per_worker))))
        try:
            remote = ray.remote(num_cpus=cpus_per_worker, num_gpus=gpus_per_worker)(TagActor)
            self.actors = [remote.remote(**actor_kwargs) for _ in range(max(workers, 1))]
        except BaseException:
            self._stack.close()
            raise
        self.max_in_flight = 2 * len(self.actors)
        self._next = 0
        self.description = f"{len(self.actors)} Ray actor(s) on {address or 'embedded Ray'}"

    def map(self, batches: Iterable[dict]) -> Iterator[dict]:
        pending: deque = deque()
        for batch in batches:
            actor = self.actors[self._next % len(self.actors)]
            self._next += 1
            pending.append(actor.__call__.remote(batch))
            if len(pending) >= self.max_in_flight:
                yield self._get(pending.popleft())
        while pending:
            yield self._get(pending.popleft())

    def _get(self, ref: Any) -> dict:
        try:
            return self._ray.get(ref)
        except self._ray.exceptions.RayError as exc:
            raise ray_failure(exc, "TagActor (inference)") from exc

    def close(self) -> None:
        for actor in self.actors:
            self._ray.kill(actor)
        self.actors = []
        self._stack.close()


def make_executor(config: TagConfig, load_path: str, cache_folder: str = "") -> LocalExecutor | RayExecutor:
    """In-process when `workers <= 1` and no `ray_address` (and `use_ray` is false), Ray actors otherwise."""
    kwargs = dict(load_path=load_path, device=config.device, seed=config.seed, cache_folder=cache_folder,
                  inference_batch=config.batch_size, threads=config.threads, precision=config.precision)
    if config.workers <= 1 and not config.ray_address and not config.use_ray:
        return LocalExecutor(**kwargs)
    gpus = min(1.0, _cuda_devices() / max(config.workers, 1)) if config.device != "cpu" else 0.0
    return RayExecutor(config.ray_address, config.workers, cpus_per_worker=config.cpus_per_worker,
                       gpus_per_worker=gpus, **kwargs)


def _cuda_devices() -> int:
    """GPUs visible here; the actors share them (a fraction each when there are more actors than GPUs)."""
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0

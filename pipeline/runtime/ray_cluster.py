"""Ray start-up for the batch stages: embedded local Ray (no dashboard, quiet) or an existing cluster by address.

`init_ray(address, workers)` is a context manager; it shuts Ray down only if it started it.
"""
from __future__ import annotations

import logging
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from rpihmif.errors import UsageError

__all__ = ["init_ray", "REPO_ROOT"]

log = logging.getLogger("rpihmif.ray")

REPO_ROOT = Path(__file__).resolve().parent.parent  # put on the workers' sys.path so `pipeline` imports there


@contextmanager
def init_ray(address: str = "", workers: int = 2, object_store_mb: int = 512) -> Iterator[None]:
    """Connect to Ray for the block.

    address "" : start an embedded local Ray with `workers` CPUs (no dashboard, worker logs not forwarded).
    otherwise  : join the cluster at `address` (host:port or ray://...); nothing is started or stopped there.
    Already initialised (e.g. by a caller): reused as is.
    """
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    import ray

    if ray.is_initialized():
        yield
        return
    path = os.pathsep.join(p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH", "")) if p)
    common = dict(log_to_driver=False, logging_level=logging.WARNING)
    try:
        if address:
            log.info("joining the Ray cluster at %s", address)
            ray.init(address=address, runtime_env={"env_vars": {"PYTHONPATH": path}}, **common)
        else:
            if workers < 1:
                raise UsageError(f"workers must be >= 1 for Ray, got {workers}")
            log.info("starting embedded Ray with %d CPUs", workers)
            # workers inherit the environment: no runtime_env, so Ray's pre-started workers can host the actors
            old = os.environ.get("PYTHONPATH")
            os.environ["PYTHONPATH"] = path
            try:
                ray.init(address="local", num_cpus=workers, include_dashboard=False,
                         object_store_memory=object_store_mb * 2**20, **common)
            finally:
                if old is None:
                    os.environ.pop("PYTHONPATH", None)
                else:
                    os.environ["PYTHONPATH"] = old
    except (ConnectionError, ValueError, RuntimeError) as exc:
        where = f"the Ray cluster at {address!r}" if address else "an embedded Ray"
        raise UsageError(f"could not start or join {where}: {exc}; check --ray-address (host:port of a running "
                         "`ray start --head`) or leave it empty for embedded Ray") from exc
    try:
        yield
    finally:
        ray.shutdown()

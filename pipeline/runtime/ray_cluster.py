"""Ray start-up for the batch stages: embedded local Ray (no dashboard, quiet) or an existing cluster by address.

`init_ray(address, workers)` is a context manager; it shuts Ray down only if it started it. Addresses follow Ray's
conventions (`resolve_address`), and `check_address` says in one exit-2 line, within seconds, when nothing Ray-like
answers there (a closed port, another kind of server, an unknown host) instead of letting Ray retry for minutes.
"""
from __future__ import annotations

import logging
import os
import socket
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from exit_codes import UsageError

__all__ = ["init_ray", "resolve_address", "check_address", "cluster_cpus", "REPO_ROOT"]

log = logging.getLogger("rpihmif.ray")

REPO_ROOT = Path(__file__).resolve().parent.parent  # put on the workers' sys.path so `pipeline` imports there
PROBE_TIMEOUT_S = 5.0  # per step of the address probe: DNS, TCP connect, the HTTP/2 answer of Ray's gRPC server
ADDRESS_FIX = ("check --ray-address (host:port of a running `ray start --head`, `auto` for the local one) or leave it "
               "and RAY_ADDRESS empty for embedded Ray")
# the HTTP/2 connection preface and an empty SETTINGS frame: a gRPC server (Ray's GCS, the Ray client server) answers
# with its own SETTINGS frame (9-byte header, type 0x4); anything else answers differently or not at all
_H2_HELLO = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes([0, 0, 0, 4, 0, 0, 0, 0, 0])


def resolve_address(address: str) -> str:
    """Ray's conventions: "" -> $RAY_ADDRESS when set, else "" (embedded Ray); `auto` -> the cluster that the last
    `ray start` on this machine recorded (UsageError when there is none); anything else as given."""
    address = (address or "").strip() or os.environ.get("RAY_ADDRESS", "").strip()
    if address != "auto":
        return address
    try:
        from ray._private.utils import read_ray_address

        found = read_ray_address()
    except (ImportError, OSError):
        found = None
    if not found:
        raise UsageError("--ray-address auto: no running local Ray cluster found (start one with `ray start --head`, "
                         "or give host:port, or leave --ray-address and RAY_ADDRESS empty for embedded Ray)")
    log.info("--ray-address auto: the local cluster at %s", found)
    return found


def _host_port(address: str) -> tuple[str, int]:
    rest = address.split("://", 1)[1] if "://" in address else address
    host, sep, port = rest.rstrip("/").rpartition(":")
    if not sep or not host or not port.isdigit():
        raise UsageError(f"--ray-address {address!r}: not host:port (or ray://host:port); {ADDRESS_FIX}")
    return host.strip("[]"), int(port)


def check_address(address: str, timeout: float = PROBE_TIMEOUT_S) -> str:
    """The resolved address of `address` ("" = embedded: nothing to probe) once its port answers as a gRPC server,
    as Ray's GCS does; an unknown host, a closed port or a server of another kind is a UsageError (exit 2)."""
    address = resolve_address(address)
    if not address:
        return address
    host, port = _host_port(address)
    where = f"--ray-address {address}"
    try:
        with socket.create_connection((host, port), timeout=timeout) as conn:
            conn.settimeout(timeout)
            conn.sendall(_H2_HELLO)
            head = b""
            while len(head) < 9:
                data = conn.recv(9 - len(head))
                if not data:
                    break
                head += data
    except socket.gaierror as exc:
        raise UsageError(f"{where}: unknown host {host!r} ({exc.strerror}); {ADDRESS_FIX}") from None
    except socket.timeout:
        raise UsageError(f"{where}: no answer within {timeout:g}s (not a Ray cluster, or a firewall); "
                         f"{ADDRESS_FIX}") from None
    except OSError as exc:
        raise UsageError(f"{where}: cannot connect ({exc.strerror or exc}); is the cluster up? {ADDRESS_FIX}") from None
    if len(head) < 9 or head[3] != 4:
        raise UsageError(f"{where}: something listens there but it is not a Ray cluster (no gRPC answer); "
                         f"{ADDRESS_FIX}")
    return address


def cluster_cpus() -> float:
    """CPUs of the Ray cluster this process is connected to (0 when it reports none)."""
    import ray

    return float(ray.cluster_resources().get("CPU", 0.0))


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
    address = check_address(address)  # RAY_ADDRESS / auto resolved; an address that is not Ray fails in seconds
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

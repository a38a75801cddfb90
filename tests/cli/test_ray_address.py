"""`--ray-address` that is not a Ray cluster (closed port, another kind of server, unknown host, `auto` with no local
cluster, a bad RAY_ADDRESS): exit 2 within 30 s in one line, no raw Ray lines; a real head passes the probe; workers
are capped by the CPUs embedded Ray or the cluster has, with one warning.
"""
from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from exit_codes import UsageError
from pipeline.runtime.executor import Executor, available_cpus, capped_workers
from pipeline.runtime.ray_cluster import check_address, resolve_address

ROOT = Path(__file__).resolve().parents[2]


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed on leaving: nothing listens there


@pytest.fixture
def plain_listener():
    """A TCP server that accepts connections and never says anything (like a port of some other service)."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(64)
    server.settimeout(0.2)
    stop, held = threading.Event(), []

    def accept() -> None:
        while not stop.is_set():
            try:
                held.append(server.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"127.0.0.1:{server.getsockname()[1]}"
    stop.set()
    thread.join()
    for conn in held:
        conn.close()
    server.close()


@pytest.fixture
def dump(tmp_path) -> Path:
    path = tmp_path / "d.jsonl"
    path.write_text('{"id": "1", "text": "hi", "image": "none.jpg"}\n')
    return path


def extract(dump: Path, address: str, env: dict | None = None) -> tuple[subprocess.CompletedProcess, float]:
    start = time.monotonic()
    res = subprocess.run([sys.executable, str(ROOT / "cli.py"), "extract-features", "--set", "dataset=",
                          "--dump", str(dump), "--workers", "2", "--ray-address", address], capture_output=True,
                         text=True, cwd=ROOT, timeout=120, env={**os.environ, "RAY_ADDRESS": "", **(env or {})})
    return res, time.monotonic() - start


def assert_one_line_exit_2(res: subprocess.CompletedProcess, seconds: float, text: str) -> None:
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert res.returncode == 2, res.stderr[-2000:]
    assert len(lines) == 1 and text in lines[0], res.stderr  # no rpc_client / gcs_client lines from Ray
    assert seconds < 30, seconds


@pytest.mark.slow  # a CLI process (about 5-10 s here: torch imports)
def test_an_unreachable_address_exits_2_fast_in_one_line_from_a_real_process(dump):
    port = closed_port()
    assert_one_line_exit_2(*extract(dump, f"127.0.0.1:{port}"), f"127.0.0.1:{port}: cannot connect")


def test_unreachable_addresses_exit_2_in_one_line(dump, plain_listener, tmp_path, monkeypatch):
    """The same through the typer app in this process: every kind of address that is not a reachable Ray cluster."""
    from typer.testing import CliRunner

    from cli import app

    def run(address: str, env: dict) -> tuple[subprocess.CompletedProcess, float]:
        start = time.monotonic()
        res = CliRunner().invoke(app, ["extract-features", "--set", "dataset=", "--dump", str(dump), "--workers", "2",
                                       "--ray-address", address], env={"RAY_ADDRESS": "", **env})
        return subprocess.CompletedProcess([], res.exit_code, res.stdout, res.stderr), time.monotonic() - start

    port = closed_port()
    assert_one_line_exit_2(*run(plain_listener, {}), "not a Ray cluster")
    assert_one_line_exit_2(*run("nohost.invalid:6379", {}), "unknown host 'nohost.invalid'")
    assert_one_line_exit_2(*run("auto", {"RAY_TMPDIR": str(tmp_path)}), "no running local Ray cluster")
    assert_one_line_exit_2(*run("", {"RAY_ADDRESS": f"127.0.0.1:{port}"}), f"127.0.0.1:{port}")


def test_probe_refuses_non_ray_answers_in_seconds(plain_listener, tmp_path, monkeypatch):
    start = time.monotonic()
    with pytest.raises(UsageError, match="cannot connect"):
        check_address(f"127.0.0.1:{closed_port()}")
    with pytest.raises(UsageError, match="not a Ray cluster"):
        check_address(plain_listener, timeout=1.0)
    with pytest.raises(UsageError, match="not host:port"):
        check_address("just-a-host")
    assert time.monotonic() - start < 10


def test_address_conventions(tmp_path, monkeypatch):
    """"" -> RAY_ADDRESS, else embedded; `auto` -> the address the last `ray start` recorded, else exit 2."""
    monkeypatch.setenv("RAY_TMPDIR", str(tmp_path))
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert resolve_address("") == "" and check_address("") == ""
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.1:6379")
    assert resolve_address("") == "10.0.0.1:6379" and resolve_address("h:1") == "h:1"
    monkeypatch.setenv("RAY_ADDRESS", "auto")
    with pytest.raises(UsageError, match="no running local Ray cluster"):
        resolve_address("")
    (tmp_path / "ray").mkdir()
    (tmp_path / "ray" / "ray_current_cluster").write_text("127.0.0.1:6380\n")
    assert resolve_address("auto") == "127.0.0.1:6380"


def test_workers_capped_by_cpus_with_one_warning(caplog):
    with caplog.at_level(logging.WARNING, "rpihmif.executor"):
        assert capped_workers(10_000, 2, 1.0, "this machine") == 2
        assert capped_workers(3, 2, 0.5, "this machine") == 3  # 2 CPUs hold 4 half-CPU workers
        assert capped_workers(8, 1, 1.0, "a cluster", "GPU") == 1
        assert capped_workers(4, 0, 1.0, "a cluster") == 1  # at least one
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 3 and "workers 10000 capped to 2: this machine has 2 CPU(s)" in warnings[0]
    assert available_cpus() == len(os.sched_getaffinity(0))


class Echo:
    def __call__(self, task: int) -> int:
        return task * 2


@pytest.fixture(autouse=True)
def _echo_by_value():
    """Ray workers cannot import this test module: ship Echo by value."""
    from ray import cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    yield
    cloudpickle.unregister_pickle_by_value(sys.modules[__name__])


@pytest.mark.slow  # starts embedded Ray
def test_embedded_ray_never_gets_more_cpus_than_the_machine(caplog, monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    import ray

    with caplog.at_level(logging.WARNING, "rpihmif.executor"):
        with Executor(Echo, {}, workers=10_000, in_process=False, in_flight=1) as ex:
            cpus = ray.cluster_resources()["CPU"]
            assert ex.workers == min(available_cpus(), 10_000) and cpus == available_cpus()
            assert sorted(ex.map_unordered(range(5))) == [0, 2, 4, 6, 8]
    assert not ray.is_initialized()
    assert any("workers 10000 capped" in r.getMessage() for r in caplog.records)


@pytest.mark.slow  # a real `ray start --head`
def test_a_real_head_passes_the_probe_and_caps_by_its_cpus(caplog, monkeypatch):
    import helpers

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    with helpers.ray_head(num_cpus=1) as address:
        assert check_address(address) == address
        with caplog.at_level(logging.WARNING, "rpihmif.executor"):
            with Executor(Echo, {}, workers=3, in_process=False, address=address, in_flight=1) as ex:
                assert ex.workers == 1
                assert sorted(ex.map_unordered(range(3))) == [0, 2, 4]
    assert any("capped to 1: the Ray cluster at" in r.getMessage() for r in caplog.records)

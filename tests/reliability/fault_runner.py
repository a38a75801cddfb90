"""Test-only launcher: runs `cli.py` in this process after arming one fault described by $RPIHMIF_FAULT (JSON).

A fault fires at an exact point (the n-th os.replace/os.rename/os.fsync whose path contains `match`, or the n-th call
of a pipeline function `module:Class.method`): SIGKILL this process, raise ENOSPC, or park until a file appears.
"""
from __future__ import annotations

import errno
import importlib
import json
import os
import signal
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
OS_TARGETS = ("os.replace", "os.rename", "os.fsync")


def _path_of(name: str, args: tuple) -> str:
    """The path an os call acts on: the source of a rename, the file behind an fsync'd descriptor."""
    if not args:
        return ""
    first = args[0]
    if name == "fsync":
        fd = first if isinstance(first, int) else first.fileno()
        try:
            return os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            return ""
    return os.fspath(first) if isinstance(first, (str, os.PathLike)) else ""


def arm(spec: dict) -> None:
    """Wrap the target so that its `nth` matching call fires `action` `when` ("before"/"after") the real call."""
    target, match, nth = spec["target"], spec.get("match", ""), int(spec.get("nth", 1))
    when, action = spec.get("when", "before"), spec["action"]
    if target in OS_TARGETS:
        owner, name = os, target.split(".", 1)[1]
    else:
        module, attr = target.split(":")
        owner = importlib.import_module(module)
        *path, name = attr.split(".")
        for part in path:
            owner = getattr(owner, part)
    real = getattr(owner, name)
    calls = [0]

    def fire() -> None:
        if action == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        elif action == "enospc":  # what the kernel gives: no file name attached
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        elif action == "wait":
            Path(spec["ready"]).write_text(str(os.getpid()))
            while not Path(spec["until"]).exists():
                time.sleep(0.05)
        else:
            raise ValueError(f"unknown fault action {action!r}")

    def wrapper(*args, **kwargs):
        hit = False
        if target not in OS_TARGETS or match in _path_of(name, args):
            calls[0] += 1
            hit = calls[0] == nth
        if hit and when == "before":
            fire()
        out = real(*args, **kwargs)
        if hit and when == "after":
            fire()
        return out

    setattr(owner, name, wrapper)


def main() -> None:
    sys.path.insert(0, str(ROOT))
    spec = os.environ.get("RPIHMIF_FAULT")
    if spec:
        arm(json.loads(spec))
    from cli import app

    sys.argv = [str(ROOT / "cli.py"), *sys.argv[1:]]
    app()


if __name__ == "__main__":
    main()

"""Runnable command lines for hints: the program as the user runs it (`rpihmif` when installed, `python cli.py` in the
source tree, both as absolute as needed) and shell-quoted arguments, so a printed hint can be pasted as is."""
from __future__ import annotations

import shlex
import shutil
import sys
from pathlib import Path

__all__ = ["program", "command_line"]

CLI = Path(__file__).resolve().parents[2] / "cli.py"
ENTRY_POINT = "rpihmif"  # [project.scripts] in pyproject.toml


def program() -> list[str]:
    """`[rpihmif]` when running as the installed entry point (found on PATH; else its absolute path), otherwise
    `[python, /abs/cli.py]` of this source tree."""
    argv0 = sys.argv[0] if sys.argv and sys.argv[0] else ""
    if Path(argv0).name == ENTRY_POINT:
        on_path = shutil.which(ENTRY_POINT)
        if on_path and Path(on_path).resolve() == Path(argv0).resolve():
            return [ENTRY_POINT]
        return [str(Path(argv0).resolve())]
    return [sys.executable, str(CLI)]


def command_line(command: str, *args: str) -> str:
    """The shell line that runs `command` with `args` (each quoted as needed)."""
    return shlex.join([*program(), command, *[str(a) for a in args]])

"""Where the feature cache lives by default: a user cache folder, never the working folder or the source tree.

`RPIHMIF_CACHE` overrides it (as `HF_HOME` / `TORCH_HOME` do); else `$XDG_CACHE_HOME/rpihmif/features`.
"""
from __future__ import annotations

import os
from pathlib import Path

__all__ = ["ENV_VAR", "default_cache_dir", "resolve_cache_dir"]

ENV_VAR = "RPIHMIF_CACHE"


def default_cache_dir() -> Path:
    """`$RPIHMIF_CACHE`, else `$XDG_CACHE_HOME/rpihmif/features` (`~/.cache/rpihmif/features`)."""
    if os.environ.get(ENV_VAR):
        return Path(os.environ[ENV_VAR]).expanduser().absolute()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return (Path(base).expanduser() / "rpihmif" / "features").absolute()


def resolve_cache_dir(value: str | os.PathLike | None) -> Path:
    """The absolute cache root for a config value: empty = the default user cache folder."""
    if value is None or str(value) == "":
        return default_cache_dir()
    return Path(value).expanduser().absolute()

"""Pretrained names for `from_pretrained`: a local folder or a Hugging Face Hub id; offline is the user's choice
(`HF_HUB_OFFLINE` / `--offline` / the `offline` config key), and a cached model loads offline.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from rpihmif.errors import ModelError, bounded

__all__ = ["is_offline", "go_offline", "local_folder", "load_pretrained"]

_TRUE = ("1", "true", "yes", "on")
_SAFE = {"trust_remote_code": False}  # code shipped with a model (auto_map + .py) never runs, and nothing asks on stdin


def _safe(loader: Any) -> dict[str, bool]:
    """Loader kwargs: no remote code; for weights, safetensors only (a pickle is never unpickled)."""
    return {**_SAFE, **({"use_safetensors": True} if _is_model_loader(loader) else {})}


def _is_model_loader(loader: Any) -> bool:
    """Whether `loader` loads weights (a model class or AutoModel), as opposed to a tokenizer or image processor."""
    import torch

    return (isinstance(loader, type) and issubclass(loader, torch.nn.Module)) or getattr(loader, "__name__", "") \
        .startswith("AutoModel")


def is_offline(flag: bool = False) -> bool:
    """True when `flag` or `HF_HUB_OFFLINE` / `TRANSFORMERS_OFFLINE` asks for no network (read at call time)."""
    env = (os.environ.get(k, "").strip().lower() for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))
    return flag or any(v in _TRUE for v in env)


def go_offline() -> None:
    """From now on no network for this process and the processes it starts (Ray workers): sets `HF_HUB_OFFLINE=1`,
    which `is_offline` and the Hugging Face libraries read. The one place `--offline` and `offline: true` act."""
    os.environ["HF_HUB_OFFLINE"] = "1"


def _looks_like_path(name: str) -> bool:
    return name.startswith(("/", "./", "../", "~")) or Path(name).expanduser().exists()


def local_folder(name: str) -> Path | None:
    """The folder holding `name`'s files: itself when it is a folder, its snapshot in the hub cache, else None."""
    path = Path(name).expanduser()
    if path.is_dir():
        return path
    if _looks_like_path(name):
        return None
    from huggingface_hub import try_to_load_from_cache

    try:
        cached = try_to_load_from_cache(name, "config.json")
    except ValueError:  # not a valid repo id
        return None
    return Path(cached).parent if isinstance(cached, str) else None


def load_pretrained(loader: Any, name: str, what: str, offline: bool = False, **kwargs: Any) -> Any:
    """`loader.from_pretrained(name)` for a local folder or a hub id, errors as ModelError naming `what`
    (e.g. "bert_name") and how to get the model; never reaches the network when offline."""
    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelError(f"{what} {bounded(str(path))!r} has no config.json; is it a transformers model folder "
                             f"saved with save_pretrained?")
        if _is_model_loader(loader) and not any(path.glob("*.safetensors")):
            raise ModelError(f"{what} {bounded(str(path))!r} has no .safetensors weights (pickled weights such as "
                             "pytorch_model.bin are never loaded); save the model again with save_pretrained "
                             "(safetensors is its default)")
        try:
            return loader.from_pretrained(str(path), local_files_only=True, **_safe(loader), **kwargs)
        except (OSError, ValueError, TypeError, KeyError) as exc:
            raise ModelError(f"{what} {bounded(str(path))!r}: cannot load it ({type(exc).__name__}: "
                             f"{bounded(exc)})") from exc
    if _looks_like_path(name):
        raise ModelError(f"{what} {name!r}: folder does not exist; give a model folder saved with save_pretrained "
                         f"or a Hugging Face Hub id")
    offline = is_offline(offline)
    try:
        return loader.from_pretrained(name, local_files_only=offline, **_safe(loader), **kwargs)
    except OSError as exc:
        if offline:
            from huggingface_hub.constants import HF_HUB_CACHE

            raise ModelError(f"{what} {name!r} is not in the Hugging Face cache ({HF_HUB_CACHE}) and offline mode is "
                             f"on (HF_HUB_OFFLINE / --offline); fetch it once with `huggingface-cli download {name}` "
                             f"(or run once online), or give a local folder") from exc
        raise ModelError(f"{what} {name!r}: cannot load it from the Hugging Face Hub ({bounded(exc)}); check the "
                         f"id and the network, or give a local folder") from exc

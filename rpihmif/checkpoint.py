"""Checkpoint folders: `RPIHMIF.save_pretrained` (config.json with model_type "rpihmif", model.safetensors) + tokenizer
files + metrics.json + a model card. `open_checkpoint` is the one way to open one: it validates everything it reads.

A checkpoint is named by its folder, a run folder (its best/) or a Hugging Face Hub id; every failure is a ModelError
naming the file, so no caller wraps it.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rpihmif.checkpoint_check import check_tokenizer, refuse
from rpihmif.checkpoint_config import CONFIG, FORMAT, METRICS, WEIGHTS, config_text, read_checkpoint_config
from rpihmif.config import ModelConfig
from rpihmif.errors import ModelError, bounded
from rpihmif.model import checked_config, load_model_folder

__all__ = ["FORMAT", "Checkpoint", "save_checkpoint", "open_checkpoint", "inspect_checkpoint", "load_checkpoint",
           "resolve_checkpoint", "read_checkpoint_config", "model_id", "load_model_folder", "MODEL_CARD", "CONFIG", "WEIGHTS"]

MODEL_CARD = "README.md"
RUN_CHECKPOINTS = ("refit/best", "best")  # inside a run folder, the checkpoint train reports as its model


@dataclass
class Checkpoint:
    """An opened checkpoint: the model in eval mode on its device, its fast tokenizer and its configs."""

    folder: Path  # the checkpoint folder itself (a run folder's best/, a hub snapshot)
    model: Any  # RPIHMIF
    tokenizer: Any  # PreTrainedTokenizerFast
    config: ModelConfig
    model_id: str  # sha256 of config.json + weights, first 12 hex


def save_checkpoint(folder: str | Path, model: Any, tokenizer: Any, metrics: dict | None = None) -> Path:
    """Write the checkpoint into `folder` (created if needed; the trainer passes atomic_dir's temp folder); with
    `metrics` (train's metrics.json) also the model card README.md."""
    from rpihmif.model_card import model_card

    folder = Path(folder)
    model.save_pretrained(str(folder))
    tokenizer.save_pretrained(str(folder))
    if metrics is not None:
        (folder / METRICS).write_text(json.dumps(metrics, indent=2, sort_keys=True, default=str) + "\n", "utf-8")
        (folder / MODEL_CARD).write_text(model_card(model.model_config, metrics), "utf-8")
    return folder


def resolve_checkpoint(name: str | Path, offline: bool = False) -> Path:
    """The checkpoint folder `name` stands for: itself, a run folder's refit/best or best, a file inside a checkpoint
    folder, or a Hugging Face Hub id (downloaded, or from the hub cache when offline)."""
    from rpihmif.hub import _looks_like_path, is_offline

    path = Path(name).expanduser()
    if path.is_file() and (path.parent / CONFIG).is_file():
        return path.parent
    if path.is_dir():
        if (path / CONFIG).is_file():
            return path
        for sub in RUN_CHECKPOINTS:
            if (path / sub / CONFIG).is_file():
                return path / sub
        raise ModelError(f"{bounded(str(path), 400)}: not a checkpoint folder (no {CONFIG}) nor a run folder (no "
                         "best/); pass the best/ folder of a train run, the run folder, or a Hugging Face Hub id")
    if _looks_like_path(str(name)) or not str(name).strip():
        raise ModelError(f"model {bounded(str(name), 400)!r}: no such folder, so not a checkpoint folder (no "
                         "config.json to read); pass the best/ folder of a train run, the run folder, or a Hugging "
                         "Face Hub id")
    from huggingface_hub import snapshot_download

    offline = is_offline(offline)
    try:
        return Path(snapshot_download(str(name), local_files_only=offline))
    except Exception as exc:  # noqa: BLE001 -- any hub failure (bad id, network, not cached) is one line
        how = ("it is not in the Hugging Face cache and offline mode is on (HF_HUB_OFFLINE / --offline); fetch it "
               f"once with `huggingface-cli download {name}`" if offline else "check the id and the network")
        raise ModelError(f"model {bounded(str(name))!r}: cannot get it from the Hugging Face Hub "
                         f"({type(exc).__name__}: {bounded(exc)}); {how}, or give a local folder") from exc


def inspect_checkpoint(folder: str | Path, expected_labels: list[str] | None = None) -> tuple[str, ModelConfig]:
    """`(model id, ModelConfig)` of a checkpoint folder, checked before any weight is loaded: config.json readable
    with sane types and sizes, model.safetensors whole and shaped as the config says, tokenizer files present.

    expected_labels: when given, refuse (ModelError) a checkpoint whose label list differs.
    """
    folder = Path(folder)
    config, _ = checked_config(folder, expected_labels)
    return model_id(folder), config


def _tokenizer(folder: Path) -> Any:
    from transformers import AutoTokenizer

    try:  # never code from the folder (auto_map + .py), never a question on stdin
        tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True, trust_remote_code=False)
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as exc:  # noqa: BLE001 -- tokenizers panics are BaseExceptions
        raise refuse(folder / "tokenizer_config.json", f"cannot load the tokenizer ({type(exc).__name__}: "
                                                       f"{bounded(exc)})") from exc
    check_tokenizer(folder, tokenizer)
    return tokenizer


def open_checkpoint(name: str | Path, device: str = "cpu", expected_labels: list[str] | None = None,
                    offline: bool = False) -> Checkpoint:
    """Open a checkpoint (folder, run folder or hub id): validated config, strict weights, checked tokenizer."""
    folder = resolve_checkpoint(name, offline)
    model = load_model_folder(folder, expected_labels)
    tokenizer = _tokenizer(folder)
    try:
        model = model.to(device)
    except (RuntimeError, ValueError, TypeError) as exc:
        raise ModelError(f"device {bounded(str(device))!r}: cannot move the model there ({bounded(exc)})") from exc
    return Checkpoint(folder, model, tokenizer, model.model_config, model_id(folder))


def load_checkpoint(folder: str | Path, device: str = "cpu", expected_labels: list[str] | None = None):
    """`(RPIHMIF in eval mode on device, tokenizer, ModelConfig)` of `open_checkpoint`."""
    ckpt = open_checkpoint(folder, device, expected_labels)
    return ckpt.model, ckpt.tokenizer, ckpt.config


def model_id(folder: str | Path) -> str:
    """Short stable id: sha256 of the canonical config.json and the weights file, first 12 hex digits."""
    folder = Path(folder)
    h = hashlib.sha256()
    h.update(config_text(folder).encode())
    try:
        with open(folder / WEIGHTS, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    except OSError as exc:
        raise refuse(folder / WEIGHTS, f"unreadable weights ({bounded(exc)})") from exc
    return h.hexdigest()[:12]




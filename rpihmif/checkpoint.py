"""Checkpoint folders: `RPIHMIF.save_pretrained` (config.json with model_type "rpihmif", model.safetensors) + tokenizer
files + metrics.json. Self-contained: the encoder is rebuilt from its saved config; the old format still loads.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from rpihmif.checkpoint_config import CONFIG, FORMAT, WEIGHTS, read_checkpoint_config
from rpihmif.errors import UsageError
from rpihmif.model import RPIHMIF

__all__ = ["FORMAT", "save_checkpoint", "load_checkpoint", "read_checkpoint_config", "model_id"]

METRICS = "metrics.json"


def save_checkpoint(folder: str | Path, model: RPIHMIF, tokenizer: Any, metrics: dict | None = None) -> Path:
    """Write the checkpoint into `folder` (created if needed; the trainer passes atomic_dir's temp folder)."""
    folder = Path(folder)
    model.save_pretrained(str(folder))
    tokenizer.save_pretrained(str(folder))
    if metrics is not None:
        (folder / METRICS).write_text(json.dumps(metrics, indent=2, sort_keys=True, default=str) + "\n", "utf-8")
    return folder


def load_checkpoint(folder: str | Path, device: str = "cpu", expected_labels: list[str] | None = None):
    """Load `(RPIHMIF in eval mode on device, tokenizer, ModelConfig)`; strict weights.

    expected_labels: when given, refuse (UsageError) a checkpoint whose label list differs.
    """
    from transformers import AutoTokenizer

    folder = Path(folder)
    config, _ = read_checkpoint_config(folder)
    if expected_labels is not None and list(expected_labels) != list(config.labels):
        raise UsageError(f"{folder / CONFIG}: checkpoint labels {config.labels} != expected {list(expected_labels)}")
    model = RPIHMIF.from_pretrained(folder)
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    except (OSError, ValueError, TypeError) as exc:
        raise UsageError(f"{folder}: cannot load the tokenizer files ({exc}); the checkpoint folder is incomplete")
    if not getattr(tokenizer, "is_fast", False):
        raise UsageError(f"{folder}: no tokenizer.json (fast tokenizer); the checkpoint folder is incomplete")
    return model.to(device).eval(), tokenizer, config


def model_id(folder: str | Path) -> str:
    """Short stable id: sha256 of the canonical config.json and the weights file, first 12 hex digits."""
    folder = Path(folder)
    h = hashlib.sha256()
    h.update(json.dumps(json.loads((folder / CONFIG).read_text(encoding="utf-8")), sort_keys=True).encode())
    with open(folder / WEIGHTS, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:12]

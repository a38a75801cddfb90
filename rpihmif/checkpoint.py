"""Checkpoint folders: `RPIHMIF.save_pretrained` (config.json with model_type "rpihmif", model.safetensors) + tokenizer
files + metrics.json. Self-contained: the encoder is rebuilt from its saved config; the old format still loads.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from safetensors import SafetensorError
from safetensors.torch import load_model

from rpihmif.config import ModelConfig, RPIHMIFConfig
from rpihmif.errors import UsageError
from rpihmif.model import RPIHMIF

__all__ = ["FORMAT", "save_checkpoint", "load_checkpoint", "load_model_folder", "read_checkpoint_config", "model_id"]

FORMAT = "rpihmif-checkpoint/1"  # the old config.json layout ({"format", "model", "encoder"}), still read
WEIGHTS, CONFIG, METRICS = "model.safetensors", "config.json", "metrics.json"


def save_checkpoint(folder: str | Path, model: RPIHMIF, tokenizer: Any, metrics: dict | None = None) -> Path:
    """Write the checkpoint into `folder` (created if needed; the trainer passes atomic_dir's temp folder)."""
    folder = Path(folder)
    model.save_pretrained(str(folder))
    tokenizer.save_pretrained(str(folder))
    if metrics is not None:
        (folder / METRICS).write_text(json.dumps(metrics, indent=2, sort_keys=True, default=str) + "\n", "utf-8")
    return folder


def _config_dict(folder: Path) -> dict:
    path = folder / CONFIG
    if not path.is_file():
        raise UsageError(f"{path}: no checkpoint config; is {str(folder)!r} a checkpoint folder (best/ of a run)?")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UsageError(f"{path}: unreadable checkpoint config ({exc}); copy the folder again or retrain") from exc
    if not isinstance(data, dict):
        raise UsageError(f"{path}: expected a JSON object")
    return data


def read_checkpoint_config(folder: str | Path) -> tuple[ModelConfig, dict]:
    """(ModelConfig, encoder config dict) of a checkpoint folder, new or old format; UsageError naming config.json."""
    folder = Path(folder)
    data = _config_dict(folder)
    if data.get("model_type") == RPIHMIFConfig.model_type:
        model, encoder = data.get("rpihmif"), data.get("encoder")
    elif data.get("format") == FORMAT:
        model, encoder = data.get("model"), data.get("encoder")
    else:
        raise UsageError(f"{folder / CONFIG}: not an RPI-HMIF checkpoint config (no model_type \"rpihmif\" and not the "
                         f"old format {FORMAT!r})")
    if not isinstance(model, dict) or not isinstance(encoder, dict) or not encoder.get("model_type"):
        raise UsageError(f"{folder / CONFIG}: the model or encoder section is missing or has no model_type")
    try:
        return ModelConfig.from_dict(model), encoder
    except (TypeError, ValueError) as exc:
        raise UsageError(f"{folder / CONFIG}: bad model config ({exc})") from exc


def load_model_folder(folder: str | Path) -> RPIHMIF:
    """`RPIHMIF` from a local checkpoint folder (both formats), strict: every weight present with its shape."""
    folder = Path(folder)
    model_config, encoder = read_checkpoint_config(folder)
    weights = folder / WEIGHTS
    if not weights.is_file():
        raise UsageError(f"{weights}: missing model weights; the checkpoint folder is incomplete")
    try:
        model = RPIHMIF(RPIHMIFConfig.from_parts(model_config, encoder))
    except (TypeError, ValueError, KeyError) as exc:
        raise UsageError(f"{folder / CONFIG}: cannot build the model from it ({exc})") from exc
    try:  # safetensors directly: strict, and the same for both formats
        load_model(model, str(weights), strict=True)
    except (SafetensorError, OSError) as exc:
        raise UsageError(f"{weights}: unreadable weights ({exc}); the file is truncated or damaged") from exc
    except RuntimeError as exc:
        raise UsageError(f"{weights}: weights do not match {folder / CONFIG} ({len(model_config.labels)} labels); "
                         f"the checkpoint folder was altered or mixed: {str(exc)[:300]}") from exc
    return model.eval()


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

"""Checkpoint folders: model.safetensors + config.json (model and encoder configs) + tokenizer files + metrics.json.

Self-contained: loading rebuilds the encoder from its saved config, so the original bert_name folder is not needed.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from safetensors.torch import load_model, save_model

from rpihmif.config import ModelConfig
from rpihmif.model import RPIHMIF

__all__ = ["FORMAT", "save_checkpoint", "load_checkpoint", "read_checkpoint_config", "model_id"]

FORMAT = "rpihmif-checkpoint/1"
WEIGHTS, CONFIG, METRICS = "model.safetensors", "config.json", "metrics.json"


def _write_json(path: Path, data: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def save_checkpoint(folder: str | Path, model: RPIHMIF, tokenizer: Any, metrics: dict | None = None) -> Path:
    """Write the checkpoint folder (created if needed) and return it."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / (WEIGHTS + ".tmp")
    save_model(model, str(tmp), metadata={"format": FORMAT})
    os.replace(tmp, folder / WEIGHTS)
    encoder_config = model.encoder.config.to_dict()
    _write_json(folder / CONFIG, {"format": FORMAT, "model": model.config.to_dict(), "encoder": encoder_config})
    tokenizer.save_pretrained(str(folder))
    if metrics is not None:
        _write_json(folder / METRICS, metrics)
    return folder


def read_checkpoint_config(folder: str | Path) -> tuple[ModelConfig, dict]:
    """(ModelConfig, encoder config dict) of a checkpoint folder, with errors naming the file."""
    path = Path(folder) / CONFIG
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no checkpoint config; is {str(folder)!r} a checkpoint folder (best/ of a run)?")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: unreadable checkpoint config ({exc})") from exc
    if data.get("format") != FORMAT or "model" not in data or "encoder" not in data:
        raise ValueError(f"{path}: not an RPI-HMIF checkpoint config (expected format {FORMAT!r})")
    return ModelConfig.from_dict(data["model"]), data["encoder"]


def load_checkpoint(folder: str | Path, device: str = "cpu", expected_labels: list[str] | None = None):
    """Load `(RPIHMIF in eval mode on device, tokenizer, ModelConfig)`; strict weights.

    expected_labels: when given, refuse (ValueError) a checkpoint whose label list differs.
    """
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    folder = Path(folder)
    config, encoder_dict = read_checkpoint_config(folder)
    if expected_labels is not None and list(expected_labels) != list(config.labels):
        raise ValueError(f"{folder / CONFIG}: checkpoint labels {config.labels} != expected {list(expected_labels)}")
    weights = folder / WEIGHTS
    if not weights.is_file():
        raise FileNotFoundError(f"{weights}: missing model weights; the checkpoint folder is incomplete")
    encoder_dict = dict(encoder_dict)
    model_type = encoder_dict.pop("model_type", None)
    if not model_type:
        raise ValueError(f"{folder / CONFIG}: encoder config has no model_type")
    encoder = AutoModel.from_config(AutoConfig.for_model(model_type, **encoder_dict))
    model = RPIHMIF(config, encoder)
    try:
        load_model(model, str(weights), strict=True)
    except RuntimeError as exc:
        raise ValueError(f"{weights}: weights do not match {folder / CONFIG} ({len(config.labels)} labels); "
                         f"the checkpoint folder was altered or mixed: {str(exc)[:300]}") from exc
    tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
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

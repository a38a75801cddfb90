"""The config.json of a checkpoint folder, this format (model_type "rpihmif") or the old one, read into configs.

Below both `rpihmif.model` (strict folder loading) and `rpihmif.checkpoint` (save/load with the tokenizer).
"""
from __future__ import annotations

import json
from pathlib import Path

from rpihmif.config import ModelConfig, RPIHMIFConfig
from rpihmif.errors import UsageError

__all__ = ["FORMAT", "WEIGHTS", "CONFIG", "read_checkpoint_config"]

FORMAT = "rpihmif-checkpoint/1"  # the old config.json layout ({"format", "model", "encoder"}), still read
WEIGHTS, CONFIG = "model.safetensors", "config.json"


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

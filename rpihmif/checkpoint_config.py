"""The config.json of a checkpoint folder, this format (model_type "rpihmif") or the old one, read into configs.

Below both `rpihmif.model` (strict folder loading) and `rpihmif.checkpoint` (the one opener). Values that old
checkpoints lack come from the legacy defaults named here.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rpihmif.checkpoint_check import CHECK_FAILURES, check_config_file, read_json, refuse
from rpihmif.config import ModelConfig, RPIHMIFConfig
from rpihmif.errors import ModelError, bounded

__all__ = ["FORMAT", "WEIGHTS", "CONFIG", "METRICS", "read_checkpoint_config", "vision_record_of"]

FORMAT = "rpihmif-checkpoint/1"  # the old config.json layout ({"format", "model", "encoder"}), still read
WEIGHTS, CONFIG, METRICS = "model.safetensors", "config.json", "metrics.json"
# legacy default: checkpoints written before config.json recorded `visual.encoder` kept the vision section of the
# train config only in metrics.json (`config.vision`); it is read from there
LEGACY_VISION_SOURCE = ("config", "vision")


def read_checkpoint_config(folder: str | Path) -> tuple[ModelConfig, dict]:
    """(ModelConfig, encoder config dict) of a checkpoint folder, new or old format; ModelError naming config.json."""
    folder = Path(folder)
    data = check_config_file(folder)
    path = folder / CONFIG
    if data.get("model_type") == RPIHMIFConfig.model_type:
        model, encoder = data.get("rpihmif"), data.get("encoder")
    elif data.get("format") == FORMAT:
        model, encoder = data.get("model"), data.get("encoder")
    else:
        raise ModelError(f"{path}: not an RPI-HMIF checkpoint config (no model_type \"rpihmif\" and not the old "
                         f"format {FORMAT!r})")
    if not isinstance(model, dict) or not isinstance(encoder, dict) or not isinstance(encoder.get("model_type"), str):
        raise ModelError(f"{path}: the model or encoder section is missing or has no model_type")
    try:
        config = ModelConfig.from_dict(model)
    except CHECK_FAILURES as exc:
        raise ModelError(f"{path}: bad model config ({bounded(exc)})") from exc
    if config.visual.encoder:
        from rpihmif.vision_encoder import settings_from_record

        try:
            settings_from_record(config.visual.encoder)
        except CHECK_FAILURES as exc:
            raise ModelError(f"{path}: bad vision encoder record ({bounded(exc)})") from exc
    return config, encoder


def vision_record_of(folder: str | Path, config: ModelConfig) -> dict[str, Any]:
    """The checkpoint's vision encoder record (`visual.encoder`), else the legacy one from metrics.json
    `config.vision` ({} when neither exists: a text-only model, or a checkpoint that never said)."""
    from rpihmif.vision_encoder import VisionSettings, settings_from_record, vision_record

    if config.visual.encoder:
        return dict(config.visual.encoder)
    path = Path(folder) / METRICS
    if not path.is_file():
        return {}
    section: Any = read_json(path)
    for key in LEGACY_VISION_SOURCE:
        section = section.get(key) if isinstance(section, dict) else None
    if not isinstance(section, dict):
        return {}
    try:
        record = vision_record(VisionSettings(**section))
        settings_from_record(record)
    except CHECK_FAILURES as exc:
        raise refuse(path, f"config.vision is not a vision section ({bounded(exc)})") from exc
    return record


def config_text(folder: Path) -> str:
    """config.json canonicalised (sorted keys), for the model id."""
    return json.dumps(read_json(folder / CONFIG), sort_keys=True)

"""Checkpoint folders as the stages see them: validated config and model id without loading the weights.

A folder that is not a checkpoint, is incomplete, or was trained on another label set is a UsageError (exit 2).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from rpihmif.errors import UsageError
from rpihmif.labels import LABELS

__all__ = ["checkpoint_info"]


def checkpoint_info(folder: str | Path) -> tuple[str, Any]:
    """`(model id, ModelConfig)` of a checkpoint folder whose labels are this pipeline's BIO label set."""
    from rpihmif.checkpoint import model_id, read_checkpoint_config

    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise UsageError(f"{folder}: not a checkpoint folder (no config.json); pass the best/ folder of a train run")
    try:
        config, _ = read_checkpoint_config(folder)
        mid = model_id(folder)
    except (OSError, ValueError) as exc:
        raise UsageError(f"{folder}: unusable checkpoint ({exc})") from exc
    if list(config.labels) != list(LABELS):
        raise UsageError(f"{folder}: checkpoint labels {config.labels} are not this pipeline's label set "
                         f"{list(LABELS)}; retrain it with `python cli.py train`")
    return mid, config

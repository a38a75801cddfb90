"""Checkpoint folders as the stages see them: `rpihmif.checkpoint`'s checked opener with this pipeline's label set.

A folder that is not a checkpoint, is incomplete, damaged, absurd, or was trained on another label set is a
ModelError (the CLI exits 2) naming the file and what to do; callers never wrap it.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from rpihmif.checkpoint import inspect_checkpoint, resolve_checkpoint
from rpihmif.checkpoint_check import check_weights_header
from rpihmif.labels import LABELS

__all__ = ["checkpoint_info", "check_weights_header"]


def checkpoint_info(folder: str | Path) -> tuple[str, Any]:
    """`(model id, ModelConfig)` of a checkpoint (folder, run folder or hub id) whose labels are this pipeline's BIO
    label set, checked before any weight is loaded (see `rpihmif.checkpoint.inspect_checkpoint`)."""
    return inspect_checkpoint(resolve_checkpoint(folder), expected_labels=list(LABELS))

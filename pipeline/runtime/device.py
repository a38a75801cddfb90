"""Run-time choices shared by the stages: one seed for Python, NumPy and torch, and the compute device.

`resolve_device("auto")` picks CUDA when present; nothing assumes a GPU.
"""
from __future__ import annotations

import random

import numpy as np
import torch

from exit_codes import UsageError

__all__ = ["seed_everything", "resolve_device"]


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def resolve_device(name: str) -> torch.device:
    """`auto` -> CUDA when present else CPU; an explicit `cuda` without a GPU is a UsageError."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise UsageError(f"device {name!r} is not a device; use auto, cpu, cuda or cuda:N") from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"device {name!r} asked for but no CUDA GPU is visible; use --set device=cpu")
    return device

"""Compute precision of a stage or the notebook API: `auto | fp32 | bf16`, resolved once per device into an autocast factory.

`auto` = bf16 autocast where the hardware runs it natively (CUDA with bf16; CPUs with AMX or AVX512-BF16), else fp32.
"""
from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import ContextManager

import torch

from rpihmif.errors import ModelError

__all__ = ["PRECISIONS", "Precision", "cpu_bf16_support", "resolve_precision"]

PRECISIONS = ("auto", "fp32", "bf16")
CPU_BF16_FLAGS = ("amx_bf16", "avx512_bf16")  # /proc/cpuinfo flags of native bf16 matmuls
CPUINFO = "/proc/cpuinfo"
log = logging.getLogger("rpihmif.precision")


@dataclass(frozen=True)
class Precision:
    """The resolved choice: `name` fp32 or bf16 on `device_type`, and why (logged)."""

    name: str  # fp32 | bf16
    device_type: str  # cpu | cuda
    reason: str

    @property
    def dtype(self) -> torch.dtype:
        return torch.bfloat16 if self.name == "bf16" else torch.float32

    def autocast(self) -> ContextManager:
        """A fresh context: bf16 autocast on the device, or nothing for fp32 (weights and optimizer stay fp32)."""
        if self.name == "bf16":
            return torch.autocast(self.device_type, dtype=torch.bfloat16)
        return contextlib.nullcontext()


def cpu_bf16_support(cpuinfo: str | Path | None = None) -> tuple[bool, str]:
    """(native bf16?, evidence): a bf16 flag in /proc/cpuinfo, else torch's CPU capability ("AMX..." / "AVX512_BF16")."""
    try:
        text = Path(cpuinfo or CPUINFO).read_text(encoding="utf-8", errors="replace")
    except OSError:
        text = ""
    flags: set[str] = set()
    for line in text.splitlines():
        if line.startswith("flags"):
            flags.update(line.partition(":")[2].split())
            break
    found = [f for f in CPU_BF16_FLAGS if f in flags]
    if found:
        return True, f"CPU flags {', '.join(found)}"
    capability = str(getattr(torch.backends.cpu, "get_cpu_capability", lambda: "")())
    if "AMX" in capability.upper() or "BF16" in capability.upper():
        return True, f"torch CPU capability {capability}"
    return False, f"no {' / '.join(CPU_BF16_FLAGS)} CPU flag (torch CPU capability {capability or 'unknown'})"


def resolve_precision(name: str, device: str | torch.device, log_it: bool = True) -> Precision:
    """`auto | fp32 | bf16` on `device` -> Precision; an unknown name is a ModelError."""
    if name not in PRECISIONS:
        raise ModelError(f"precision {name!r}: expected one of {', '.join(PRECISIONS)}")
    device_type = torch.device(device).type
    if device_type not in ("cpu", "cuda"):
        precision = Precision("fp32", device_type, f"no bf16 autocast on {device_type}")
    elif name != "auto":
        precision = Precision(name, device_type, "set in the config")
    elif device_type == "cuda":
        ok = torch.cuda.is_bf16_supported()
        precision = Precision("bf16" if ok else "fp32", device_type,
                              f"auto: this GPU {'supports' if ok else 'lacks'} bf16")
    else:
        ok, why = cpu_bf16_support()
        precision = Precision("bf16" if ok else "fp32", device_type, f"auto: {why}")
    if log_it:
        log.info("precision %s on %s (%s)", precision.name, device_type, precision.reason)
    return precision

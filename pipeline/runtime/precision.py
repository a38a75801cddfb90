"""The stages' compute precision under its old import path: the code lives in `rpihmif.precision` (the notebook API
resolves `precision="auto"` exactly as the stages do)."""
from rpihmif.precision import CPU_BF16_FLAGS, PRECISIONS, Precision, cpu_bf16_support, resolve_precision  # noqa: F401

__all__ = ["PRECISIONS", "Precision", "cpu_bf16_support", "resolve_precision"]

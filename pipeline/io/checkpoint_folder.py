"""Checkpoint folders as the stages see them: validated config, weights header and tokenizer, without loading weights.

A folder that is not a checkpoint, is incomplete, damaged, absurd, or was trained on another label set is a
UsageError (exit 2) naming the file and what to do; `load_error` does the same for a failure while loading.
"""
from __future__ import annotations

import json
import math
import struct
from pathlib import Path
from typing import Any

from rpihmif.errors import PipelineError, UsageError
from rpihmif.labels import LABELS

__all__ = ["checkpoint_info", "load_error", "check_weights_header"]

WEIGHTS = "model.safetensors"
_DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1,
                "F8_E4M3": 1, "F8_E5M2": 1, "U16": 2, "U32": 4, "U64": 8}
_MAX_HEADER = 100 << 20  # safetensors' own limit on the JSON header
_INT_LIMIT = 1 << 31  # no size in a config needs more; larger ones overflow or exhaust memory
# sizes that shape no weight (so the weights header cannot check them) but drive loops or windows
_BOUNDS = {"iterations": 64, "num_hidden_layers": 1024, "max_seq": 1 << 16, "max_crops": 64, "window_stride": 1 << 16,
           "max_position_embeddings": 1 << 20, "num_attention_heads": 4096, "heads": 4096, "num_capsules": 4096}
_TOKENIZER_FILES = ("tokenizer_config.json", "tokenizer.json")  # the stages load the fast tokenizer


def _refuse(folder: Path, what: str) -> UsageError:
    return UsageError(f"{folder}: {what}; retrain it with `python cli.py train` or copy the checkpoint folder again")


def check_weights_header(path: Path) -> dict[str, tuple[str, list[int]]]:
    """`{tensor name: (dtype, shape)}` of a safetensors file whose header and data size agree; UsageError otherwise.

    Reads only the header: a truncated or padded file, or absurd shapes, are refused before anything is allocated.
    """
    try:
        size = path.stat().st_size
        with open(path, "rb") as fh:
            (n,) = struct.unpack("<Q", fh.read(8)) if size >= 8 else (-1,)
            if not 0 < n <= min(_MAX_HEADER, size - 8):
                raise ValueError(f"header length {n} does not fit a file of {size} bytes")
            header = json.loads(fh.read(n))
        if not isinstance(header, dict):
            raise ValueError("header is not a JSON object")
        header.pop("__metadata__", None)
        tensors, end = {}, 0
        for name, info in header.items():
            dtype, shape, (start, stop) = info["dtype"], info["shape"], info["data_offsets"]
            if not all(isinstance(d, int) and 0 <= d < _INT_LIMIT for d in shape):
                raise ValueError(f"tensor {name}: bad shape {shape}")
            if stop - start != math.prod(shape) * _DTYPE_BYTES[dtype] or start < 0:
                raise ValueError(f"tensor {name}: {stop - start} bytes for shape {shape} of {dtype}")
            tensors[name], end = (dtype, list(shape)), max(end, stop)
        if 8 + n + end != size:
            raise ValueError(f"the header describes {8 + n + end} bytes, the file has {size} (truncated or altered)")
    except (OSError, ValueError, KeyError, TypeError, struct.error) as exc:
        raise UsageError(f"{path}: damaged weights file ({str(exc)[:200]}); retrain, or copy the checkpoint folder "
                         "again") from exc
    return tensors


def _check_sizes(data: Any, path: Path, where: str = "") -> None:
    """Every integer is below 2**31 and every size that drives a loop is within its bound."""
    if isinstance(data, dict):
        for key, value in data.items():
            _check_sizes(value, path, f"{where}.{key}" if where else str(key))
    elif isinstance(data, list):
        for i, value in enumerate(data[:10_000]):
            _check_sizes(value, path, f"{where}[{i}]")
    elif isinstance(data, int) and not isinstance(data, bool):
        key = where.rsplit(".", 1)[-1]
        limit = _BOUNDS.get(key, _INT_LIMIT)
        if abs(data) >= _INT_LIMIT or (key in _BOUNDS and not 0 <= data <= limit):
            raise UsageError(f"{path}: {where} = {data} is out of range (at most {limit}); the config was altered: "
                             "retrain, or copy the checkpoint folder again")


def _check_shapes(folder: Path, tensors: dict[str, tuple[str, list[int]]]) -> None:
    """Build the model on torch's meta device (no memory) and compare its parameter shapes with the weights header."""
    import torch

    from rpihmif.checkpoint import read_checkpoint_config
    from rpihmif.config import RPIHMIFConfig
    from rpihmif.model import RPIHMIF

    config, encoder = read_checkpoint_config(folder)
    try:
        with torch.device("meta"):
            model = RPIHMIF(RPIHMIFConfig.from_parts(config, encoder))
    except PipelineError:
        raise
    except Exception as exc:  # noqa: BLE001 -- any failure to build is a bad config
        raise UsageError(f"{folder / 'config.json'}: cannot build the model it describes ({str(exc)[:200]}); "
                         "retrain, or copy the checkpoint folder again") from exc
    expected = {k: list(v.shape) for k, v in model.state_dict().items()}
    for name, (_, shape) in tensors.items():
        if name not in expected or expected[name] != shape:
            raise UsageError(f"{folder / 'config.json'} does not match {folder / WEIGHTS}: tensor {name} is {shape} in "
                             f"the weights, {expected.get(name, 'absent')} by the config; the folder was altered or "
                             "mixed: retrain, or copy the checkpoint folder again")


def checkpoint_info(folder: str | Path) -> tuple[str, Any]:
    """`(model id, ModelConfig)` of a checkpoint folder whose labels are this pipeline's BIO label set.

    Checks, before any weight is loaded: config.json readable with sane types and sizes, model.safetensors whole and
    shaped as the config says, tokenizer files present.
    """
    from rpihmif.checkpoint import model_id, read_checkpoint_config

    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise UsageError(f"{folder}: not a checkpoint folder (no config.json); pass the best/ folder of a train run")
    try:
        _check_sizes(json.loads((folder / "config.json").read_text(encoding="utf-8")), folder / "config.json")
        config, _ = read_checkpoint_config(folder)
        mid = model_id(folder)
    except RecursionError as exc:
        raise _refuse(folder, "config.json is nested too deeply") from exc
    except (OSError, ValueError, TypeError, KeyError, AttributeError) as exc:  # ModelConfig.from_dict checks types
        raise UsageError(f"{folder / 'config.json'}: unusable checkpoint ({str(exc)[:300]}); the config was altered: "
                         "retrain, or copy the checkpoint folder again") from exc
    if list(config.labels) != list(LABELS):
        raise UsageError(f"{folder}: checkpoint labels {config.labels} are not this pipeline's label set "
                         f"{list(LABELS)}; retrain it with `python cli.py train`")
    if not (folder / WEIGHTS).is_file():
        raise _refuse(folder, f"no {WEIGHTS} (incomplete checkpoint folder)")
    _check_shapes(folder, check_weights_header(folder / WEIGHTS))
    missing = [n for n in _TOKENIZER_FILES if not (folder / n).is_file()]
    if missing:
        raise _refuse(folder, f"tokenizer files missing ({', '.join(missing)})")
    return mid, config


def load_error(folder: str | Path, exc: BaseException) -> UsageError:
    """The one-line UsageError for a checkpoint that passed `checkpoint_info` but failed to load."""
    return UsageError(f"{folder}: cannot load the checkpoint ({type(exc).__name__}: {str(exc)[:300]}); retrain, or "
                      "copy the checkpoint folder again")

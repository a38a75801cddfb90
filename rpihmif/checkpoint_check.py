"""Checks of a checkpoint folder before anything is built from it: config.json sizes and types, the safetensors header
against the model the config describes (on the meta device), the tokenizer files and a probe of the tokenizer.

Every failure is a ModelError naming the file, its message bounded however large the file's content is.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import struct
from pathlib import Path
from typing import Any, Iterator

from rpihmif.errors import ModelError, bounded

__all__ = ["CHECK_FAILURES", "check_weights_header", "check_config_file", "check_shapes", "check_tokenizer",
           "refuse"]

WEIGHTS, CONFIG = "model.safetensors", "config.json"
TOKENIZER_FILES = ("tokenizer_config.json", "tokenizer.json")  # the stages load the fast tokenizer
# what a hostile file makes the parsers and builders raise (Exception covers the rest; PanicException is a BaseException)
CHECK_FAILURES = (OSError, ValueError, TypeError, KeyError, AttributeError, IndexError, RecursionError, OverflowError)
MAX_LABELS = 1024  # BIO tags of a checkpoint; the pipeline's own set has 9
_DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1,
                "F8_E4M3": 1, "F8_E5M2": 1, "U16": 2, "U32": 4, "U64": 8}
_MAX_HEADER = 100 << 20  # safetensors' own limit on the JSON header
_MAX_CONFIG = 16 << 20  # bytes of config.json / tokenizer_config.json read at most
_INT_LIMIT = 1 << 31  # no size in a config needs more; larger ones overflow or exhaust memory
# sizes that shape no weight (so the weights header cannot check them) but drive loops or windows
_BOUNDS = {"iterations": 64, "num_hidden_layers": 1024, "max_seq": 1 << 16, "max_crops": 64, "window_stride": 1 << 16,
           "max_position_embeddings": 1 << 20, "num_attention_heads": 4096, "heads": 4096, "num_capsules": 4096}
# texts the tokenizer must get through (runs of one character class are where a backtracking regex explodes)
_PROBES = ("RT @user: John Smith visits New York today #NBA http://t.co/x 😂", "a" * 300 + "!", "1" * 300 + "x",
           " ".join(["word"] * 200) + " !", "!" * 300 + "a", "aA1_" * 80 + "\u00e9", " " * 300 + "a")


def refuse(path: Path, what: str) -> ModelError:
    """The exit-2 error for a checkpoint file that cannot be used."""
    return ModelError(f"{bounded(str(path), 400)}: {what}; retrain, or copy the checkpoint folder again")


def read_json(path: Path) -> Any:
    """A JSON file of the checkpoint (size-bounded), ModelError naming it when unreadable."""
    try:
        if path.stat().st_size > _MAX_CONFIG:
            raise ValueError(f"{path.stat().st_size} bytes; a checkpoint config is well under {_MAX_CONFIG >> 20} MiB")
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise refuse(path, f"unreadable JSON ({type(exc).__name__}: {bounded(exc)})") from exc


def check_config_file(folder: Path) -> dict:
    """config.json as a dict whose integers are sane and whose label list is bounded."""
    path = folder / CONFIG
    if not path.is_file():
        raise ModelError(f"{bounded(str(folder), 400)}: not a checkpoint folder (no {CONFIG}); pass the best/ folder "
                         "of a train run, the run folder, or a Hugging Face Hub id")
    data = read_json(path)
    if not isinstance(data, dict):
        raise refuse(path, f"expected a JSON object, got {type(data).__name__}")
    try:
        _check_sizes(data, path)
    except RecursionError as exc:
        raise refuse(path, "nested too deeply") from exc
    labels = (data.get("rpihmif") or data.get("model") or {}).get("labels") if isinstance(
        data.get("rpihmif") or data.get("model") or {}, dict) else None
    if isinstance(labels, list) and len(labels) > MAX_LABELS:
        raise refuse(path, f"{len(labels)} labels (at most {MAX_LABELS})")
    return data


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
            raise refuse(path, f"{bounded(where)} = {bounded(data, 40)} is out of range (at most {limit}); the config "
                               "was altered")


def check_weights_header(path: Path) -> dict[str, tuple[str, list[int]]]:
    """`{tensor name: (dtype, shape)}` of a safetensors file whose header and data size agree; ModelError otherwise.

    Reads only the header: a truncated or padded file, or absurd shapes, are refused before anything is allocated.
    """
    if not path.is_file():
        raise refuse(path, "missing model weights (incomplete checkpoint folder)")
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
                raise ValueError(f"tensor {bounded(name)}: bad shape {bounded(shape)}")
            if stop - start != math.prod(shape) * _DTYPE_BYTES[dtype] or start < 0:
                raise ValueError(f"tensor {bounded(name)}: {stop - start} bytes for shape {bounded(shape)} of {dtype}")
            tensors[name], end = (dtype, list(shape)), max(end, stop)
        if 8 + n + end != size:
            raise ValueError(f"the header describes {8 + n + end} bytes, the file has {size} (truncated or altered)")
    except (OSError, ValueError, KeyError, TypeError, struct.error, RecursionError) as exc:
        raise refuse(path, f"damaged weights file ({bounded(exc)})") from exc
    return tensors


def check_shapes(folder: Path, model: Any, tensors: dict[str, tuple[str, list[int]]]) -> None:
    """The model built from config.json (on the meta device) has exactly the weights header's tensors and shapes."""
    expected = {k: list(v.shape) for k, v in model.state_dict().items()}
    for name, (_, shape) in tensors.items():
        if name not in expected or expected[name] != shape:
            raise ModelError(f"{folder / CONFIG} does not match {folder / WEIGHTS}: tensor {bounded(name)} is "
                             f"{bounded(shape)} in the weights, {expected.get(name, 'absent')} by the config; the "
                             "folder was altered or mixed: retrain, or copy the checkpoint folder again")
    missing = sorted(set(expected) - set(tensors))
    if missing:
        raise refuse(folder / WEIGHTS, f"{len(missing)} weights the config needs are absent ({bounded(missing[0])})")


@contextlib.contextmanager
def _quiet_stderr() -> Iterator[None]:
    """Silence file descriptor 2 (a Rust panic prints its own backtrace there before Python sees the exception)."""
    try:
        saved = os.dup(2)
    except OSError:  # no stderr at all
        yield
        return
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def check_tokenizer(folder: Path, tokenizer: Any) -> None:
    """A fast tokenizer that gets through the probe texts (a pre-tokenizer regex that backtracks, a panic: refused)."""
    path = folder / "tokenizer.json"
    if not getattr(tokenizer, "is_fast", False):
        raise refuse(path, "no fast tokenizer (tokenizer.json); the checkpoint folder is incomplete")
    try:
        with _quiet_stderr():
            for text in _PROBES:
                tokenizer(text, add_special_tokens=True)
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as exc:  # noqa: BLE001 -- tokenizers' PanicException is a BaseException
        raise refuse(path, f"the tokenizer fails on ordinary text ({type(exc).__name__}: {bounded(exc)}); a "
                           "pre-tokenizer or normalizer regex was altered") from exc


def build_failure(path: Path, exc: BaseException) -> ModelError:
    """The exit-2 error for a config that passes the schema but cannot build its model."""
    if isinstance(exc, ModelError):
        return exc  # type: ignore[return-value]
    return refuse(path, f"cannot build the model it describes ({type(exc).__name__}: {bounded(exc)})")

"""extract-features for a checkpoint: its config.json's vision record as `--set vision.*` overrides (`--model`), the
check that the encoder so configured is the one the model was trained on, and the runnable hint that says so."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from exit_codes import UsageError
from pipeline.runtime.commands import command_line
from rpihmif.checkpoint import read_checkpoint_config, resolve_checkpoint
from rpihmif.checkpoint_config import METRICS, vision_record_of
from rpihmif.errors import ModelError, bounded

__all__ = ["vision_overrides", "check_encoder", "extract_hint"]

_SETTINGS = ("random_vit_layers", "random_vit_hidden", "seed", "image_size", "aux_size", "rcnn_size", "max_crops",
             "dtype")


def _record(folder: Path) -> dict[str, Any]:
    config, _ = read_checkpoint_config(folder)
    if config.text_only or not config.visual.fingerprint:
        raise UsageError(f"{folder}: a text-only model; it reads no image features, so there is nothing to extract")
    record = vision_record_of(folder, config)
    if not record:
        raise UsageError(f"{folder / 'config.json'}: the checkpoint does not record its vision encoder (nor does its "
                         f"{METRICS}); give the vision section with --set vision.*=... instead of --model")
    return record


def local_vit_folder(folder: Path, record: dict[str, Any]) -> str:
    """Where a folder encoder is on this machine: the path train was given (metrics.json `config.vision.vit_name`)
    when it still holds a folder of that name; "" when unknown."""
    import json

    try:
        path = json.loads((folder / METRICS).read_text(encoding="utf-8"))["config"]["vision"]["vit_name"]
    except (OSError, ValueError, KeyError, TypeError):
        return ""
    if isinstance(path, str) and Path(path).is_dir() and Path(path).name == record.get("vit_name"):
        return str(Path(path).resolve())
    return ""


def vision_overrides(model: str | Path) -> list[str]:
    """`--set` overrides that make extract's vision section the checkpoint's (hub id as recorded; a folder encoder
    where train found it, when it is still there; the random-init encoder's seed and sizes)."""
    folder = resolve_checkpoint(model)
    record = _record(folder)
    sets = [f"vision.{k}={record[k]}" for k in _SETTINGS if k in record]
    if record.get("source") == "hub":
        sets.append(f"vision.vit_name={record['vit_name']}")
    elif record.get("source") == "random-init":
        sets.append("vision.vit_name=")
    elif local_vit_folder(folder, record):
        sets.append(f"vision.vit_name={local_vit_folder(folder, record)}")
    return sets


def check_encoder(cfg: Any, model: str | Path) -> None:
    """UsageError unless extract's configured encoder has the checkpoint's fingerprint (a folder encoder must be given
    with --set vision.vit_name=FOLDER when train's path is gone)."""
    from cache import resolve_fingerprint
    from rpihmif.vision_encoder import VisionSettings

    folder = resolve_checkpoint(model)
    config, _ = read_checkpoint_config(folder)
    record = _record(folder)
    if record.get("source") == "folder" and not cfg.vision.vit_name:
        raise UsageError(f"{folder}: the model's vision encoder is a local folder named "
                         f"{bounded(record.get('vit_name'))!r} that is not where train found it; add --set "
                         "vision.vit_name=FOLDER (its copy on this machine)")
    found = resolve_fingerprint(cfg.vision, Path(cfg.cache_dir))["id"]
    if found != config.visual.fingerprint:
        raise UsageError(f"{folder}: the vision section given (vit_name {bounded(cfg.vision.vit_name or 'random-init')!r})"
                         f" is encoder {found}, the model was trained on {config.visual.fingerprint}; drop the "
                         "--set vision.* overrides that change it")


def extract_hint(model: str | Path, dumps: list[str], cache_dir: str | Path, fields: Any = None,
                 dataset_dir: str | Path | None = None) -> str:
    """The extract-features command that fills `cache_dir` with the model's features of `dumps`' images, or of the
    benchmark dataset folder `dataset_dir` (absolute paths; the dump field names and image root of `fields` when they
    are not extract's defaults)."""
    from pipeline.config import load_config

    folder = resolve_checkpoint(model)
    try:
        record = _record(folder)
    except (UsageError, ModelError):  # a checkpoint from before the record: the user must give the vision section
        record = {}
    args = ["--model", str(Path(folder).resolve())] if record else []
    for dump in dumps:
        args += ["--dump", str(Path(dump).resolve())]
    args += ["--set", f"cache_dir={Path(cache_dir).resolve()}"]
    if dataset_dir is not None:
        data = Path(dataset_dir).resolve()
        args += ["--set", f"data_dir={data.parent}", "--set", f"dataset={data.name}"]
    else:
        args += ["--set", "dataset="]
    if record.get("source") == "folder" and not local_vit_folder(folder, record):
        args += ["--set", f"vision.vit_name=FOLDER_OF_{record.get('vit_name')}"]
    defaults = load_config("extract")["dump"]
    for name, default in defaults.items():
        value = getattr(fields, name, None) if fields is not None else None
        if name != "files" and value is not None and value != default:
            args += ["--set", f"dump.{name}={Path(value).resolve() if name == 'image_root' else value}"]
    line = command_line("extract-features", *args)
    return line if record else f"{line} --set vision.vit_name=... (the encoder and sizes the model was trained with: " \
                               "its checkpoint does not record them)"

"""Typed stage configs: one dataclass per stage built from `conf/<stage>.yaml` + `--set`, every range check in CHECKS.

The stages read the yaml's values (a key the yaml lacks is an error); the sections the library defines (`text`, `vision`,
`him`, `iffe`; `dump`) are its own classes, nested here as in the model, so each knob has one schema.
"""
from __future__ import annotations

import dataclasses
import re
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Union

from exit_codes import UsageError
from pipeline.config import load_config
from pipeline.io.dumps import DumpFields
from rpihmif.config import HIMConfig, IFFEConfig, TextEncoderConfig, check_value
from rpihmif.vision_encoder import VisionSettings
from rpihmif.visual import SOURCES

__all__ = ["DumpSection", "ExtractConfig", "VisualSources", "VisualDropout",
           "TrainConfig", "EvaluateConfig", "TagConfig", "StageConfig", "STAGES", "COMMANDS", "CHECKS", "stage_config",
           "from_dict"]


class _Stage:
    """Shared helpers of the stage dataclasses."""

    stage: typing.ClassVar[str]

    def to_dict(self) -> dict[str, Any]:
        """The yaml's keys and values (fields the stage derives, such as text.datasets, left out)."""
        return _yaml_dict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Any:
        """Build and check from a complete key -> value dict (a loaded yaml, or `to_dict()` output)."""
        return from_dict(cls.stage, data)


# ---------------------------------------------------------------------------------------------------------------
# the stages; keys, meanings and defaults: conf/<stage>.yaml
# ---------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DumpSection(DumpFields):
    """`dump:` of extract.yaml: the same, and the tweet dumps whose images to encode."""

    files: list[str] = dataclasses.field(default_factory=list)


@dataclass
class ExtractConfig(_Stage):
    """conf/extract.yaml: `python cli.py extract-features`."""

    stage: typing.ClassVar[str] = "extract"
    data_dir: str
    dataset: str
    splits: list[str]
    cache_dir: str
    batch_size: int
    shard_size: int
    workers: int
    ray_address: str
    device: str
    offline: bool
    precision: str
    max_image_pixels: int
    verify_cache: str
    vision: VisionSettings
    dump: DumpSection


@dataclass
class VisualSources:
    """`visual:` of train.yaml (the rest of the model's VisualConfig comes from the feature cache)."""

    sources: list[str]


@dataclass
class VisualDropout:
    """`visual_dropout:` of train.yaml: per-tweet probabilities of hiding visual inputs in training (never at eval)."""

    source: float
    image: float


@dataclass
class TrainConfig(_Stage):
    """conf/train.yaml: `python cli.py train`; `text`, `vision`, `him` and `iffe` are the model's own config classes."""

    stage: typing.ClassVar[str] = "train"
    data_dir: str
    dataset: str
    train_also: str
    cache_dir: str
    features: str
    text_only: bool
    train_batch_size: int
    eval_batch_size: int
    num_epochs: int
    learning_rate: float
    fusion_learning_rate: float
    crf_learning_rate: float
    weight_decay: float
    warmup_ratio: float
    max_grad_norm: float
    constrain_bio: bool
    ema_decay: float
    adversarial_eps: float
    refit: bool
    seed: int
    device: str
    offline: bool
    precision: str
    save_path: str
    load_path: str
    log_dir: str
    log_every_s: float
    lenient: bool
    fix_bio: bool
    text: TextEncoderConfig
    vision: VisionSettings
    him: HIMConfig
    iffe: IFFEConfig
    visual: VisualSources
    visual_dropout: VisualDropout


@dataclass
class EvaluateConfig(_Stage):
    """conf/evaluate.yaml: `python cli.py evaluate CHECKPOINT SPLIT_FILE`."""

    stage: typing.ClassVar[str] = "evaluate"
    cache_dir: str
    dataset: str
    allow_missing_images: bool
    batch_size: int
    device: str
    precision: str
    lenient: bool
    fix_bio: bool
    text_only: bool
    visual: VisualSources


@dataclass
class TagConfig(_Stage):
    """conf/tag.yaml: `python cli.py tag-corpus`."""

    stage: typing.ClassVar[str] = "tag"
    load_path: str
    out: str
    cache_dir: str
    require_images: bool
    allow_missing_images: bool
    force: bool
    chunk_records: int
    max_record_bytes: int
    batch_size: int
    bucket_size: int
    row_group_bytes: int
    progress_every_s: float
    workers: int
    ray_address: str
    cpus_per_worker: float
    threads: int
    device: str
    precision: str
    seed: int
    partition_by: str
    max_reject_rate: float
    text_only: bool
    dump: DumpFields
    visual: VisualSources


StageConfig = Union[ExtractConfig, TrainConfig, EvaluateConfig, TagConfig]
STAGES: dict[str, type] = {"extract": ExtractConfig, "train": TrainConfig, "evaluate": EvaluateConfig, "tag": TagConfig}
COMMANDS: dict[str, str] = {"extract-features": "extract", "tag-corpus": "tag"}  # command name -> its stage (yaml)


# ---------------------------------------------------------------------------------------------------------------
# every range / enum check, by stage and dotted key
# ---------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Check:
    """One rule on a value: `ok(value)` and the allowed range in words (`rule`)."""

    ok: Callable[[Any], bool]
    rule: str


def at_least(n: int | float) -> Check:
    return Check(lambda v: v >= n, f">= {n}")


def positive() -> Check:
    return Check(lambda v: v > 0, "> 0")


def between(lo: float, hi: float, hi_open: bool = False) -> Check:
    return Check(lambda v: lo <= v < hi if hi_open else lo <= v <= hi, f"in [{lo}, {hi}{')' if hi_open else ']'}")


def one_of(*choices: str) -> Check:
    return Check(lambda v: v in choices, f"one of {', '.join(choices)}")


def subset_of(*choices: str) -> Check:
    return Check(lambda v: bool(v) and set(v) <= set(choices), f"a non-empty list of {', '.join(choices)}")


def subset_or_empty(*choices: str) -> Check:
    return Check(lambda v: set(v) <= set(choices), f"a list of {', '.join(choices)} ([] = all the model has)")


def matches(pattern: str, words: str) -> Check:
    return Check(lambda v: re.fullmatch(pattern, v) is not None, words)


SEED = between(0, 2**32 - 1)  # NumPy's seed range
DEVICE = matches(r"auto|cpu|cuda(:\d+)?", "auto, cpu, cuda or cuda:N")
DTYPE = one_of("float16", "float32")
COUNT = at_least(1)
PRECISION = one_of("auto", "fp32", "bf16")
VISION = {"vision.random_vit_layers": COUNT, "vision.random_vit_hidden": COUNT, "vision.seed": SEED,
          "vision.image_size": COUNT, "vision.aux_size": COUNT, "vision.rcnn_size": COUNT, "vision.max_crops": COUNT,
          "vision.dtype": DTYPE}

CHECKS: dict[str, dict[str, Check]] = {
    "extract": {
        **VISION, "splits": subset_of("train", "valid", "test", "dev", "val"), "batch_size": COUNT,
        "shard_size": COUNT, "workers": at_least(0),
        "device": DEVICE, "precision": PRECISION, "max_image_pixels": COUNT,
        "verify_cache": one_of("changed", "all"),
    },
    "train": {
        **VISION, "features": one_of("cached", "online"),
        "text.max_seq": at_least(10), "text.window_stride": at_least(0), "text.shape_dim": COUNT,
        "text.char_dim": at_least(0), "text.char_emb_dim": COUNT, "text.char_max_bytes": COUNT,
        "text.lstm_dim": at_least(0), "text.dataset_dim": at_least(0),
        "train_batch_size": COUNT, "eval_batch_size": COUNT, "num_epochs": COUNT,
        "learning_rate": positive(), "fusion_learning_rate": positive(), "crf_learning_rate": positive(),
        "weight_decay": at_least(0), "warmup_ratio": between(0, 1, hi_open=True), "max_grad_norm": positive(),
        "text.dropout": between(0, 1, hi_open=True), "ema_decay": between(0, 1, hi_open=True),
        "adversarial_eps": at_least(0), "seed": SEED, "device": DEVICE, "precision": PRECISION,
        "save_path": matches(r".+", "a folder"), "log_every_s": positive(),
        "him.num_capsules": COUNT, "him.hidden": COUNT, "him.heads": COUNT, "iffe.iterations": at_least(0),
        "visual.sources": subset_of(*SOURCES),
        "visual_dropout.source": between(0, 1, hi_open=True), "visual_dropout.image": between(0, 1, hi_open=True),
    },
    "evaluate": {"batch_size": COUNT, "device": DEVICE, "precision": PRECISION,
                 "visual.sources": subset_or_empty(*SOURCES)},
    "tag": {
        "max_record_bytes": COUNT, "batch_size": COUNT, "bucket_size": COUNT, "row_group_bytes": COUNT,
        "chunk_records": COUNT, "progress_every_s": positive(),
        "workers": at_least(0), "cpus_per_worker": positive(), "threads": at_least(0), "device": DEVICE,
        "precision": PRECISION, "seed": SEED, "partition_by": one_of("tagged_date", "none"),
        "max_reject_rate": between(0.0, 1.0), "visual.sources": subset_or_empty(*SOURCES),
    },
}


def _cross_checks(stage: str, cfg: Any) -> list[str]:
    """Rules between keys, as messages."""
    problems = []
    if stage == "train" and cfg.him.hidden % cfg.him.heads:
        problems.append(f"him.hidden ({cfg.him.hidden}) must be divisible by him.heads ({cfg.him.heads})")
    return problems


# ---------------------------------------------------------------------------------------------------------------
# building
# ---------------------------------------------------------------------------------------------------------------
def stage_config(stage: str, path: str | Path | None = None, overrides: list[str] | None = None,
                 named: dict[str, Any] | None = None) -> Any:
    """The checked, typed config of `stage` (or its command's name): conf/<stage>.yaml, then `path`, named CLI
    options and `--set`."""
    stage = COMMANDS.get(stage, stage)
    if stage not in STAGES:
        raise UsageError(f"unknown stage {stage!r}; use one of {', '.join(STAGES)} (or the command names "
                         f"{', '.join(COMMANDS)})")
    return from_dict(stage, load_config(stage, path, overrides, named))


def from_dict(stage: str, data: dict[str, Any]) -> Any:
    """Build `STAGES[stage]` from a complete dict, check types, then every rule of CHECKS[stage]."""
    cfg = _build(STAGES[stage], data, stage, "")
    problems = []
    for dotted, check in CHECKS[stage].items():
        value = cfg
        for part in dotted.split("."):
            value = getattr(value, part)
        if not check.ok(value):
            problems.append(f"{dotted} must be {check.rule}, got {value!r}")
    problems += _cross_checks(stage, cfg)
    if problems:
        raise UsageError(f"{stage} config: {'; '.join(problems)} (fix conf/{stage}.yaml, --config or --set)")
    return cfg


def _yaml_dict(obj: Any) -> Any:
    if not dataclasses.is_dataclass(obj):
        return list(obj) if isinstance(obj, list) else obj
    return {f.name: _yaml_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj) if not f.metadata.get("derived")}


def _build(cls: type, data: Any, stage: str, prefix: str) -> Any:
    if not isinstance(data, dict):
        raise UsageError(f"{stage} config: {prefix.rstrip('.') or 'the top level'} must be a section of keys")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls) if not f.metadata.get("derived")]  # derived: set by the stage
    unknown, missing = sorted(set(data) - set(names)), [n for n in names if n not in data]
    if unknown:
        raise UsageError(f"{stage} config: unknown key(s) {', '.join(prefix + k for k in unknown)}; "
                         f"known: {', '.join(names)}")
    if missing:
        raise UsageError(f"{stage} config: missing key(s) {', '.join(prefix + k for k in missing)}; every key "
                         f"needs a line in conf/{stage}.yaml")
    kwargs = {}
    for name in names:
        hint, value = hints[name], data[name]
        if dataclasses.is_dataclass(hint):
            kwargs[name] = _build(hint, value, stage, f"{prefix}{name}.")
        else:
            kwargs[name] = _typed(f"{prefix}{name}", value, hint, stage)
    return cls(**kwargs)


def _typed(key: str, value: Any, hint: Any, stage: str) -> Any:
    """`value` as the field's type (rpihmif's one type rule) or a UsageError naming the key."""
    try:
        return check_value(key, value, hint)
    except ValueError as exc:
        raise UsageError(f"{stage} config: {exc}") from None

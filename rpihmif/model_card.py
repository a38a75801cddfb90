"""The model card of a checkpoint: README.md with the Hugging Face YAML header (datasets, metrics, base models) and
sections a user reads before using it (what it is, the encoders, the training config, intended use and limits)."""
from __future__ import annotations

import json
from pathlib import PurePath
from typing import Any

from rpihmif.config import ModelConfig

__all__ = ["model_card"]

_DEFAULT_BERT = "sentence-transformers/all-MiniLM-L6-v2"  # what bert_name "" loads (the packaged copy)


def _yaml_str(value: Any) -> str:
    return json.dumps(str(value), ensure_ascii=False)  # a JSON string is a valid YAML scalar


def _vision_line(record: dict, text_only: bool) -> tuple[str, bool]:
    """(one readable line about the vision encoder, whether it is the random-init one)."""
    if text_only:
        return "none (text-only model)", False
    source = record.get("source")
    if source == "random-init":
        return (f"RANDOM-INIT CLIP ViT (seed {record.get('seed')}, {record.get('random_vit_layers')} layers, hidden "
                f"{record.get('random_vit_hidden')}): its features carry no pretrained semantics", True)
    if source == "hub":
        return f"CLIPVisionModel `{record.get('vit_name')}` (Hugging Face Hub)", False
    if source == "folder":
        return (f"CLIPVisionModel from a local folder named `{record.get('vit_name')}` (weights sha256 "
                f"{str(record.get('weights_sha256', ''))[:16]}...)"), False
    return "not recorded (a checkpoint written before config.json recorded it)", False


def model_card(config: ModelConfig, metrics: dict[str, Any]) -> str:
    """README.md text for a checkpoint trained with `metrics` (train's metrics.json: best_dev, config, dataset)."""
    train = metrics.get("config") or {}
    dev = metrics.get("best_dev") or {}
    datasets = sorted(set([metrics.get("dataset") or train.get("dataset") or ""] +
                          list(metrics.get("train_datasets") or [])) - {""})
    bert = config.text.bert_name or _DEFAULT_BERT
    if bert.startswith(("/", "~", ".")):  # a local folder: its name, never a machine path
        bert = PurePath(bert).name
    vision, random_init = _vision_line(config.visual.encoder, config.text_only)
    per_type = dev.get("per_type") or {}
    lines = ["---", "library_name: rpihmif", "pipeline_tag: token-classification", "tags:", "- ner",
             "- multimodal-ner", "- twitter", *(["- random-init-vision-encoder"] if random_init else []),
             f"base_model: {_yaml_str(bert)}", "datasets:", *([f"- {_yaml_str(d)}" for d in datasets] or ["- unknown"]),
             "metrics:", "- f1", "model-index:", "- name: rpihmif", "  results:", "  - task:",
             "      type: token-classification", "    dataset:", f"      name: {_yaml_str((datasets or ['unknown'])[0])}",
             f"      type: {_yaml_str((datasets or ['unknown'])[0])}", "      split: valid", "    metrics:",
             "    - type: f1", "      name: dev entity F1 (seqeval micro)", f"      value: {float(dev.get('f1', 0.0))}"]
    for etype, m in sorted(per_type.items()):
        lines += ["    - type: f1", f"      name: dev F1 {etype}", f"      value: {float(m.get('f1', 0.0))}"]
    lines += ["---", "", "# RPI-HMIF multimodal NER tagger", "",
              "Named-entity recognition on tweets (PER, LOC, ORG, MISC) from the text and, where the model uses "
              "them, the attached image and its crops: text encoder + HIM (task question) + IFFE (routing) + CRF.", "",
              "## Encoders", "", f"- text: `{bert}`",
              f"- vision: {vision}", ""]
    if random_init:
        lines += ["**Warning**: this model was trained on features of a random-init vision encoder. Its image "
                  "path is a test configuration, not a pretrained CLIP: do not read its routing as evidence.", ""]
    lines += ["## Dev scores (entity level, seqeval micro, 0-100)", "",
              f"Best epoch {metrics.get('best_epoch')}: P {dev.get('precision', 0)} R {dev.get('recall', 0)} "
              f"F1 {dev.get('f1', 0)}", "", "| type | P | R | F1 | support |", "|---|---|---|---|---|"]
    lines += [f"| {t} | {m.get('precision')} | {m.get('recall')} | {m.get('f1')} | {m.get('support')} |"
              for t, m in sorted(per_type.items())]
    lines += ["", "## Use", "", "```python", "import rpihmif", "tagger = rpihmif.load(\"PATH/TO/THIS/FOLDER\")",
              "tagger(\"RT @user: Donald Trump visits London\")", "```", "",
              "Bulk tagging: the `tag-corpus` command with `--model` set to this folder.", "",
              "## Intended use and limits", "",
              "- English tweets like those of the training data; other domains and languages are untested.",
              "- Images are optional; without one the model runs its text path. Features must come from the "
              "vision encoder above with the sizes below (tag-corpus checks the feature cache's fingerprint).",
              "- Scores are CRF marginals averaged over an entity's words, not calibrated probabilities.",
              "- Entity types follow the Twitter-2015/2017 annotation (OTHER read as MISC).", "",
              "## Training config", "", "```json", json.dumps(train, indent=1, sort_keys=True, default=str), "```",
              "", "## Model config", "", "```json", json.dumps(config.to_dict(), indent=1, sort_keys=True), "```", ""]
    return "\n".join(lines)

"""Checkpoints the Hugging Face tools open: model_type, AutoConfig/AutoModel round trip, no machine path, old format."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_model
from transformers import AutoConfig, AutoModel

import rpihmif
from rpihmif.alignment import WindowTokenizer
from rpihmif.checkpoint import FORMAT, load_checkpoint, save_checkpoint
from rpihmif.errors import ModelError
from rpihmif.model import RPIHMIF, build_model

WORDS = [["john", "smith", "in", "london"], ["rt", "@obama", "today"]]


@pytest.fixture
def model_and_folder(tiny_model_config, tmp_path):
    torch.manual_seed(0)
    model, tokenizer = build_model(tiny_model_config)
    return model.eval(), tokenizer, save_checkpoint(tmp_path / "ckpt", model.eval(), tokenizer)


def _emissions(model, tokenizer, config):
    enc = WindowTokenizer.for_model(tokenizer, config)
    with torch.no_grad():
        return model(enc.collate([enc.encode_train(w)[0] for w in WORDS])).emissions


def test_auto_classes_round_trip(model_and_folder):
    model, tokenizer, folder = model_and_folder
    data = json.loads((folder / "config.json").read_text())
    assert data["model_type"] == "rpihmif" and data["encoder"]["model_type"] == "bert"
    assert "_name_or_path" not in data and "_name_or_path" not in data["encoder"]
    assert data["rpihmif"]["text"]["bert_name"] == model.model_config.text.bert_name.rstrip("/").rsplit("/", 1)[-1]
    assert "/" not in json.dumps({k: v for k, v in data.items() if k != "rpihmif"}).replace("</", "")  # no paths
    config = AutoConfig.from_pretrained(str(folder))
    assert isinstance(config, rpihmif.RPIHMIFConfig) and config.id2label[0] == "O"
    auto = AutoModel.from_pretrained(str(folder))
    assert type(auto) is RPIHMIF
    own = RPIHMIF.from_pretrained(folder)
    expected = _emissions(model, tokenizer, model.model_config)
    assert torch.equal(_emissions(auto, tokenizer, auto.model_config), expected)
    assert torch.equal(_emissions(own, tokenizer, own.model_config), expected)
    again = folder.parent / "again"
    auto.save_pretrained(str(again))
    assert json.loads((again / "config.json").read_text())["rpihmif"] == data["rpihmif"]
    assert str(folder.parent.parent) not in (folder / "config.json").read_text()  # no temp path anywhere


def test_old_format_still_loads(model_and_folder, tmp_path):
    model, tokenizer, _ = model_and_folder
    old = tmp_path / "old"
    old.mkdir()
    save_model(model, str(old / "model.safetensors"), metadata={"format": FORMAT})
    encoder = model.encoder.config.to_dict()
    (old / "config.json").write_text(json.dumps({"format": FORMAT, "model": model.model_config.to_dict(),
                                                 "encoder": encoder}))
    tokenizer.save_pretrained(str(old))
    loaded, tok, config = load_checkpoint(old)
    assert config == model.model_config  # the old format stored bert_name as given
    assert torch.equal(_emissions(loaded, tok, config), _emissions(model, tokenizer, model.model_config))


@pytest.mark.parametrize("damage, match", [
    (lambda f: (f / "config.json").write_text("{not json"), "config.json: unreadable"),
    (lambda f: (f / "config.json").write_text(json.dumps({"model_type": "bert"})), "not an RPI-HMIF"),
    (lambda f: _edit(f, lambda d: d["rpihmif"]["him"].update(hidden="big")), "him.hidden must be int"),
    (lambda f: _edit(f, lambda d: d["rpihmif"]["him"].update(hidden=32)), "config.json does not match .*model.safetensors"),
    (lambda f: (f / "model.safetensors").write_bytes((f / "model.safetensors").read_bytes()[:1000]),
     "model.safetensors: damaged weights file"),
    (lambda f: (f / "model.safetensors").unlink(), "missing model weights"),
    (lambda f: [p.unlink() for p in f.glob("tokenizer*")], "tokenizer"),
])
def test_damaged_checkpoint_is_usage_error(model_and_folder, damage, match):
    _, _, folder = model_and_folder
    damage(folder)
    with pytest.raises(ModelError, match=match):
        load_checkpoint(folder)


def _edit(folder, change):
    data = json.loads((folder / "config.json").read_text())
    change(data)
    (folder / "config.json").write_text(json.dumps(data))

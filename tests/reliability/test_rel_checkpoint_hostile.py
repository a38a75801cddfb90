"""Hostile checkpoints and model folders: code beside the tokenizer, a backtracking or broken tokenizer, absurd or
mistyped config values (nested ones too), a pickle for weights. Each is one bounded exit-2 line naming the file; no
code from the folder runs, nothing is unpickled, nothing asks on stdin."""
from __future__ import annotations

import json
import pickle
import shutil
import subprocess
import sys

import helpers
import pytest

from rpihmif.checkpoint import open_checkpoint
from rpihmif.errors import ModelError

ROOT = helpers.ROOT
MAX_LINE = 1200  # a bounded message: the path twice plus a few hundred characters


@pytest.fixture
def ckpt(tag_world, tmp_path):
    folder = tmp_path / "ckpt"
    shutil.copytree(tag_world["ckpt"], folder)
    return folder


def _edit(path, change):
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def _refused(folder, match):
    with pytest.raises(ModelError, match=match or None) as info:
        open_checkpoint(folder)
    assert len(str(info.value)) < MAX_LINE, len(str(info.value))
    return str(info.value)


def _plant_code(folder):
    """tokenizer_config.json names a class defined in a .py beside it (auto_map); running it writes MARKER."""
    (folder / "evil.py").write_text(f"open({str(folder / 'MARKER')!r}, 'w').write('ran')\n"
                                    "from transformers import BertTokenizerFast\n"
                                    "class EvilTokenizer(BertTokenizerFast):\n    pass\n")
    _edit(folder / "tokenizer_config.json", lambda d: d.update(
        auto_map={"AutoTokenizer": ["evil.EvilTokenizer", "evil.EvilTokenizer"]}, tokenizer_class="EvilTokenizer"))


def _backtracking(folder):
    """A pre-tokenizer regex that backtracks catastrophically; the config loads tokenizer.json as it is."""
    _edit(folder / "tokenizer.json", lambda d: d.update(
        normalizer=None, pre_tokenizer={"type": "Split", "pattern": {"Regex": "(a|a?)+$"}, "behavior": "Isolated",
                                        "invert": False}))
    _edit(folder / "tokenizer_config.json", lambda d: d.update(tokenizer_class="PreTrainedTokenizerFast"))


CASES = [  # (damage, the file the message names, what it says)
    (_plant_code, "tokenizer_config.json", "cannot load the tokenizer"),
    (_backtracking, "tokenizer.json", "fails on ordinary text"),
    (lambda f: (f / "tokenizer.json").write_text("{not json"), "tokenizer", "tokenizer"),
    (lambda f: (f / "tokenizer_config.json").write_bytes(b"\xff\xfe"), "tokenizer_config.json", "tokenizer"),
    (lambda f: _edit(f / "config.json", lambda d: d["rpihmif"].update(labels=[f"B-X{i}" for i in range(10 ** 6)])),
     "config.json", "labels"),
    (lambda f: _edit(f / "config.json", lambda d: d["rpihmif"].update(labels=["O", 5])), "config.json", "labels"),
    (lambda f: _edit(f / "config.json", lambda d: d["encoder"].update(hidden_size="32")), "config.json", "build"),
    (lambda f: _edit(f / "config.json", lambda d: d["encoder"].update(num_hidden_layers="2")), "config.json", ""),
    (lambda f: _edit(f / "config.json", lambda d: d["encoder"].update(num_attention_heads=[2])), "config.json", ""),
    (lambda f: _edit(f / "config.json", lambda d: d["encoder"].update(model_type=7)), "config.json", "model_type"),
    (lambda f: _edit(f / "config.json", lambda d: d["encoder"].update(model_type="no-such-model")), "config.json", ""),
    (lambda f: _edit(f / "config.json", lambda d: d.update(encoder="bert")), "config.json", "encoder section"),
    (lambda f: _edit(f / "config.json", lambda d: d["rpihmif"]["him"].update(hidden="16")), "config.json", "him.hidden"),
    (lambda f: _edit(f / "config.json", lambda d: d["rpihmif"]["visual"].update(sources=["orig", 5])),
     "config.json", "visual.sources"),
    (lambda f: _edit(f / "config.json", lambda d: d["rpihmif"]["visual"].update(sources=["satellite"])),
     "config.json", "visual.sources"),
    (lambda f: _edit(f / "config.json", lambda d: d["rpihmif"]["text"].update(datasets=[1, 2])),
     "config.json", "text.datasets"),
    (lambda f: _edit(f / "config.json", lambda d: d["rpihmif"]["visual"].update(encoder=["x"])),
     "config.json", "visual.encoder"),
    (lambda f: _edit(f / "config.json", lambda d: d["rpihmif"]["iffe"].update(iterations=10 ** 9)),
     "config.json", "iterations"),
    (lambda f: _edit(f / "config.json", lambda d: d["rpihmif"].update(him=[1])), "config.json", "him"),
    (lambda f: (f / "config.json").write_text("[" * 100_000 + "]" * 100_000), "config.json", ""),
    (lambda f: (f / "config.json").write_text(" " * (17 << 20)), "config.json", "MiB"),
    (lambda f: (f / "config.json").write_text(json.dumps({"model_type": "rpihmif", "rpihmif": {}, "encoder": {
        "model_type": "bert", "vocab_size": 2 ** 40}})), "config.json", "out of range"),
]


@pytest.mark.parametrize("damage, name, match", CASES)
def test_hostile_checkpoint_is_one_bounded_usage_error(ckpt, damage, name, match):
    damage(ckpt)
    message = _refused(ckpt, match)
    assert name in message
    assert not (ckpt / "MARKER").exists()


@pytest.mark.parametrize("stdin", ["y\n", None])
def test_code_beside_the_tokenizer_never_runs_from_the_cli(tag_world, tmp_path, stdin):
    """tag-corpus over a checkpoint with auto_map code: stdin answering 'y', or closed; exit 2, the .py never ran."""
    folder = tmp_path / "ckpt"
    shutil.copytree(tag_world["ckpt"], folder)
    _plant_code(folder)
    dump = helpers.write_dump(tmp_path / "d.jsonl", helpers.tweets(3))
    res = subprocess.run([sys.executable, str(ROOT / "cli.py"), "tag-corpus", str(dump), "--model", str(folder),
                          "--out", str(tmp_path / "out"), "--workers", "0", "--set", f"cache_dir={tmp_path / 'c'}"],
                         cwd=ROOT, capture_output=True, text=True, timeout=300,
                         **({"input": stdin} if stdin else {"stdin": subprocess.DEVNULL}))
    assert res.returncode == 2, res.stderr[-2000:]
    assert "Traceback" not in res.stderr and "[y/N]" not in res.stdout + res.stderr
    assert "tokenizer_config.json" in res.stderr
    assert not (folder / "MARKER").exists()


@pytest.mark.slow
def test_backtracking_tokenizer_from_the_cli_is_one_line(tag_world, tmp_path):
    folder = tmp_path / "ckpt"
    shutil.copytree(tag_world["ckpt"], folder)
    _backtracking(folder)
    res = subprocess.run([sys.executable, str(ROOT / "cli.py"), "evaluate", str(folder),
                          str(_split(tmp_path)), "--set", f"cache_dir={tmp_path / 'c'}"],
                         cwd=ROOT, capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)
    assert res.returncode == 2, res.stderr[-2000:]
    errors = [line for line in res.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "tokenizer.json" in errors[0]
    assert "panicked" not in res.stderr and "Traceback" not in res.stderr


def _split(tmp_path):
    data = tmp_path / "data" / "tiny"
    data.mkdir(parents=True)
    helpers.write_split(data / "test.txt", 3, seed=1)
    return data / "test.txt"


class _Bomb:
    """Unpickling it writes a marker file (what a hostile pickle would do)."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_bert_name_folder_with_only_a_pickle(tiny_bert_dir, tmp_path):
    from rpihmif.text_encoder import load_text_encoder

    folder = tmp_path / "bert"
    shutil.copytree(tiny_bert_dir, folder)
    (folder / "model.safetensors").unlink()
    marker = tmp_path / "UNPICKLED"
    (folder / "pytorch_model.bin").write_bytes(pickle.dumps(_Bomb(str(marker))))
    with pytest.raises(ModelError, match="no .safetensors weights"):
        load_text_encoder(str(folder))
    assert not marker.exists()
    only_pickle = tmp_path / "only"
    only_pickle.mkdir()
    (only_pickle / "pytorch_model.bin").write_bytes(pickle.dumps(_Bomb(str(marker))))
    with pytest.raises(ModelError, match="config.json"):
        load_text_encoder(str(only_pickle))
    assert not marker.exists()


def test_vision_record_with_wrong_types_is_usage_error(ckpt):
    from pipeline.extract.from_checkpoint import vision_overrides
    from rpihmif.vision_encoder import settings_from_record, vision_record

    _edit(ckpt / "config.json", lambda d: d["rpihmif"]["visual"].update(encoder={"image_size": "x"}))
    with pytest.raises(ValueError, match="visual.encoder"):
        settings_from_record({"image_size": "x"})
    with pytest.raises(ModelError, match="config.json"):
        vision_overrides(ckpt)
    from rpihmif.vision_encoder import VisionSettings

    good = vision_record(VisionSettings())
    assert settings_from_record(good) == VisionSettings()

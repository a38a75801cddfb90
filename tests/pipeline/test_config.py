"""Stage config loading: yaml defaults, named options and `--set` overrides, with exit-2 errors for bad keys."""
from __future__ import annotations

import pytest

from exit_codes import UsageError
from pipeline.config import load_config, parse_override


def test_defaults_and_dotted_override():
    cfg = load_config("train", overrides=["num_epochs=3", "iffe.iterations=0", "him.question=", "visual.sources=orig,rcnn"])
    assert cfg["num_epochs"] == 3
    assert cfg["iffe"]["iterations"] == 0
    assert cfg["him"]["question"] == ""
    assert cfg["visual"]["sources"] == ["orig", "rcnn"]
    assert cfg["learning_rate"] == pytest.approx(5e-5)


def test_int_accepted_for_float_and_named_options_apply():
    cfg = load_config("train", overrides=["learning_rate=1"], named={"save_path": "x", "seed": None})
    assert cfg["learning_rate"] == 1.0 and isinstance(cfg["learning_rate"], float)
    assert cfg["save_path"] == "x" and cfg["seed"] == 1


@pytest.mark.parametrize("override, message", [
    ("num_epoch=3", "unknown key 'num_epoch'"),
    ("iffe.iteration=1", "unknown key 'iffe.iteration'"),
    ("num_epochs=three", "num_epochs must be int"),
    ("text_only=maybe", "text_only must be bool"),
    ("iffe=3", "is a section"),
    ("novalue", "expected key=value"),
])
def test_bad_overrides_raise_usage_error(override, message):
    with pytest.raises(UsageError, match=message) as info:
        load_config("train", overrides=[override])
    assert info.value.exit_code == 2


def test_user_yaml_subset_and_unknown_key(tmp_path):
    good = tmp_path / "good.yaml"
    good.write_text("num_epochs: 2\niffe:\n  iterations: 1\nlstm_dim: 64\n")  # a flat name reaches its section
    cfg = load_config("train", path=good)
    assert cfg["num_epochs"] == 2 and cfg["iffe"]["iterations"] == 1 and cfg["text"]["max_seq"] == 128
    assert cfg["text"]["lstm_dim"] == 64
    bad = tmp_path / "bad.yaml"
    bad.write_text("nmu_epochs: 2\n")
    with pytest.raises(UsageError, match="bad.yaml: unknown key 'nmu_epochs'"):
        load_config("train", path=bad)


def test_parse_override_reads_yaml_scalars():
    assert parse_override("a=1e-3") == ("a", 1e-3)
    assert parse_override("a=true") == ("a", True)
    assert parse_override("a=hello world") == ("a", "hello world")

"""Typed stage configs: yaml <-> dataclass agreement, the one table of range checks, and `cli.py config`.

Each bad value must be a UsageError (exit 2) naming the key and the allowed range.
"""
from __future__ import annotations

import dataclasses

import pytest
import yaml
from typer.testing import CliRunner

import cli
from exit_codes import UsageError
from pipeline.config import CONF_DIR
from pipeline.config_render import render_yaml, yaml_comments
from pipeline.stage_config import CHECKS, STAGES, EvaluateConfig, TrainConfig, from_dict, stage_config
from pipeline.train.trainer import build_model_config
from rpihmif.config import HIMConfig, IFFEConfig, ModelConfig, TextEncoderConfig, VisualConfig


def _keys(data: dict, prefix: str = "") -> set[str]:
    out = set()
    for key, value in data.items():
        out.add(prefix + key)
        if isinstance(value, dict):
            out |= _keys(value, f"{prefix}{key}.")
    return out


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_yaml_keys_are_the_dataclass_fields_and_each_has_a_comment(stage):
    path = CONF_DIR / f"{stage}.yaml"
    raw = yaml.safe_load(path.read_text())
    cfg = stage_config(stage)
    assert isinstance(cfg, STAGES[stage])
    assert _keys(raw) == _keys(cfg.to_dict())
    comments = yaml_comments(path)
    assert set(comments) == _keys(raw)
    assert all(comments.values()), [k for k, v in comments.items() if not v]


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_every_check_names_a_field(stage):
    keys = _keys(stage_config(stage).to_dict())
    assert set(CHECKS[stage]) <= keys, set(CHECKS[stage]) - keys


def test_model_knobs_settable_from_train_yaml_and_mirror_model_defaults():
    """train.yaml's model sections are the model's own config classes, and every value in them is that class's
    default: a knob's default lives once (text.dataset_dim is the size train uses for a mix of datasets)."""
    from rpihmif.vision_encoder import VisionSettings

    cfg = stage_config("train")
    assert isinstance(cfg.text, TextEncoderConfig) and isinstance(cfg.vision, VisionSettings)
    assert cfg.text == dataclasses.replace(TextEncoderConfig(), dataset_dim=cfg.text.dataset_dim)
    assert cfg.text.dataset_dim > 0 and TextEncoderConfig().dataset_dim == 0
    assert (cfg.him, cfg.iffe, cfg.vision) == (HIMConfig(), IFFEConfig(), VisionSettings())
    assert cfg.visual.sources == VisualConfig().sources and cfg.text_only is ModelConfig().text_only
    assert cfg.constrain_bio is ModelConfig().constrain_bio is True
    model_keys = {f.name for f in dataclasses.fields(ModelConfig)} - {"labels", "visual"}
    assert model_keys <= {f.name for f in dataclasses.fields(TrainConfig)}


def test_dump_sections_are_one_class_whose_defaults_are_the_yamls():
    from pipeline.io.dumps import DumpFields

    tag, extract = stage_config("tag").dump, stage_config("extract").dump
    assert type(tag) is DumpFields and tag == DumpFields()
    assert isinstance(extract, DumpFields) and dataclasses.replace(extract, files=[]) == type(extract)()


def test_flat_names_reach_their_sections():
    """DeepKE's flat names (`bert_name`, `max_seq`, `vit_name`) and tag's `id_field` still set the nested keys."""
    cfg = stage_config("train", overrides=["max_seq=64", "bert_name=x", "vit_name=y", "dropout=0.2", "vit_seed=3"])
    assert (cfg.text.max_seq, cfg.text.bert_name, cfg.vision.vit_name, cfg.text.dropout) == (64, "x", "y", 0.2)
    assert cfg.vision.seed == 3 and cfg.seed == stage_config("train").seed  # a top-level key is never aliased
    tag = stage_config("tag-corpus", overrides=["id_field=tweet_id", "dump.text_field=body"])
    assert (tag.dump.id_field, tag.dump.text_field) == ("tweet_id", "body")
    with pytest.raises(UsageError, match="unknown key 'text.datasets'"):  # derived by train, never set
        stage_config("train", overrides=["text.datasets=a"])


def test_window_stride_and_shape_dim_reach_the_model_config():
    cfg = stage_config("train", overrides=["text.window_stride=5", "shape_dim=8", "dropout=0.3", "him.heads=2",
                                           "iffe.iterations=0", "visual.sources=orig"])
    model = build_model_config(cfg, None)
    assert (model.text.window_stride, model.text.shape_dim, model.text.dropout) == (5, 8, 0.3)
    assert (model.him.heads, model.iffe.iterations, model.visual.sources) == (2, 0, ["orig"])
    model.him.heads = 7  # the model config is a copy: the stage config stays as loaded
    assert cfg.him.heads == 2


@pytest.mark.parametrize("stage, override, words", [
    ("train", "warmup_ratio=1", "warmup_ratio must be in [0, 1), got 1.0"),
    ("train", "num_epochs=0", "num_epochs must be >= 1, got 0"),
    ("train", "features=offline", "features must be one of cached, online, got 'offline'"),
    ("train", "visual.sources=orig,faces", "visual.sources must be a non-empty list of orig, grounding, rcnn"),
    ("train", "learning_rate=0", "learning_rate must be > 0, got 0.0"),
    ("train", "dropout=1.5", "dropout must be in [0, 1), got 1.5"),
    ("train", "him.heads=3", "him.hidden (256) must be divisible by him.heads (3)"),
    ("train", "seed=-1", "seed must be in [0, 4294967295], got -1"),
    ("train", "device=gpu", "device must be auto, cpu, cuda or cuda:N, got 'gpu'"),
    ("extract", "workers=-1", "workers must be >= 0, got -1"),
    ("extract", "dtype=int8", "dtype must be one of float16, float32, got 'int8'"),
    ("extract", "shard_size=0", "shard_size must be >= 1, got 0"),
    ("extract", "splits=train,dev2", "splits must be a non-empty list of train, valid, test, dev, val"),
    ("extract", "max_crops=0", "max_crops must be >= 1, got 0"),
    ("tag", "bucket_size=0", "bucket_size must be >= 1, got 0"),
    ("tag", "cpus_per_worker=0", "cpus_per_worker must be > 0, got 0.0"),
    ("evaluate", "batch_size=0", "batch_size must be >= 1, got 0"),
])
def test_bad_values_name_key_and_range(stage, override, words):
    with pytest.raises(UsageError) as info:
        stage_config(stage, overrides=[override])
    assert info.value.exit_code == 2
    assert words in str(info.value) and f"{stage} config:" in str(info.value)


def test_all_problems_reported_at_once_and_types_checked_on_dicts():
    with pytest.raises(UsageError, match="num_epochs must be >= 1.*max_grad_norm must be > 0"):
        stage_config("train", overrides=["num_epochs=0", "max_grad_norm=0"])
    data = stage_config("train").to_dict()
    data["him"]["hidden"] = "lots"
    with pytest.raises(UsageError, match="him.hidden must be int, got 'lots'"):
        from_dict("train", data)
    del data["him"]
    with pytest.raises(UsageError, match="missing key.*him"):
        from_dict("train", data)


def test_evaluate_has_its_own_yaml():
    cfg = stage_config("evaluate", overrides=["batch_size=8"])
    assert isinstance(cfg, EvaluateConfig) and cfg.batch_size == 8
    with pytest.raises(UsageError, match="unknown key 'num_epochs'"):  # train.yaml keys are not evaluate's
        stage_config("evaluate", overrides=["num_epochs=1"])


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_rendered_config_reads_back_unchanged(stage, tmp_path):
    sets = {"train": ["learning_rate=1e-5", "him.question='Who: is #here?'", "visual.sources=orig"],
            "extract": ["dump.files=a.jsonl,b c.jsonl", "dataset=", "seed=7"],
            "tag": ["cpus_per_worker=0.5", "out=o ut", "id_field=true"],
            "evaluate": ["lenient=true"]}[stage]
    cfg = stage_config(stage, overrides=sets)
    path = tmp_path / "effective.yaml"
    path.write_text(render_yaml(cfg))
    assert stage_config(stage, path=path) == cfg


def test_config_command_prints_overrides_and_exits_2_on_bad_values():
    runner = CliRunner()
    res = runner.invoke(cli.app, ["config", "train", "--set", "num_epochs=3", "--set", "iffe.iterations=0"])
    assert res.exit_code == 0, res.output
    printed = yaml.safe_load(res.output)
    assert printed["num_epochs"] == 3 and printed["iffe"] == {"iterations": 0}
    assert "num_epochs: 3                  # passes over train" in res.output
    res = runner.invoke(cli.app, ["config", "tag", "--set", "workers=-1"])
    assert res.exit_code == 2 and "workers must be >= 0, got -1" in res.output
    res = runner.invoke(cli.app, ["config", "nonesuch"])
    assert res.exit_code == 2 and "unknown stage 'nonesuch'" in res.output


@pytest.mark.parametrize("command, stage", [("tag-corpus", "tag"), ("extract-features", "extract")])
def test_config_accepts_the_command_name_of_a_stage(command, stage):
    runner = CliRunner()
    by_command = runner.invoke(cli.app, ["config", command, "--set", "seed=7"])
    by_stage = runner.invoke(cli.app, ["config", stage, "--set", "seed=7"])
    assert by_command.exit_code == 0, by_command.output
    assert by_command.output == by_stage.output and f"# effective {stage} config" in by_command.output
    assert stage_config(command) == stage_config(stage)
    res = runner.invoke(cli.app, ["config", "tag_corpus"])
    assert res.exit_code == 2 and "tag-corpus" in res.output  # the error lists the command names too

"""Config and checkpoint damage (issue 13 class 5 and 6): exit 2, one line, the file, what to do; never a hang.

Yaml alias bombs, nested or tagged `--set` values, truncated or padded weights, absurd or mistyped sizes in a
checkpoint's config.json (refused before anything is allocated), missing tokenizer files, a resume with no epoch.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import helpers
import pytest
from rel_helpers import cli, sets

from pipeline.io.checkpoint_folder import checkpoint_info
from rpihmif.errors import ModelError


def _exit2(res, *words):
    assert res.exit_code == 2, (res.exit_code, res.stdout[-500:], res.stderr[-3000:])
    assert "Traceback" not in res.stderr and res.stderr.count("error:") == 1, res.stderr[-3000:]
    for w in words:
        assert w in res.stderr, (w, res.stderr[-3000:])


# ---- yaml and --set ----------------------------------------------------------------------------------------------
def _bomb(kind: str, depth: int = 40) -> str:
    lines = ["l0: &l0 {a: 1, b: 2}" if kind == "map" else "l0: &l0 [1, 2]"]
    for i in range(1, depth):
        prev = f"*l{i - 1}"
        lines.append(f"l{i}: &l{i} {{a: {prev}, b: {prev}}}" if kind == "map" else f"l{i}: &l{i} [{prev}, {prev}]")
    return "\n".join(lines) + "\n"


@pytest.mark.timeout(60)
@pytest.mark.parametrize("text", [_bomb("map"), _bomb("list"), "base: &b {hidden: 8}\nhim:\n  <<: *b\n",
                                  "him: &h\n  hidden: 8\nother: *h\n"])
def test_yaml_aliases_are_refused_without_expanding(tmp_path, text):
    conf = tmp_path / "bomb.yaml"
    conf.write_text(text)
    _exit2(cli("train", "--config", conf), str(conf), "aliases", "write the values out")


@pytest.mark.parametrize("text, words", [
    ("save_path: !!python/object/apply:os.getcwd []\n", ["invalid yaml"]),
    ("him:\n" + "".join("  " * (i + 1) + f"k{i}:\n" for i in range(30)) + "  " * 31 + "x: 1\n", ["nested"]),
    ("[" * 5000 + "]" * 5000 + "\n", []),
    ("- 1\n- 2\n", ["mapping"]),
])
def test_damaged_yaml_files(tmp_path, text, words):
    conf = tmp_path / "bad.yaml"
    conf.write_text(text)
    _exit2(cli("train", "--config", conf), str(conf), *words)


def test_yaml_file_that_is_not_utf8(tmp_path):
    conf = tmp_path / "latin1.yaml"
    conf.write_bytes(b"save_path: caf\xe9\n")
    _exit2(cli("train", "--config", conf), str(conf), "UTF-8")


@pytest.mark.parametrize("value, words", [
    ("visual.sources=[[1]]", ["visual.sources[0] must be str"]),
    ("visual.sources=[{a: 1}]", ["visual.sources[0] must be str"]),
    ("him={bogus: 1}", ["unknown key(s) ['bogus'] in him"]),
    ("him={hidden: [1]}", ["him.hidden must be int"]),
    ("save_path=[1, 2]", ["save_path must be str"]),
    ("save_path=!!python/object/apply:os.getcwd []", ["yaml tags"]),
    ("save_path=!!python/name:os.system", ["yaml tags"]),
    ("num_epochs=!!int 3", ["yaml tags"]),
    ("save_path=!custom x", ["yaml tags"]),
    ("visual.sources=[&a orig, *a]", ["anchors"]),
    ("num_epochs=" + "[" * 3000 + "]" * 3000, ["num_epochs must be int"]),
    ("num_epochs=1e999", ["num_epochs must be int"]),
])
def test_bad_set_values(tmp_path, value, words, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _exit2(cli("train", "--set", value), *words)
    assert list(tmp_path.iterdir()) == []  # no folder named after a tag or a list


def test_a_quoted_tag_is_the_literal_text(tmp_path):
    from pipeline.config import parse_override

    assert parse_override('save_path="!!python/name:os.system"') == ("save_path", "!!python/name:os.system")
    assert parse_override("save_path=2024-01-01") == ("save_path", "2024-01-01")  # a date stays the text written


# ---- checkpoints -------------------------------------------------------------------------------------------------
def _ckpt(world: dict, tmp_path: Path) -> Path:
    return Path(shutil.copytree(world["ckpt"], tmp_path / "ckpt"))


def _edit_config(ckpt: Path, section: str, key: str, value) -> None:
    conf = json.loads((ckpt / "config.json").read_text())
    node = conf
    for part in section.split("."):
        node = node[part] if part else node
    node[key] = value
    (ckpt / "config.json").write_text(json.dumps(conf))


def _model_section(ckpt: Path) -> str:
    return "rpihmif" if "rpihmif" in json.loads((ckpt / "config.json").read_text()) else "model"


CONFIG_DAMAGE = [  # (section relative to the model part or "encoder", key, value, words)
    ("encoder", "hidden_size", 10**9, ["does not match"]),
    ("encoder", "vocab_size", 10**8, ["does not match"]),
    ("encoder", "hidden_size", 10**12, ["out of range"]),
    ("encoder", "num_hidden_layers", 10**6, ["out of range"]),
    ("encoder", "num_attention_heads", 3, ["cannot build"]),
    ("encoder", "hidden_size", "lots", ["cannot build"]),
    ("encoder", "intermediate_size", -5, ["cannot build"]),
    ("@.iffe", "iterations", 10**9, ["out of range"]),
    ("@.iffe", "iterations", "3", ["iffe.iterations must be int"]),
    ("@.him", "hidden", 2.5, ["him.hidden must be int"]),
    ("@.him", "num_capsules", 10**7, ["out of range"]),
    ("@.text", "max_seq", True, ["text.max_seq must be int"]),
    ("@.visual", "sources", "orig", ["visual.sources must be list"]),
]


@pytest.mark.parametrize("section, key, value, words", CONFIG_DAMAGE)
def test_checkpoint_config_damage_is_refused_before_loading(world, tmp_path, section, key, value, words):
    ckpt = _ckpt(world, tmp_path)
    section = section.replace("@", _model_section(ckpt))
    _edit_config(ckpt, section, key, value)
    with pytest.raises(ModelError) as err:
        checkpoint_info(ckpt)
    assert str(ckpt) in str(err.value) and all(w in str(err.value) for w in words), str(err.value)


@pytest.mark.parametrize("damage", ["truncated", "padded", "header", "empty", "config_not_json", "config_deep",
                                    "no_tokenizer_json", "no_tokenizer_config", "no_weights"])
def test_checkpoint_file_damage_is_refused(world, tmp_path, damage):
    ckpt = _ckpt(world, tmp_path)
    weights = ckpt / "model.safetensors"
    data = weights.read_bytes()
    if damage == "truncated":
        weights.write_bytes(data[: len(data) // 2])
    elif damage == "padded":
        weights.write_bytes(data + b"\0" * 100)
    elif damage == "header":
        weights.write_bytes(b"\xff" * 8 + data[8:])
    elif damage == "empty":
        weights.write_bytes(b"")
    elif damage == "config_not_json":
        (ckpt / "config.json").write_text('{"model_type": "rpihm')
    elif damage == "config_deep":
        (ckpt / "config.json").write_text("[" * 100_000 + "]" * 100_000)
    elif damage == "no_tokenizer_json":
        (ckpt / "tokenizer.json").unlink()
    elif damage == "no_tokenizer_config":
        (ckpt / "tokenizer_config.json").unlink()
    else:
        weights.unlink()
    with pytest.raises(ModelError) as err:
        checkpoint_info(ckpt)
    assert str(ckpt) in str(err.value), str(err.value)


@pytest.mark.slow
def test_truncated_weights_through_each_stage(world, tmp_path):
    ckpt = _ckpt(world, tmp_path)
    weights = ckpt / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1000])
    out = tmp_path / "out"
    _exit2(cli("tag-corpus", world["root"] / "data" / "tweets.jsonl.gz", "--model", ckpt, "--out", out,
               *sets(cache_dir=world["root"] / "cache", workers=0)), str(weights), "retrain")
    assert not list(out.rglob("*.parquet"))
    _exit2(cli("evaluate", ckpt, world["root"] / "data/twitter2015/test.txt", "--out", tmp_path / "m.json",
               *sets(cache_dir=world["root"] / "cache")), str(weights))
    assert not (tmp_path / "m.json").exists()
    run = Path(shutil.copytree(world["root"] / "run", tmp_path / "run"))
    last = run / "last" / "model.safetensors"
    last.write_bytes(last.read_bytes()[: last.stat().st_size // 2])
    _exit2(cli(*map(str, world["train"]), *sets(save_path=tmp_path / "run2", load_path=run / "last", num_epochs=2)),
           str(last))
    state = run / "last" / "trainer_state.pt"
    shutil.copy(world["root"] / "run" / "last" / "model.safetensors", last)
    state.write_bytes(state.read_bytes()[:100])
    _exit2(cli(*map(str, world["train"]), *sets(save_path=tmp_path / "run3", load_path=run, num_epochs=2)),
           str(state), "start fresh")


@pytest.mark.slow
def test_tag_with_a_checkpoint_missing_its_tokenizer(world, tmp_path):
    ckpt = _ckpt(world, tmp_path)
    (ckpt / "tokenizer.json").unlink()
    dump = helpers.write_dump(tmp_path / "d.jsonl", helpers.tweets(3))
    _exit2(cli("tag-corpus", dump, "--model", ckpt, "--out", tmp_path / "o", *sets(workers=0)), str(ckpt),
           "tokenizer")


# ---- resume of a run that never finished an epoch --------------------------------------------------------------------
@pytest.mark.slow
def test_resume_of_a_run_killed_before_its_first_epoch_starts_fresh(world, tmp_path, caplog):
    run = tmp_path / "run"
    run.mkdir()
    (run / "train.log").write_text("killed before epoch 1\n")  # what such a run leaves
    for load_path in (run, run / "last"):
        res = cli(*map(str, world["train"]), *sets(save_path=run, load_path=load_path))
        assert res.exit_code == 0, res.stderr[-2000:]
        assert "no epoch of that run finished" in caplog.text and "starting fresh" in caplog.text
        shutil.rmtree(run / "last")
        shutil.rmtree(run / "best")
    _exit2(cli(*map(str, world["train"]), *sets(save_path=tmp_path / "r2", load_path=world["ckpt"])),
           "no trainer_state.pt", "best/ checkpoint holds weights only")
    _exit2(cli(*map(str, world["train"]), *sets(save_path=tmp_path / "r3", load_path=tmp_path / "nowhere")),
           "load_path not found")


# ---- a Ray worker that dies ----------------------------------------------------------------------------------------
@pytest.mark.slow
def test_a_dead_ray_actor_is_one_line(tmp_path):
    import os

    from pipeline.runtime.executor import Executor
    from pipeline.runtime.ray_cluster import init_ray
    from exit_codes import PipelineError

    class Dies:
        def __call__(self, batch):
            os._exit(1)

    with init_ray("", 1):
        with pytest.raises(PipelineError) as err:
            with Executor(Dies, {}, workers=1, in_process=False, max_restarts=0) as ex:
                list(ex.map_unordered([{"x": 1}]))
    msg = str(err.value)
    assert "Ray worker Dies failed" in msg and "rerun" in msg and "\n" not in msg and err.value.exit_code == 1

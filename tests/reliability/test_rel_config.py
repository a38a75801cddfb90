"""Config and usage errors through the CLI: unknown yaml keys, wrong types, missing models, foreign checkpoints and caches.

Each must exit 2 with one readable line that names the problem and says what to do, never a traceback.
"""
from __future__ import annotations

import json
import shutil

import helpers
from helpers import fake_fingerprint
from rel_helpers import cli, sets, tag_sets


def _exit2(res, *words):
    assert res.exit_code == 2, (res.exit_code, res.stderr)
    assert "Traceback" not in res.stderr
    for w in words:
        assert w in res.stderr, (w, res.stderr)


def test_unknown_yaml_key_and_wrong_types(tmp_path):
    conf = tmp_path / "my.yaml"
    conf.write_text("num_epoch: 2\n")
    _exit2(cli("train", "--config", conf), "unknown key 'num_epoch'", str(conf), "known keys")
    conf.write_text("him:\n  hidden: lots\n")
    _exit2(cli("train", "--config", conf), "him.hidden must be int", str(conf))
    _exit2(cli("extract-features", "--set", "shard_size=big"), "shard_size must be int")
    _exit2(cli("tag-corpus", str(tmp_path), "--set", "require_images=maybe"), "require_images must be bool")
    _exit2(cli("train", "--set", "iffe=3"), "iffe is a section")


def test_missing_model_folders(tmp_path, tag_world):
    missing = tmp_path / "no-such-model"
    _exit2(cli("extract-features", "--set", f"vit_name={missing}", "--set", f"cache_dir={tmp_path / 'c'}",
               "--set", f"data_dir={tmp_path}", "--set", "dataset=x"), "vision.vit_name folder not found",
           "leave vit_name empty")
    dump = helpers.write_dump(tmp_path / "d.jsonl", helpers.tweets(2))
    _exit2(cli("tag-corpus", dump, "--model", missing, "--out", tmp_path / "o"), "not a checkpoint folder",
           "best/ folder")
    data = tmp_path / "data" / "tiny"
    data.mkdir(parents=True)
    (data / "train.txt").write_text("IMGID:1\nparis\tB-LOC\n\n")
    (data / "valid.txt").write_text("IMGID:2\nparis\tB-LOC\n\n")
    _exit2(cli("train", *sets(data_dir=data.parent, dataset="tiny", bert_name=missing, save_path=tmp_path / "r",
                              cache_dir=tmp_path / "nc")), "bert_name folder not found", str(missing))


def test_checkpoint_of_another_label_set(tag_world, tmp_path):
    ckpt = tmp_path / "ckpt"
    shutil.copytree(tag_world["ckpt"], ckpt)
    conf = json.loads((ckpt / "config.json").read_text())
    conf["rpihmif"]["labels"] = [x for x in conf["rpihmif"]["labels"] if not x.endswith("MISC")]
    (ckpt / "config.json").write_text(json.dumps(conf))
    dump = helpers.write_dump(tmp_path / "d.jsonl", helpers.tweets(3))
    out = tmp_path / "out"
    res = cli("tag-corpus", dump, "--model", ckpt, "--out", out, *sets(**tag_sets(tag_world, out)))
    _exit2(res, str(ckpt), "labels")
    assert not list(out.glob("*.parquet"))


def test_cache_of_another_encoder(tag_world, tmp_path):
    from cache import CacheWriter

    other = tmp_path / "cache"
    with CacheWriter(other, fake_fingerprint("otherencoder0000"), shard_size=4) as w:
        w.add_alias("dump", "img/0.jpg", "")
    dump = helpers.write_dump(tmp_path / "d.jsonl", helpers.tweets(3, tag_world["images"]))
    out = tmp_path / "out"
    res = cli("tag-corpus", dump, "--model", tag_world["ckpt"], "--out", out,
              *sets(**tag_sets(tag_world, out, cache_dir=other)))
    _exit2(res, "has no features of encoder", helpers.FINGERPRINT_ID, "otherencoder0000", "Run extract-features")

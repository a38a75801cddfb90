"""The dataset-style embedding (text.dataset_dim): joint training on datasets annotated apart keeps each one's style.

Off by default and for old checkpoints; on, each training tweet carries its own dataset's id, each valid split is
scored in its own style, and predictions follow the run's own dataset unless told another.
"""
from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

import pytest
import torch
from helpers import ROOT, tiny_dataset, tiny_overrides

from exit_codes import UsageError
from pipeline.stage_config import stage_config
from pipeline.train.evaluate import evaluate_file
from pipeline.train.trainer import Trainer, train
from rpihmif.alignment import WindowTokenizer
from rpihmif.checkpoint import load_checkpoint, save_checkpoint
from rpihmif.config import ModelConfig
from rpihmif.model import build_model
from rpihmif.predictor import Tagger

WORDS = [["John", "Smith", "visits", "New", "York"], ["rt", "@bob", "apple", "#NBA", "today"]]
STYLES = ["twitter2015", "twitter2017"]


def styled(config, dataset="twitter2017", dim=4):
    return dataclasses.replace(config, text_only=True, text=dataclasses.replace(
        config.text, dataset_dim=dim, datasets=list(STYLES), dataset=dataset, lstm_dim=8))


def make(config, seed=0):
    torch.manual_seed(seed)
    model, tokenizer = build_model(config)
    with torch.no_grad():  # as after training: the styles differ
        if model.dataset_style is not None:
            torch.nn.init.normal_(model.dataset_style.weight, std=3.0)
    return model.eval(), tokenizer


def emissions(model, tokenizer, names=None):
    enc = WindowTokenizer.for_model(tokenizer, model.model_config)
    text = enc.collate([enc.encode_train(w)[0] for w in WORDS])
    text.dataset_ids = None if names is None else model.dataset_ids(names)
    with torch.no_grad():
        return model(text).emissions


def test_off_by_default_and_for_old_configs(tiny_model_config):
    model, tokenizer = make(dataclasses.replace(tiny_model_config, text_only=True))
    assert model.dataset_style is None and model.dataset_ids(["twitter2017", ""]) is None
    old = tiny_model_config.to_dict()
    for key in ("dataset_dim", "datasets", "dataset"):
        old["text"].pop(key)
    assert ModelConfig.from_dict(old).text.dataset_dim == 0
    # a model without styles ignores the name it is given
    assert Tagger(model, tokenizer).predict(WORDS, dataset="anything")[0].labels


def test_each_row_follows_its_own_style_and_blank_is_the_models_own(tiny_model_config):
    model, tokenizer = make(styled(tiny_model_config, dataset="twitter2017"))
    assert model.dataset_ids(["twitter2015", "", "twitter2017"]).tolist() == [0, 1, 1]
    default = emissions(model, tokenizer)
    assert torch.equal(default, emissions(model, tokenizer, ["twitter2017"] * 2))
    mixed = emissions(model, tokenizer, ["twitter2015", "twitter2017"])
    assert not torch.allclose(mixed[0], default[0]) and torch.allclose(mixed[1], default[1])
    with pytest.raises(ValueError, match=r"dataset 'twitter2099': the model knows .*twitter2015"):
        model.dataset_ids(["twitter2099"])


def test_tagger_follows_the_style_it_is_asked_for(tiny_model_config):
    model, tokenizer = make(styled(tiny_model_config, dataset="twitter2015"))
    tagger = Tagger(model, tokenizer)

    def probs(**kw):
        return [e.score for p in tagger.predict(WORDS, **kw) for e in p.entities] + \
               [x for p in tagger.predict(WORDS, **kw) for x in p.labels]

    assert probs() == probs(dataset="twitter2015")
    out = tagger.model(_batch(tagger, "twitter2015")).emissions, tagger.model(_batch(tagger, "twitter2017")).emissions
    assert not torch.allclose(*out)
    with pytest.raises(ValueError, match="twitter2099"):
        tagger.predict(WORDS, dataset="twitter2099")


def _batch(tagger, name):
    text = tagger.window_tokenizer.collate([tagger.window_tokenizer.encode_train(w)[0] for w in WORDS])
    text.dataset_ids = tagger.model.dataset_ids([name] * len(WORDS))
    return text


@pytest.mark.parametrize("datasets, default", [(STYLES, "nope"), (["a", "a"], "a"), ([3, "a"], "a"), ([], "")])
def test_a_bad_style_list_is_refused(tiny_model_config, datasets, default):
    config = styled(tiny_model_config, dataset=default)
    config.text.datasets = datasets
    with pytest.raises(ValueError, match=r"text.dataset .* is not one of text.datasets .*distinct|text.datasets\[\d+\] must be str"):
        build_model(config)


def test_checkpoint_round_trip_keeps_the_styles(tiny_model_config, tmp_path):
    model, tokenizer = make(styled(tiny_model_config))
    save_checkpoint(tmp_path / "ckpt", model, tokenizer)
    saved = json.loads((tmp_path / "ckpt" / "config.json").read_text())["rpihmif"]["text"]
    assert (saved["dataset_dim"], saved["datasets"], saved["dataset"]) == (4, STYLES, "twitter2017")
    loaded, tok, config = load_checkpoint(tmp_path / "ckpt")
    assert config.text.datasets == STYLES
    for names in (None, ["twitter2015", "twitter2017"]):
        assert torch.equal(emissions(model, tokenizer, names), emissions(loaded, tok, names))


def _cfg(tiny_bert_dir, data, name, run, **extra):
    sets = {"num_epochs": 2, "dataset_dim": 4, "lstm_dim": 8, **extra}
    return stage_config("train", overrides=tiny_overrides(tiny_bert_dir, data / name, run, **sets))


def test_training_feeds_each_tweet_its_datasets_style(tiny_bert_dir, two_datasets, tmp_path):
    trainer = Trainer(_cfg(tiny_bert_dir, two_datasets, "twitter2017", tmp_path / "run", num_epochs=1))
    text = trainer.model_config.text
    assert (text.datasets, text.dataset) == (STYLES, "twitter2017")
    seen = []
    trainer.model.register_forward_pre_hook(lambda m, args: seen.append(args[0].dataset_ids.tolist()))
    trainer.fit()
    steps = len(trainer.encoded) // 8 + 1  # batches of 8 over 16 + 20 tweets, then one call per valid split
    assert sorted(i for ids in seen[:steps] for i in ids) == [0] * 16 + [1] * 20  # each tweet once, its own id
    assert any(len(set(ids)) == 2 for ids in seen[:steps])  # batches mix the two datasets
    assert seen[steps:] == [[1] * 8, [0] * 8]  # own valid split first, each scored in its own style


def test_either_run_of_the_pair_trains_identically_and_keeps_its_own_default(tiny_bert_dir, two_datasets, tmp_path):
    train(_cfg(tiny_bert_dir, two_datasets, "twitter2015", tmp_path / "a"))
    train(_cfg(tiny_bert_dir, two_datasets, "twitter2017", tmp_path / "b"))
    ma, mb = (json.loads((tmp_path / r / "metrics.json").read_text()) for r in "ab")
    assert [e["loss"] for e in ma["epochs"]] == [e["loss"] for e in mb["epochs"]]
    assert [e["dev_also"]["twitter2017"] for e in ma["epochs"]] == [e["dev"] for e in mb["epochs"]]
    for run, own in (("a", "twitter2015"), ("b", "twitter2017")):
        text = json.loads((tmp_path / run / "best" / "config.json").read_text())["rpihmif"]["text"]
        assert (text["dataset_dim"], text["datasets"], text["dataset"]) == (4, STYLES, own)
    # evaluate scores a split in the style of its dataset folder (auto), or the one it is told
    ckpt, split = tmp_path / "a" / "last", two_datasets / "twitter2017" / "valid.txt"
    got = {}
    for style in ("auto", "twitter2017", "twitter2015"):
        got[style] = evaluate_file(ckpt, split, stage_config("evaluate", overrides=[f"dataset={style}", "device=cpu"]))
    assert got["auto"]["dataset_style"] == "twitter2017" and got["twitter2015"]["dataset_style"] == "twitter2015"
    assert got["auto"]["f1"] == got["twitter2017"]["f1"] == mb["epochs"][-1]["dev"]["f1"]
    other = evaluate_file(ckpt, two_datasets / "other" / "valid.txt", stage_config("evaluate", overrides=["device=cpu"]))
    assert other["dataset_style"] == "twitter2015"  # a folder the model does not know: its own style
    with pytest.raises(UsageError, match="dataset 'other': the model knows the annotation styles of"):
        evaluate_file(ckpt, split, stage_config("evaluate", overrides=["dataset=other"]))


def _train_cli(tiny_bert_dir, data, run, **sets):
    args = [a for kv in tiny_overrides(tiny_bert_dir, data, run, **sets) for a in ("--set", kv)]
    return subprocess.run([sys.executable, "cli.py", "train", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=300, check=False)


def test_train_cli_checks_dataset_dim_and_a_single_dataset_run(tiny_bert_dir, tmp_path):
    data = tiny_dataset(tmp_path)
    bad = _train_cli(tiny_bert_dir, data, tmp_path / "bad", dataset_dim=-1)
    assert bad.returncode == 2 and "dataset_dim must be >= 0" in bad.stderr
    run = tmp_path / "one"
    ok = _train_cli(tiny_bert_dir, data, run, dataset_dim=3, num_epochs=1)
    assert ok.returncode == 0, ok.stderr[-2000:]
    text = json.loads((run / "best" / "config.json").read_text())["rpihmif"]["text"]
    assert (text["dataset_dim"], text["datasets"], text["dataset"]) == (0, [], "")  # one dataset: no style to learn

"""Training on two datasets at once (`train_also`) and weight averaging (`ema_decay`) on a tiny BERT.

Two tiny datasets named like the Twitter benchmarks are written by the test; nothing here needs ../shared/data.
"""
from __future__ import annotations

import json

import pytest
import torch
from helpers import tiny_overrides
from safetensors.torch import load_file

from exit_codes import UsageError
from pipeline.stage_config import stage_config
from pipeline.train.trainer import Trainer, train


def _cfg(tiny_bert_dir, data, name, run, **extra):
    return stage_config("train", overrides=tiny_overrides(tiny_bert_dir, data / name, run, **{"num_epochs": 2, **extra}))


def test_auto_pairs_the_twitter_benchmarks_and_either_run_trains_identically(tiny_bert_dir, two_datasets, tmp_path):
    a = train(_cfg(tiny_bert_dir, two_datasets, "twitter2015", tmp_path / "a", train_also="auto"))
    b = train(_cfg(tiny_bert_dir, two_datasets, "twitter2017", tmp_path / "b", train_also="auto"))
    ma, mb = (json.loads((tmp_path / r / "metrics.json").read_text()) for r in "ab")
    assert ma["train_datasets"] == mb["train_datasets"] == ["twitter2015", "twitter2017"]
    # the mix is read in one order whichever dataset the run is for: same batches, same losses, swapped dev roles
    assert [e["loss"] for e in ma["epochs"]] == [e["loss"] for e in mb["epochs"]]
    assert [e["dev"] for e in ma["epochs"]] == [e["dev_also"]["twitter2015"] for e in mb["epochs"]]
    assert [e["dev_also"]["twitter2017"] for e in ma["epochs"]] == [e["dev"] for e in mb["epochs"]]
    best17 = max(ma["epochs"], key=lambda e: e["dev_also"]["twitter2017"]["f1"])
    assert ma["best_dev_also"]["twitter2017"] == {"epoch": best17["epoch"], "dev": best17["dev_also"]["twitter2017"]}
    assert a["best_epoch"] == ma["best_epoch"] and b["best_dev"] == mb["best_dev"]
    assert "twitter2017 dev F1" in (tmp_path / "a" / "train.log").read_text()


def test_train_also_lists_and_auto_outside_the_benchmarks(tiny_bert_dir, two_datasets, tmp_path):
    trainer = Trainer(_cfg(tiny_bert_dir, two_datasets, "other", tmp_path / "c", train_also="auto"))
    assert {t.dataset for t in trainer.train_set} == {"other"} and list(trainer.dev_sets) == ["other"]
    trainer = Trainer(_cfg(tiny_bert_dir, two_datasets, "other", tmp_path / "d", train_also="twitter2017, twitter2015"))
    assert len(trainer.train_set) == 8 + 16 + 20 and list(trainer.dev_sets) == ["other", "twitter2017", "twitter2015"]
    assert [t.dataset for t in trainer.train_set][:16] == ["other"] * 8 + ["twitter2015"] * 8  # name order


@pytest.mark.parametrize("also, message", [
    ("nope", r"train_also: .*nope/train.txt not found"),
    ("twitter2015", "twitter2015' twice"),
    ("twitter2017,twitter2017", "twitter2017' twice"),
])
def test_bad_train_also_is_a_usage_error(tiny_bert_dir, two_datasets, tmp_path, also, message):
    with pytest.raises(UsageError, match=message):
        Trainer(_cfg(tiny_bert_dir, two_datasets, "twitter2015", tmp_path / "e", train_also=also))


def test_ema_weights_are_scored_and_saved_and_resume_exactly(tiny_bert_dir, two_datasets, tmp_path):
    trainer = Trainer(_cfg(tiny_bert_dir, two_datasets, "twitter2015", tmp_path / "ema", ema_decay=0.9))
    trainer.cfg.num_epochs = 1  # a 2-epoch run (its learning-rate schedule) that stops after epoch 1
    trainer.fit()
    best = load_file(str(tmp_path / "ema" / "best" / "model.safetensors"))
    last = load_file(str(tmp_path / "ema" / "last" / "model.safetensors"))
    averaged = trainer.ema.module.state_dict()
    name = "emission.weight"
    assert torch.equal(best[name], averaged[name]) and torch.equal(last[name], trainer.model.state_dict()[name])
    assert not torch.equal(best[name], last[name])
    # two epochs in one go == one epoch, then a resumed second epoch (the average is part of the resume state)
    full = Trainer(_cfg(tiny_bert_dir, two_datasets, "twitter2015", tmp_path / "full", ema_decay=0.9))
    full.fit()
    resumed = Trainer(_cfg(tiny_bert_dir, two_datasets, "twitter2015", tmp_path / "ema", ema_decay=0.9))
    resumed.resume(str(tmp_path / "ema"))
    resumed.fit()
    assert [e["dev"] for e in full.history] == [e["dev"] for e in resumed.history]
    torch.testing.assert_close(full.ema.module.state_dict()[name], resumed.ema.module.state_dict()[name])
    plain = Trainer(_cfg(tiny_bert_dir, two_datasets, "twitter2015", tmp_path / "plain", num_epochs=1))
    plain.fit()
    with pytest.raises(UsageError, match="did not average weights"):
        Trainer(_cfg(tiny_bert_dir, two_datasets, "twitter2015", tmp_path / "x", ema_decay=0.9)).resume(
            str(tmp_path / "plain"))

"""`refit: true`: after the run picks its epoch on valid, a second run from scratch on train + valid (train_also's too)
for that many epochs lands in save_path/refit; links are refused, a finished run refits on resume, nothing else moves."""
from __future__ import annotations

import importlib.util
import json
import subprocess
import sys

import pytest
from helpers import ROOT, tiny_overrides
from safetensors.torch import load_file

from exit_codes import UsageError
from pipeline.io.conll import read_conll
from pipeline.stage_config import stage_config
from pipeline.train.corpus import load_corpus
from pipeline.train.trainer import Trainer, train


def _cfg(tiny_bert_dir, two_datasets, run, **extra):
    return stage_config("train", overrides=tiny_overrides(tiny_bert_dir, two_datasets / "twitter2015", run,
                                                          **{"num_epochs": 2, **extra}))


def test_with_valid_adds_every_valid_split_of_the_mix(tiny_bert_dir, two_datasets, tmp_path):
    cfg = _cfg(tiny_bert_dir, two_datasets, tmp_path / "r", train_also="auto")
    plain, refit = load_corpus(cfg), load_corpus(cfg, with_valid=True)
    assert (len(plain.train), len(refit.train)) == (16 + 20, 16 + 20 + 8 + 8)
    assert refit.train[: len(plain.train)] == plain.train
    assert refit.train[len(plain.train):] == plain.dev["twitter2015"] + plain.dev["twitter2017"]
    assert refit.dev == plain.dev


def test_refit_trains_on_train_and_valid_for_the_chosen_epochs(tiny_bert_dir, two_datasets, tmp_path):
    run = tmp_path / "run"
    result = train(_cfg(tiny_bert_dir, two_datasets, run, train_also="auto", refit="true", num_epochs=3))
    main = json.loads((run / "metrics.json").read_text())
    refit = json.loads((run / "refit" / "metrics.json").read_text())
    chosen = main["best_epoch"]
    assert result["refit"] == {"epochs": chosen, "checkpoint": str(run / "refit" / "best")}
    assert result["model"] == str(run / "refit" / "best")
    assert len(main["epochs"]) == 3 and "refit" not in main
    assert len(refit["epochs"]) == chosen == refit["best_epoch"] and refit["config"]["num_epochs"] == chosen
    assert "not held out" in refit["refit"]
    assert ["dev" in e for e in refit["epochs"]] == [False] * (chosen - 1) + [True]  # only the kept epoch is scored
    log = (run / "train.log").read_text()
    assert f"refit: {16 + 20 + 8 + 8} tweets (train + valid) for {chosen} epoch(s)" in log
    assert f"the model to tag and test with: {run / 'refit' / 'best'}" in log
    kept, refitted = (load_file(run / d / "best" / "model.safetensors") for d in (".", "refit"))
    assert kept.keys() == refitted.keys()
    assert any(not kept[k].equal(refitted[k]) for k in kept)


def test_a_refit_scores_only_its_last_epoch(tiny_bert_dir, two_datasets, tmp_path, caplog):
    trainer = Trainer(_cfg(tiny_bert_dir, two_datasets, tmp_path / "run", train_also="auto", num_epochs=3), refit=True)
    calls = []
    score = trainer.score
    trainer.score = lambda tweets, name="": calls.append(name) or score(tweets, name)
    metrics = trainer.fit()
    assert calls == ["twitter2015", "twitter2017"]  # each valid split once, after the last epoch
    assert [sorted(e) for e in metrics["epochs"]] == [["epoch", "loss", "seconds"]] * 2 + [
        ["dev", "dev_also", "epoch", "loss", "seconds"]]
    assert metrics["best_epoch"] == 3 and metrics["best_dev"] == metrics["epochs"][2]["dev"]
    assert metrics["best_dev_also"]["twitter2017"]["epoch"] == 3
    assert (tmp_path / "run" / "best" / "model.safetensors").is_file()
    assert caplog.text.count("a refit scores its last epoch only") == 2


def test_refit_off_writes_no_refit_folder(tiny_bert_dir, two_datasets, tmp_path):
    result = train(_cfg(tiny_bert_dir, two_datasets, tmp_path / "run", train_also="", num_epochs=1))
    assert "refit" not in result and not (tmp_path / "run" / "refit").exists()
    assert result["model"] == str(tmp_path / "run" / "best")


def test_a_finished_run_refits_on_resume_and_keeps_its_best(tiny_bert_dir, two_datasets, tmp_path):
    run = tmp_path / "run"
    train(_cfg(tiny_bert_dir, two_datasets, run, train_also="", num_epochs=2))
    before = (run / "best" / "model.safetensors").read_bytes()
    result = train(_cfg(tiny_bert_dir, two_datasets, run, train_also="", num_epochs=2, refit="true", load_path=str(run)))
    assert (run / "best" / "model.safetensors").read_bytes() == before
    assert len(json.loads((run / "metrics.json").read_text())["epochs"]) == 2
    assert (run / "refit" / "best" / "model.safetensors").is_file() and result["refit"]["epochs"] in (1, 2)


def test_a_planted_refit_link_is_refused_and_its_target_untouched(tiny_bert_dir, two_datasets, tmp_path):
    run, victim = tmp_path / "run", tmp_path / "victim"
    victim.mkdir()
    (victim / "keep.txt").write_text("x")
    run.mkdir()
    (run / "refit").symlink_to(victim, target_is_directory=True)
    with pytest.raises(UsageError, match="refit is a symbolic link"):
        train(_cfg(tiny_bert_dir, two_datasets, run, train_also="", num_epochs=1, refit="true"))
    assert [p.name for p in victim.iterdir()] == ["keep.txt"]


def test_refit_key_is_checked_and_explained(tiny_bert_dir, two_datasets, tmp_path):
    sets = tiny_overrides(tiny_bert_dir, two_datasets / "twitter2015", tmp_path / "r", refit="maybe")
    res = subprocess.run([sys.executable, "cli.py", "train", *(a for s in sets for a in ("--set", s))], cwd=ROOT,
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 2 and "refit" in res.stderr
    shown = subprocess.run([sys.executable, "cli.py", "config", "train"], cwd=ROOT, capture_output=True, text=True,
                           timeout=300)
    assert shown.returncode == 0 and "refit: false" in shown.stdout and "train + valid" in shown.stdout


@pytest.fixture(scope="module")
def refit_holdout():
    """benchmarks/refit_holdout.py as a module (benchmarks are scripts, not a package)."""
    spec = importlib.util.spec_from_file_location("refit_holdout", ROOT / "benchmarks" / "refit_holdout.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_refit_holdout_halves_valid_into_a_selection_half_and_a_held_out_half(refit_holdout, two_datasets, tmp_path):
    (two_datasets / "twitter2015_images").mkdir()
    out = refit_holdout.split_data(two_datasets, tmp_path / "split")
    for name in ("twitter2015", "twitter2017", "other"):
        valid = read_conll(two_datasets / name / "valid.txt")
        half_a, half_b = (read_conll(out / name / f) for f in ("valid.txt", "heldout.txt"))
        assert [t.words for t in half_a] == [t.words for t in valid[0::2]]  # tweets alternate, none lost
        assert [(t.words, t.labels) for t in half_b] == [(t.words, t.labels) for t in valid[1::2]]
        assert (out / name / "train.txt").read_bytes() == (two_datasets / name / "train.txt").read_bytes()
    assert (out / "twitter2015_images").resolve() == (two_datasets / "twitter2015_images").resolve()


def test_refit_holdout_summary_pairs_each_seed(refit_holdout, tmp_path):
    for seed, (best, refit) in enumerate([(80.0, 81.0), (82.0, 82.5), (79.0, 80.5)], start=1):
        run = tmp_path / f"twitter2017_s{seed}"
        run.mkdir()
        metrics = {"dataset": "twitter2017", "seed": seed, "best_epoch": 3 + seed % 2}
        (run / "metrics.json").write_text(json.dumps(metrics))
        for name, f1 in (("best", best), ("refit", refit)):
            (run / f"heldout-{name}.json").write_text(json.dumps({"f1": f1}))
    (tmp_path / "twitter2015_s1").mkdir()  # still training: no held-out scores yet, left out
    [row] = refit_holdout.summary(tmp_path)
    assert row["dataset"] == "twitter2017" and row["seeds"] == [1, 2, 3] and row["refit_epochs"] == [4, 3, 4]
    assert row["best"] == {"mean": 80.33, "std": 1.53, "f1": [80.0, 82.0, 79.0]}
    assert row["refit"]["mean"] == 81.33 and row["refit_minus_best"] == {"mean": 1.0, "std": 0.5}

"""The train and evaluate stages on a tiny BERT: run folder contents, overfitting, exact resume, CLI exit codes.

Datasets are written by the test (30 short tweets); nothing here needs ../shared/data.
"""
from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import helpers
import pytest
from helpers import invoke, tiny_overrides, write_split

from pipeline.io.conll import read_conll
from pipeline.stage_config import stage_config
from pipeline.train.trainer import train

ROOT = helpers.ROOT
UMASK = os.umask(0o022)
os.umask(UMASK)


@pytest.fixture
def tiny_data(tmp_path):
    root = tmp_path / "data" / "tiny"
    root.mkdir(parents=True)
    write_split(root / "train.txt", 30, seed=1)
    write_split(root / "valid.txt", 12, seed=2)
    write_split(root / "test.txt", 12, seed=3)
    return root


def test_train_writes_run_folder_and_learns(tiny_bert_dir, tiny_data, tmp_path):
    run = tmp_path / "run"
    cfg = stage_config("train", overrides=tiny_overrides(tiny_bert_dir, tiny_data, run, num_epochs=8))
    result = train(cfg)
    for name in ("model.safetensors", "config.json", "metrics.json", "tokenizer.json"):
        assert (run / "best" / name).is_file(), name
    assert (run / "last" / "trainer_state.pt").is_file() and (run / "train.log").is_file()
    metrics = json.loads((run / "metrics.json").read_text())
    assert [e["epoch"] for e in metrics["epochs"]] == list(range(1, 9))
    assert set(metrics["epochs"][0]["dev"]["per_type"]) <= {"PER", "LOC", "ORG", "MISC"}
    assert result["best_dev"]["f1"] == max(e["dev"]["f1"] for e in metrics["epochs"])
    assert result["best_dev"]["f1"] > 90.0, metrics["epochs"]
    assert "epoch 8/8" in (run / "train.log").read_text()


def run_cli(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "cli.py"), *args], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT, env={**os.environ, "CI": "true"})


def _set_args(overrides: list[str]) -> list[str]:
    return [a for o in overrides for a in ("--set", o)]


@pytest.mark.slow
def test_killed_run_resumes_to_the_same_result(tiny_bert_dir, tiny_data, tmp_path):
    """SIGKILL after the first saved epoch; resuming from last/ ends with the uninterrupted run's metrics."""
    full = tmp_path / "full"  # a separate process like the killed one: torch's thread count (float sums) is the same
    done = run_cli("train", *_set_args(tiny_overrides(tiny_bert_dir, tiny_data, full, num_epochs=4)))
    assert done.returncode == 0, done.stderr[-2000:]
    killed = tmp_path / "killed"
    args = _set_args(tiny_overrides(tiny_bert_dir, tiny_data, killed, num_epochs=4))
    proc = subprocess.Popen([sys.executable, str(ROOT / "cli.py"), "train", *args], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 240
    while not (killed / "last" / "trainer_state.pt").exists() and proc.poll() is None:
        assert time.monotonic() < deadline, "no epoch finished"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert (killed / "last" / "config.json").is_file()
    resumed = run_cli("train", *args, "--set", f"load_path={killed / 'last'}")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    a = json.loads((full / "metrics.json").read_text())["epochs"]
    b = json.loads((killed / "metrics.json").read_text())["epochs"]
    assert [e["dev"] for e in a] == [e["dev"] for e in b]
    assert [e["loss"] for e in a] == [e["loss"] for e in b]


def test_evaluate_cli_scores_every_entity_and_writes_predictions(tiny_bert_dir, tiny_data, tmp_path):
    run = tmp_path / "run"
    train(stage_config("train", overrides=tiny_overrides(tiny_bert_dir, tiny_data, run, num_epochs=2)))
    out, pred = tmp_path / "m.json", tmp_path / "pred.txt"
    res = run_cli("evaluate", str(run), str(tiny_data / "test.txt"), "--out", str(out),  # a run folder: its best/
                  "--predictions", str(pred), "--set", f"cache_dir={tmp_path / 'none'}")
    assert res.returncode == 0, res.stderr[-2000:]
    metrics = json.loads(out.read_text())
    gold = read_conll(tiny_data / "test.txt")
    assert metrics["entities"] == 12 and metrics["tweets"] == 12 and metrics["checkpoint"] == str(run / "best")
    assert 0 <= metrics["f1"] <= 100 and set(metrics["per_type"]) <= {"PER", "LOC", "ORG"}
    # conlleval form: token gold predicted, a blank line between tweets
    blocks = [b.splitlines() for b in pred.read_text().strip("\n").split("\n\n")]
    assert [[line.split(" ")[0] for line in b] for b in blocks] == [t.words for t in gold]
    assert [[line.split(" ")[1] for line in b] for b in blocks] == [t.labels for t in gold]
    predicted = [[line.split(" ")[2] for line in b] for b in blocks]
    # the confusion counts every gold entity once (matched by span to a type, or missed)
    confusion = metrics["confusion"]
    assert sum(n for t in ("PER", "LOC", "ORG", "MISC") for n in confusion[t].values()) == 12
    matched = sum(confusion[t][t] for t in ("PER", "LOC", "ORG", "MISC"))
    n_pred = sum(1 for labels in predicted for lab in labels if lab.startswith("B-"))
    assert matched + sum(confusion["spurious"].values()) + sum(confusion[t][u] for t in ("PER", "LOC", "ORG", "MISC")
                                                              for u in ("PER", "LOC", "ORG", "MISC") if u != t) \
        <= n_pred
    assert round(100 * matched / max(n_pred, 1), 2) == metrics["precision"]
    # the model card of best/: Hugging Face YAML header with the dev F1 and the encoders
    card = (run / "best" / "README.md").read_text()
    assert card.startswith("---\n") and "pipeline_tag: token-classification" in card
    assert f"value: {float(json.loads((run / 'metrics.json').read_text())['best_dev']['f1'])}" in card
    # output files follow the umask (0644 under the usual 022), never 0600
    for path in (pred, out, run / "best" / "model.safetensors", run / "best" / "config.json", run / "metrics.json"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~UMASK, path


@pytest.mark.parametrize("args, code, message", [
    (["train", "--set", "num_epoch=2"], 2, "unknown key 'num_epoch'"),
    (["train", "--set", "features=sideways"], 2, "features must be one of cached, online"),
    (["train", "--set", "data_dir=/nonexistent", "--set", "dataset=x"], 2, "/nonexistent/x"),
    (["evaluate", "/nonexistent/ckpt", "x.txt"], 2, "not a checkpoint folder (not found)"),
])
def test_cli_usage_errors_exit_2(args, code, message):
    res = invoke(*args)
    assert res.exit_code == code, res.stderr
    assert message in res.stderr
    assert "Traceback" not in res.stderr


def test_malformed_split_exits_1_naming_file_and_line(tiny_bert_dir, tiny_data, tmp_path):
    bad = tiny_data / "train.txt"
    lines = bad.read_text().splitlines()
    lines[3] = "london LOC-without-tab"
    bad.write_text("\n".join(lines) + "\n")
    res = invoke("train", *_set_args(tiny_overrides(tiny_bert_dir, tiny_data, tmp_path / "r")))
    assert res.exit_code == 1
    assert "train.txt:4" in res.stderr and "Traceback" not in res.stderr


def test_multimodal_model_without_images_trains_exactly_like_text_only(tiny_bert_dir, tiny_data, tmp_path):
    """No cache anywhere: the full model's masks make it the text path, and it trains to the same numbers."""
    full = train(stage_config("train", overrides=tiny_overrides(tiny_bert_dir, tiny_data, tmp_path / "full",
                                                               num_epochs=2, dropout=0.1)))
    text = train(stage_config("train", overrides=tiny_overrides(tiny_bert_dir, tiny_data, tmp_path / "text",
                                                               num_epochs=2, dropout=0.1, text_only="true")))
    a = json.loads((tmp_path / "full" / "metrics.json").read_text())["epochs"]
    b = json.loads((tmp_path / "text" / "metrics.json").read_text())["epochs"]
    assert [e["loss"] for e in a] == [e["loss"] for e in b]
    assert full["best_dev"] == text["best_dev"]

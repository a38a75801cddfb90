"""How train ends and what it says: SIGTERM at a batch boundary (exit 143, a line in train.log, an exact resume), a
checkpoint save failing with ENOSPC or torch's write error (exit 1, one line naming the path and its disk, the previous
checkpoint intact, a clean rerun), and progress lines with batch i/n, loss, s/batch and ETA under cron.
"""
from __future__ import annotations

import errno
import io
import json
import os
import signal
from pathlib import Path

import pytest
import torch
from helpers import tiny_dataset, tiny_overrides
from typer.testing import CliRunner

import pipeline.train.trainer as trainer_module
from cli import app
from pipeline.runtime import progress as progress_module
from pipeline.runtime.progress import Progress


def train_cli(tiny_bert_dir, data: Path, run: Path, *extra: str):
    """`train` in-process; fp32: bf16 runs on this CPU did not reproduce bit for bit (exact-resume checks)."""
    sets = tiny_overrides(tiny_bert_dir, data, run, train_also="", log_every_s=0.001, precision="fp32")
    args = ["train", *[a for s in sets for a in ("--set", s)], *extra]
    return CliRunner().invoke(app, args, catch_exceptions=False)


def error_lines(res) -> list[str]:
    assert "Traceback" not in res.stderr, res.stderr
    return [line for line in res.stderr.splitlines() if line.startswith("error:")]


def epochs_of(run: Path) -> list[dict]:
    return json.loads((run / "metrics.json").read_text())["epochs"]


def saved_epoch(run: Path) -> int:
    return torch.load(run / "last" / "trainer_state.pt", weights_only=True)["epoch"]


def no_temps(run: Path) -> None:
    assert not [p.name for p in run.iterdir() if p.name.startswith(".")], list(run.iterdir())


@pytest.fixture
def data(tmp_path) -> Path:
    return tiny_dataset(tmp_path)  # 16 train tweets: 2 batches of 8 per epoch


@pytest.fixture
def outer_sigterm():
    """A SIGTERM handler of the process's own (as an earlier in-process `ray.init` leaves one), restored after."""
    def handler(signum, frame):
        raise AssertionError("train's own SIGTERM handler must be in place while it runs")

    previous = signal.signal(signal.SIGTERM, handler)
    yield handler
    signal.signal(signal.SIGTERM, previous)


@pytest.mark.slow  # three tiny training runs
def test_sigterm_stops_at_a_batch_boundary_and_resumes_exactly(tiny_bert_dir, data, tmp_path, monkeypatch,
                                                               outer_sigterm):
    ref = tmp_path / "ref"
    assert train_cli(tiny_bert_dir, data, ref).exit_code == 0
    run, calls, real_loss = tmp_path / "run", [0], trainer_module.Trainer._loss

    def loss_then_sigterm(self, text, visual):
        calls[0] += 1
        if calls[0] == 3:  # the first batch of epoch 2: the batch finishes, the run stops before the next one
            os.kill(os.getpid(), signal.SIGTERM)
        return real_loss(self, text, visual)

    monkeypatch.setattr(trainer_module.Trainer, "_loss", loss_then_sigterm)
    res = train_cli(tiny_bert_dir, data, run)
    assert res.exit_code == 143, res.stderr
    [line] = error_lines(res)
    assert "stopped by SIGTERM at batch 1/2 of epoch 2" in line and f"load_path={run / 'last'}" in line
    assert "ERROR" in (run / "train.log").read_text().splitlines()[-1] and "SIGTERM" in (run / "train.log").read_text()
    assert saved_epoch(run) == 1 and calls[0] == 3
    assert signal.getsignal(signal.SIGTERM) is outer_sigterm  # train's handler lives only while it runs
    monkeypatch.setattr(trainer_module.Trainer, "_loss", real_loss)
    assert train_cli(tiny_bert_dir, data, run, "--set", f"load_path={run / 'last'}").exit_code == 0
    assert [(e["loss"], e["dev"]) for e in epochs_of(run)] == [(e["loss"], e["dev"]) for e in epochs_of(ref)]


@pytest.mark.parametrize("failure", ["enospc", "torch"])
def test_a_failed_checkpoint_save_is_one_line_and_keeps_the_previous_one(tiny_bert_dir, data, tmp_path, monkeypatch,
                                                                          failure):
    run, calls = tmp_path / "run", [0]
    real_save, real_torch_save = trainer_module.save_checkpoint, torch.save

    def full_disk(folder, *args, **kwargs):
        calls[0] += 1
        if calls[0] == 3:  # epoch 2's first save (epoch 1 saved best/ and last/)
            if failure == "enospc":
                raise OSError(errno.ENOSPC, "No space left on device", str(Path(folder) / "model.safetensors"))
            real_save(folder, *args, **kwargs)
            raise RuntimeError("[enforce fail at inline_container.cc:603] . unexpected pos 64 vs 0")
        return real_save(folder, *args, **kwargs)

    monkeypatch.setattr(trainer_module, "save_checkpoint", full_disk)
    res = train_cli(tiny_bert_dir, data, run)
    assert res.exit_code == 1, res.stderr
    [line] = error_lines(res)
    reason = "No space left on device" if failure == "enospc" else "unexpected pos 64 vs 0"
    assert line.startswith(f"error: {run}/") and "cannot save (" in line and reason in line and "MiB free of" in line
    assert f"load_path={run / 'last'}" in line and "previous one is intact" in line
    assert saved_epoch(run) == 1 and (run / "best" / "model.safetensors").is_file()
    no_temps(run)
    monkeypatch.setattr(trainer_module, "save_checkpoint", real_save)
    monkeypatch.setattr(torch, "save", real_torch_save)
    rerun = train_cli(tiny_bert_dir, data, run, "--set", f"load_path={run / 'last'}")
    assert rerun.exit_code == 0, rerun.stderr
    assert [e["epoch"] for e in epochs_of(run)] == [1, 2, 3]
    no_temps(run)


def test_cron_lines_give_batch_loss_speed_and_eta_once_each(tiny_bert_dir, data, tmp_path):
    run = tmp_path / "run"
    assert train_cli(tiny_bert_dir, data, run).exit_code == 0
    log = (run / "train.log").read_text().splitlines()
    batch_lines = [line.split(" ", 2)[2] for line in log if ": epoch 1: 1/2 batch" in line]
    assert len(batch_lines) == 1, log
    assert "s/batch" in batch_lines[0] and "ETA 0:" in batch_lines[0] and "loss " in batch_lines[0]
    messages = [line.split(" ", 2)[2] for line in log]  # without the timestamp: no line is logged twice
    assert len(messages) == len(set(messages)), log


def test_terminal_bar_shows_loss_and_rate(monkeypatch):
    out = io.StringIO()
    monkeypatch.setattr(progress_module, "is_terminal", lambda: True)
    real_tqdm = progress_module.tqdm
    monkeypatch.setattr(progress_module, "tqdm", lambda **kw: real_tqdm(file=out, mininterval=0, **kw))
    bar = Progress(4, desc="epoch 1", unit="batch")
    for i in range(4):
        bar.update(1, loss=f"{1.0 / (i + 1):.4f}")
    bar.close()
    text = out.getvalue()
    assert "epoch 1: 100%" in text and "4/4" in text and "loss=0.2500" in text and "batch" in text


def test_plain_line_format():
    bar = Progress(10, desc="epoch 3", unit="batch", every_s=1e9)
    bar.done, bar.start = 4, 0.0
    line = bar.line(8.0, {"loss": "0.1234"})
    assert line == "epoch 3: 4/10 batch (0.5 batch/s, 2.00 s/batch, ETA 0:12, loss 0.1234)"

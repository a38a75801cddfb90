"""Fault injection on train: SIGKILL between the two renames of a checkpoint save and between last/ and metrics.json.

Each killed CLI run is resumed from last/; the final metrics and best weights equal an uninterrupted run's (same seed).
"""
from __future__ import annotations

import json

import pytest
from helpers import tiny_overrides, write_split
from rel_helpers import cli, finish, spawn
from safetensors.numpy import load_file


def _args(tiny_bert_dir, data, run, **extra):
    return ["train", *[a for o in tiny_overrides(tiny_bert_dir, data, run, num_epochs=3, precision="fp32", **extra)
                       for a in ("--set", o)]]


@pytest.mark.slow
def test_train_killed_during_checkpoint_save_resumes_to_same_metrics(tiny_bert_dir, tmp_path):
    data = tmp_path / "data" / "tiny"
    data.mkdir(parents=True)
    for split, n, seed in (("train", 24, 1), ("valid", 8, 2), ("test", 8, 3)):
        write_split(data / f"{split}.txt", n, seed)
    full = tmp_path / "full"
    assert cli(*_args(tiny_bert_dir, data, full)).exit_code == 0
    run, log = tmp_path / "run", tmp_path / "run.log"

    # 1. epoch 2's save of last/: killed after last/ -> last.old, before the new folder is renamed in
    proc = spawn(_args(tiny_bert_dir, data, run), log,
                 {"target": "os.rename", "match": "/.last.tmp-", "nth": 2, "when": "before", "action": "kill"})
    assert finish(proc, log) == -9, log.read_text()[-3000:]
    assert not (run / "last").exists() and (run / "last.old" / "trainer_state.pt").is_file()
    assert len(json.loads((run / "metrics.json").read_text())["epochs"]) == 1

    # 2. resumed, then killed after the final last/ is saved but before metrics.json is replaced
    proc = spawn(_args(tiny_bert_dir, data, run, load_path=run / "last"), log,
                 {"target": "os.replace", "match": "/.metrics.json.tmp-", "nth": 2, "when": "before",
                  "action": "kill"})
    assert finish(proc, log) == -9, log.read_text()[-3000:]
    assert len(json.loads((run / "metrics.json").read_text())["epochs"]) == 2  # stale: one epoch behind last/

    res = cli(*_args(tiny_bert_dir, data, run, load_path=run / "last"))
    assert res.exit_code == 0, res.stderr
    want, got = (json.loads((d / "metrics.json").read_text())["epochs"] for d in (full, run))
    assert [e["epoch"] for e in got] == [1, 2, 3]
    assert [e["dev"] for e in got] == [e["dev"] for e in want] and [e["loss"] for e in got] == [e["loss"] for e in want]
    a, b = load_file(str(full / "best" / "model.safetensors")), load_file(str(run / "best" / "model.safetensors"))
    assert a.keys() == b.keys(), sorted(set(a) ^ set(b))
    diff = max(float(abs(a[k].astype("float64") - b[k].astype("float64")).max()) for k in a)
    assert diff <= 1e-5, diff  # resumed weights equal the uninterrupted run (to float rounding)
    leftovers = sorted(p.name for p in run.iterdir() if p.name.startswith(".") or p.name.endswith(".old"))
    assert leftovers == [], leftovers  # no half-swapped or orphaned temp checkpoint folders

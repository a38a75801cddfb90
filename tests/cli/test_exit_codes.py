"""Exit 2, one line, no traceback, no model loaded: every stage run through the CLI with a missing or unreadable input
file, dataset folder, model or checkpoint folder, or an output folder that cannot be created.

Models are bogus folders (a config.json that is not JSON): had a stage loaded one before checking its paths, it would
fail with another message. Unreadable-for-root cases use what root cannot read either (a folder given as a file, a
path through a file, a FIFO); permission bits are checked in-process.
"""
from __future__ import annotations

import errno
import os
import subprocess
import sys
import time
from pathlib import Path

import helpers
import pytest
from helpers import write_split

from exit_codes import UsageError
from pipeline import preflight

ROOT = Path(__file__).resolve().parents[2]
BOGUS = "{not json"  # config.json of the bogus model and checkpoint folders: loading them fails differently


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    w = tmp_path_factory.mktemp("exitcodes")
    (w / "afile").write_text("x\n")
    (w / "adir").mkdir()
    os.mkfifo(w / "fifo")
    for name in ("model", "ckpt"):
        (w / name).mkdir()
        (w / name / "config.json").write_text(BOGUS)
    data = w / "data" / "tiny"
    data.mkdir(parents=True)
    write_split(data / "train.txt", 4, seed=1)
    write_split(data / "valid.txt", 2, seed=2)
    (w / "dump.jsonl").write_text('{"id": "1", "text": "hello"}\n')
    return w


EXTRACT = ["extract-features", "--set", "data_dir={w}/data", "--set", "vision.vit_name={w}/model", "--workers", "0"]
TRAIN = ["train", "--set", "data_dir={w}/data", "--set", "dataset=tiny", "--set", "bert_name={w}/model",
         "--set", "save_path={w}/run", "--set", "train_also="]
TAG = ["--model", "{w}/ckpt", "--out", "{w}/out"]

# (case id, argv with {w} = the world folder, text the one line must hold)
CASES = [
    ("make-sample OUT under a file", ["make-sample", "{w}/afile/sample"], "{w}/afile is a file"),
    ("make-sample OUT is a file", ["make-sample", "{w}/afile"], "{w}/afile: sample folder is a file"),
    ("data-stats missing folder", ["data-stats", "{w}/nope"], "{w}/nope: dataset folder not found"),
    ("data-stats a file", ["data-stats", "{w}/afile"], "{w}/afile: dataset folder is a file"),
    ("extract missing dataset folder", [*EXTRACT, "--set", "dataset=nope"], "{w}/data/nope: dataset folder"),
    ("extract missing dump", [*EXTRACT, "--set", "dataset=", "--dump", "{w}/nope.jsonl"],
     "{w}/nope.jsonl: dump not found"),
    ("extract dump is a FIFO", [*EXTRACT, "--set", "dataset=", "--dump", "{w}/fifo"],
     "{w}/fifo: dump is not a regular file"),
    ("extract dump path through a file", [*EXTRACT, "--set", "dataset=", "--dump", "{w}/data/tiny/train.txt/x"],
     "dump cannot be reached (Not a directory)"),
    ("extract missing vit_name folder", [*EXTRACT, "--set", "dataset=tiny", "--set", "vision.vit_name={w}/novit"],
     "{w}/novit: vision.vit_name folder not found"),
    ("extract cache_dir under a file", [*EXTRACT, "--set", "dataset=tiny", "--set", "cache_dir={w}/afile/c"],
     "cache_dir cannot be created"),
    ("train missing dataset folder", [*TRAIN, "--set", "dataset=nope"], "{w}/data/nope: dataset folder"),
    ("train missing bert_name folder", [*TRAIN, "--set", "bert_name={w}/nobert"], "{w}/nobert: bert_name folder"),
    ("train bert_name without config.json", [*TRAIN, "--set", "bert_name={w}/adir"],
     "{w}/adir/config.json: bert_name config.json not found"),
    ("train missing load_path", [*TRAIN, "--set", "load_path={w}/norun/last"], "{w}/norun/last: load_path not found"),
    ("train save_path under a file", [*TRAIN, "--set", "save_path={w}/afile/run"], "save_path cannot be created"),
    ("evaluate missing checkpoint", ["evaluate", "{w}/nockpt", "{w}/data/tiny/valid.txt"],
     "{w}/nockpt: not a checkpoint folder (not found)"),
    ("evaluate checkpoint without config.json", ["evaluate", "{w}/adir", "{w}/data/tiny/valid.txt"],
     "{w}/adir: not a checkpoint folder (config.json not found)"),
    ("evaluate missing split", ["evaluate", "{w}/ckpt", "{w}/data/tiny/test.txt"],
     "{w}/data/tiny/test.txt: split file not found"),
    ("evaluate split is a folder", ["evaluate", "{w}/ckpt", "{w}/data/tiny"], "split file is a folder"),
    ("evaluate --out under a file", ["evaluate", "{w}/ckpt", "{w}/data/tiny/valid.txt", "--out", "{w}/afile/m.json"],
     "{w}/afile: folder of --out is a file"),
    ("tag missing input", ["tag-corpus", "{w}/nope.jsonl", *TAG], "{w}/nope.jsonl: tag-corpus input not found"),
    ("tag input is a FIFO", ["tag-corpus", "{w}/fifo", *TAG], "{w}/fifo: tag-corpus input is not a regular file"),
    ("tag missing model", ["tag-corpus", "{w}/dump.jsonl", "--model", "{w}/nockpt", "--out", "{w}/out"],
     "{w}/nockpt: not a checkpoint folder (not found)"),
    ("tag no model", ["tag-corpus", "{w}/dump.jsonl", "--out", "{w}/out"], "no model: pass --model"),
    ("tag --out under a file", ["tag-corpus", "{w}/dump.jsonl", "--model", "{w}/ckpt", "--out", "{w}/afile/o"],
     "--out cannot be created"),
    ("report missing folder", ["report", "{w}/noout"], "{w}/noout: output folder not found"),
    ("report missing --image-root", ["report", "{w}/adir", "--image-root", "{w}/noimg"],
     "{w}/noimg: --image-root not found"),
]


def run_cli(args: list[str], env: dict | None = None, timeout: float = 120) -> tuple[subprocess.CompletedProcess, float]:
    start = time.monotonic()
    res = subprocess.run([sys.executable, str(ROOT / "cli.py"), *args], capture_output=True, text=True, cwd=ROOT,
                         timeout=timeout, env={**os.environ, "RAY_ADDRESS": "", **(env or {})})
    return res, time.monotonic() - start


def one_error_line(res: subprocess.CompletedProcess) -> str:
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert "Traceback" not in res.stderr, res.stderr
    assert len(lines) == 1 and lines[0].startswith("error: "), res.stderr
    return lines[0]


def check_refused(exit_code: int, stderr: str, expect: str, world: Path) -> None:
    assert exit_code == 2, (exit_code, stderr[-2000:])
    line = one_error_line(subprocess.CompletedProcess([], exit_code, "", stderr))
    assert expect.format(w=world) in line, line
    for opened in ("valid JSON", "unusable checkpoint", "cannot load", "JSONDecodeError"):  # what loading says
        assert opened not in line, line  # no model, encoder or checkpoint was opened
    assert not (world / "run").exists() and not (world / "out").exists()  # nothing created before the check


@pytest.mark.parametrize("case, args, expect", CASES, ids=[c[0] for c in CASES])
def test_missing_or_unreadable_path_exits_2_in_one_line(world, case, args, expect):
    res = helpers.invoke(*[a.format(w=world) for a in args])
    check_refused(res.exit_code, res.stderr, expect, world)


@pytest.mark.slow  # real processes (about 5-10 s each on 2 cores: torch imports)
@pytest.mark.parametrize("case", ["tag missing model", "train missing dataset folder", "extract missing dump"])
def test_a_real_process_exits_2_in_one_line_before_loading_anything(world, case):
    """The same contract from a real interpreter: the exit status, one stderr line, quick (imports only)."""
    _, args, expect = next(c for c in CASES if c[0] == case)
    res, seconds = run_cli([a.format(w=world) for a in args])
    check_refused(res.returncode, res.stderr, expect, world)
    assert seconds < 90, seconds  # the process start (imports) only; no model, encoder or Ray started


def test_permission_denied_is_named_with_the_fix(world, monkeypatch):
    """EACCES (which root never gets from permission bits) on a file and a folder: the path, the reason, the fix."""
    real_open, real_scandir = os.open, os.scandir

    def deny_open(path, flags, *a, **k):
        if str(path).endswith("dump.jsonl"):
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_open(path, flags, *a, **k)

    def deny_scandir(path="."):
        if str(path).endswith("adir"):
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_scandir(path)

    monkeypatch.setattr(preflight.os, "open", deny_open)
    monkeypatch.setattr(preflight.os, "scandir", deny_scandir)
    with pytest.raises(UsageError, match=r"dump.jsonl: dump is unreadable \(Permission denied; check its perm"):
        preflight.input_file(world / "dump.jsonl", "dump", "fix")
    with pytest.raises(UsageError, match=r"adir: output folder is unreadable \(Permission denied"):
        preflight.check_report(world / "adir", None)
    monkeypatch.setattr(preflight.os, "access", lambda path, mode: False)
    with pytest.raises(UsageError, match=r"sample folder is not writable .*read-only or permission denied"):
        preflight.check_make_sample(world / "adir" / "new")


def test_os_errors_map_to_exit_codes(capsys):
    """An OSError escaping a stage: a path problem is exit 2, a full disk exit 1 with the fix, both one line."""
    import typer

    from cli import reported_errors

    for exc, code, text in [(PermissionError(errno.EACCES, "Permission denied", "/x/y"), 2, "/x/y: Permission denied"),
                            (FileNotFoundError(errno.ENOENT, "No such file or directory", "/x/z"), 2, "/x/z: No such"),
                            (OSError(errno.ENOSPC, "No space left on device", "/x/w"), 1, "free space on that disk")]:
        with pytest.raises(typer.Exit) as stop:
            with reported_errors():
                raise exc
        err = capsys.readouterr().err
        assert stop.value.exit_code == code and text in err and err.count("\n") == 1, err

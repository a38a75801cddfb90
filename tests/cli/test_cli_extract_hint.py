"""The hint of a multimodal checkpoint without its feature cache is a command that runs as printed: tag-corpus exits 2
naming it, the printed extract-features runs, and the tag-corpus command that failed then succeeds."""
from __future__ import annotations

import re
import shlex
import subprocess
import sys

import helpers
import pytest

ROOT = helpers.ROOT


def _cli(*args, cwd):
    return subprocess.run([sys.executable, str(ROOT / "cli.py"), *args], cwd=cwd, capture_output=True, text=True,
                          timeout=600)


@pytest.mark.slow
def test_printed_extract_command_makes_tag_corpus_succeed(tiny_bert_dir, tmp_path):
    ckpt = helpers.vision_checkpoint(tmp_path / "ckpt", tiny_bert_dir)
    images = helpers.draw_images(tmp_path / "dumps", 3)
    dump = helpers.write_dump(tmp_path / "dumps" / "d.jsonl", helpers.tweets(6, images))
    tag = ["tag-corpus", str(dump), "--model", str(ckpt), "--out", str(tmp_path / "out"), "--workers", "0",
           "--set", f"cache_dir={tmp_path / 'cache'}", "--set", "threads=1"]
    elsewhere = tmp_path / "elsewhere"  # the hint's paths are absolute: it runs from any folder
    elsewhere.mkdir()
    failed = _cli(*tag, cwd=ROOT)
    assert failed.returncode == 2, failed.stderr[-2000:]
    assert "Traceback" not in failed.stderr
    hint = re.search(r"Run: (.*?) -- then rerun", failed.stderr).group(1)
    argv = shlex.split(hint)
    assert argv[:2] == [sys.executable, str(ROOT / "cli.py")] and argv[2] == "extract-features"
    done = subprocess.run(argv, cwd=elsewhere, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    again = _cli(*tag, cwd=ROOT)
    assert again.returncode == 0, again.stderr[-2000:]
    rows = helpers.tag_rows(tmp_path / "out")
    assert len(rows) == 6 and rows["image_used"].all()


def test_program_name_follows_argv0(monkeypatch, tmp_path):
    from pipeline.runtime import commands

    monkeypatch.setattr(sys, "argv", ["/usr/bin/pytest"])
    assert commands.program() == [sys.executable, str(ROOT / "cli.py")]
    exe = tmp_path / "bin" / "rpihmif"
    exe.parent.mkdir()
    exe.write_text("#!/bin/sh\n")
    exe.chmod(0o755)
    monkeypatch.setattr(sys, "argv", [str(exe)])
    monkeypatch.setenv("PATH", str(exe.parent))
    assert commands.program() == ["rpihmif"]
    monkeypatch.setenv("PATH", "/nonexistent")
    assert commands.program() == [str(exe)]
    assert commands.command_line("extract-features", "--dump", "/a b/c.jsonl").endswith("'/a b/c.jsonl'")

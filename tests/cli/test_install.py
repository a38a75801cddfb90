"""A non-editable `pip install .` into a fresh venv gives a working `rpihmif` command with the default configs as
package data, run from a folder outside the repository; output files follow the umask (0644)."""
from __future__ import annotations

import json
import os
import shutil
import site
import stat
import subprocess
import sys
import sysconfig
from pathlib import Path

import helpers
import pytest

REPO = helpers.ROOT
SKIP = shutil.ignore_patterns(".git", ".venv", "__pycache__", "*.egg-info", "build", "runs", "demo", ".pytest_cache")


@pytest.mark.slow
def test_pip_install_gives_a_working_command(tmp_path, tiny_model_config):
    src, venv, work = tmp_path / "src", tmp_path / "venv", tmp_path / "elsewhere"
    shutil.copytree(REPO, src, ignore=SKIP)  # pip builds in the source folder: never in the checkout itself
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    vpy = venv / "bin" / "python"
    purelib = Path(subprocess.run([vpy, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                  capture_output=True, text=True, check=True).stdout.strip())
    # the dependencies (torch, transformers, ...) come from this interpreter's site-packages, after the venv's own;
    # a plain path line, so this environment's editable install of the project is not picked up
    (purelib / "_deps.pth").write_text("\n".join(site.getsitepackages() + [sysconfig.get_paths()["purelib"]]) + "\n")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    pip = subprocess.run([vpy, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--no-index",
                          str(src)], capture_output=True, text=True, env=env, timeout=600)
    assert pip.returncode == 0, pip.stderr[-3000:]
    exe = venv / "bin" / "rpihmif"
    work.mkdir()

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([str(exe), *args], capture_output=True, text=True, env=env, cwd=work, timeout=600)

    version = run("--version")
    assert version.returncode == 0 and version.stdout.startswith("rpihmif 0."), version.stderr
    helped = run("tag-corpus", "-h")
    assert helped.returncode == 0 and "Usage: rpihmif tag-corpus" in helped.stdout
    assert helped.stdout.count("[default:") == 9  # each of its 9 options shows its default
    where = subprocess.run([vpy, "-c", "import pipeline.config as c; print(c.CONF_DIR)"], capture_output=True,
                           text=True, env=env, cwd=work)
    assert str(venv) in where.stdout and (Path(where.stdout.strip()) / "tag.yaml").is_file()  # the installed copy
    helpers.train_tiny_checkpoint(tiny_model_config, work / "ckpt", steps=5)
    dump = helpers.write_dump(work / "tweets.jsonl", helpers.tweets(12))
    tagged = run("tag-corpus", "tweets.jsonl", "--model", "ckpt", "--out", "out", "--set", "precision=fp32")
    assert tagged.returncode == 0, tagged.stderr[-3000:]
    summary = json.loads(tagged.stdout)
    assert summary["rows"] == 12 and dump.is_file()
    made = [p for p in (work / "out").rglob("*") if p.is_file() and not p.name.endswith(".lock")]
    assert made and all(stat.S_IMODE(p.stat().st_mode) == 0o644 for p in made), \
        {str(p): oct(p.stat().st_mode) for p in made}
    reported = run("report", "out")  # its page template ships as package data
    assert reported.returncode == 0 and "tag-corpus report" in (work / "out" / "_report.html").read_text(), \
        reported.stderr[-3000:]

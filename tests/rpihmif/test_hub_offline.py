"""Hub ids for bert_name: a model in a temporary Hugging Face cache (built from the packaged MiniLM) loads offline;
offline and not cached exits 2 naming the id and how to fetch it; a failed train writes its error into train.log."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import helpers
import pytest

from rpihmif.errors import ModelError
from rpihmif.text_encoder import default_bert_path, load_text_encoder

REPO = helpers.ROOT
COMMIT = "0123456789abcdef0123456789abcdef01234567"


def hub_cache(home: Path, repo_id: str, folder: str | Path) -> Path:
    """Lay `folder`'s files out as `repo_id` at revision main in HF_HOME=`home` (refs/main -> snapshots/COMMIT)."""
    repo = home / "hub" / ("models--" + repo_id.replace("/", "--"))
    snap = repo / "snapshots" / COMMIT
    snap.mkdir(parents=True)
    for f in Path(folder).iterdir():
        if f.is_file():
            shutil.copy(f, snap / f.name)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(COMMIT)
    return snap


def _run(code: str, home: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    environ = {**os.environ, "HF_HOME": str(home), "PYTHONPATH": str(REPO), **env}
    environ.pop("HF_HUB_CACHE", None)
    return subprocess.run([sys.executable, *(["-c", code] if code else []), *args], env=environ, cwd=REPO,
                          capture_output=True, text=True, timeout=300)


def test_cached_hub_id_loads_offline(tmp_path):
    hub_cache(tmp_path / "hf", "testorg/minilm", default_bert_path())
    code = ("from rpihmif.text_encoder import load_text_encoder\n"
            "m, t = load_text_encoder('testorg/minilm')\n"
            "print(type(m).__name__, m.config.hidden_size, t('New York')['input_ids'])")
    res = _run(code, tmp_path / "hf", HF_HUB_OFFLINE="1")
    assert res.returncode == 0, res.stderr
    assert res.stdout.split()[:2] == ["BertModel", "384"] and "[101," in res.stdout


def test_offline_and_not_cached_is_usage_error():
    with pytest.raises(ModelError, match=r"'testorg/absent' is not in the Hugging Face cache.*"
                                         r"huggingface-cli download testorg/absent"):
        load_text_encoder("testorg/absent", offline=True)
    with pytest.raises(ModelError, match="folder does not exist"):
        load_text_encoder("./no/such/folder")


@pytest.mark.slow
def test_cli_offline_flag_exit2_and_error_in_train_log(tmp_path):
    data = tmp_path / "data" / "tiny"
    data.mkdir(parents=True)
    (data / "train.txt").write_text("IMGID:1\nparis\tB-LOC\n\n")
    (data / "valid.txt").write_text("IMGID:2\nparis\tB-LOC\n\n")
    run = tmp_path / "run"
    res = _run("", tmp_path / "hf", "cli.py", "--offline", "train", "--set", f"data_dir={data.parent}", "--set",
               "dataset=tiny", "--set", "bert_name=testorg/absent", "--set", f"save_path={run}", "--set",
               f"cache_dir={tmp_path / 'cache'}")
    assert res.returncode == 2, res.stderr
    assert "huggingface-cli download testorg/absent" in res.stderr and "Traceback" not in res.stderr
    log = (run / "train.log").read_text()
    assert "ERROR" in log and "huggingface-cli download testorg/absent" in log
    assert "\r" not in res.stderr  # no library progress bars off a terminal

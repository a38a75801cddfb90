"""Planted links (issue 13 class 1): a symlink at every name a stage creates, and at guessable temp names.

Each link points at a victim file (or folder) outside. A stage run either exits 2 naming the link, or writes its own
file beside it without following it; the run is repeated, removing each link it names, until it succeeds. The victims
must never change, and every link at a final name must have been named (refused) or left pointing at its victim.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from rel_helpers import cli, sets

from cache.reader import fingerprint_folders


class Victims:
    """Files and folders outside every stage's folders that planted links point at; `check()` proves them unchanged."""

    def __init__(self, root: Path):
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.files: dict[Path, bytes] = {}
        self.links: list[Path] = []

    def plant(self, link: Path, folder: bool = False) -> Path:
        victim = self.root / f"victim-{len(self.files)}"
        data = os.urandom(64) + str(link).encode()
        if folder:
            victim.mkdir()
            (victim / "precious.txt").write_bytes(data)
            self.files[victim / "precious.txt"] = data
        else:
            victim.write_bytes(data)
            self.files[victim] = data
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(victim, target_is_directory=folder)
        self.links.append(link)
        return link

    def plant_temps(self, folder: Path, names: list[str]) -> None:
        """Links at the temp names a careless writer would use: `.name.tmp-<pid>`, `.name.tmp`, `name.tmp`."""
        pid = os.getpid()
        for name in names:
            for temp in (f".{name}.tmp-{pid}", f".{name}.tmp-{pid}-0", f".{name}.tmp", f"{name}.tmp"):
                self.plant(folder / temp)

    def check(self) -> None:
        for victim, data in self.files.items():
            assert victim.read_bytes() == data, f"{victim} was written through a link"
        assert sorted(p.name for p in self.root.iterdir()) == sorted(
            p.name for p in self.root.iterdir() if p.name.startswith("victim-")), "files appeared beside the victims"
        for victim in (p for p in self.root.iterdir() if p.is_dir()):
            assert [p.name for p in victim.iterdir()] == ["precious.txt"], f"{victim}: written into through a link"


def run_until_clean(args: list, victims: Victims, final: list[Path], max_runs: int = 20) -> list[Path]:
    """Run `args` until exit 0; each exit 2 must name one planted final-name link, which is then removed.

    Returns the links that were named, in order. Victims are checked after every run.
    """
    named: list[Path] = []
    for _ in range(max_runs):
        res = cli(*args)
        victims.check()
        if res.exit_code == 0:
            break
        assert res.exit_code == 2, (res.exit_code, res.stdout, res.stderr[-3000:])
        assert "Traceback" not in res.stderr and res.stderr.count("error:") == 1, res.stderr[-3000:]
        hit = [p for p in final if p.is_symlink() and str(p) in res.stderr]
        assert hit, f"exit 2 names none of the planted links: {res.stderr[-1500:]}"
        assert "link" in res.stderr or "not a regular file" in res.stderr or "is a file" in res.stderr, res.stderr
        hit[0].unlink()
        named.append(hit[0])
    else:
        raise AssertionError("the stage never succeeded")
    for link in final:  # not refused: then the stage's own file replaced the link, or the link was left alone
        assert link in named or not link.is_symlink() or Path(os.readlink(link)).parent == victims.root, link
    return named


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst, symlinks=True)
    return dst


# ---- extract-features --------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_extract_never_writes_through_links(world, tmp_path):
    fid = fingerprint_folders(world["root"] / "cache")[0].name
    victims = Victims(tmp_path / "victims")
    cache = tmp_path / "cache"
    folder = cache / fid
    own = ["fingerprint.json", "index.h5", "rejects.jsonl", ".lock"]
    final = [victims.plant(folder / n) for n in own] + [victims.plant(cache / ".extract_memo.json")]
    victims.plant_temps(folder, own + ["shard-00000000000000000001-1-00001.h5"])
    victims.plant_temps(cache, [".extract_memo.json"])
    named = run_until_clean([*map(str, world["extract"]), *sets(cache_dir=cache)], victims, final)
    assert set(named) == set(final)  # every one of the cache's own files was refused, none followed
    # a second run over the finished cache with links planted at its files again: refused before any work
    victims.plant(folder / "index.h5.old")
    (folder / "rejects.jsonl").unlink()
    final = [victims.plant(folder / "rejects.jsonl")]
    assert run_until_clean([*map(str, world["extract"]), *sets(cache_dir=cache)], victims, final) in ([], final)


# ---- train -------------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_train_never_writes_through_links(world, tmp_path):
    victims = Victims(tmp_path / "victims")
    run = tmp_path / "run"
    final = [victims.plant(run / n, folder=True) for n in ("best", "last")]
    final += [victims.plant(run / n) for n in ("best.old", "last.old", "metrics.json", "metrics.json.old", "train.log")]
    final += [victims.plant(tmp_path / "logs" / "train.log")]
    victims.plant_temps(run, ["metrics.json", "best", "last", "train.log"])
    args = [*map(str, world["train"]), *sets(save_path=run, log_dir=tmp_path / "logs")]
    named = run_until_clean(args, victims, final)
    assert set(named) == set(final)
    assert (run / "best" / "model.safetensors").is_file() and not (run / "best").is_symlink()
    assert "epoch 1/1" in (run / "train.log").read_text()  # the log went to its own file


# ---- evaluate ----------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_evaluate_never_writes_through_links(world, tmp_path):
    victims = Victims(tmp_path / "victims")
    out, pred = tmp_path / "o" / "metrics.json", tmp_path / "o" / "pred.txt"
    final = [victims.plant(out), victims.plant(pred)]
    victims.plant_temps(out.parent, ["metrics.json", "pred.txt"])
    args = ["evaluate", world["ckpt"], world["root"] / "data/twitter2015/test.txt", "--out", out, "--predictions", pred,
            *sets(cache_dir=world["root"] / "cache", device="cpu")]
    assert set(run_until_clean(args, victims, final)) == set(final)
    assert json.loads(out.read_text())["f1"] >= 0 and len(pred.read_text().split("\n")[0].split(" ")) == 3  # conlleval: token gold predicted


# ---- tag-corpus and report -------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_tag_and_report_never_write_through_links(world, tmp_path):
    victims = Victims(tmp_path / "victims")
    out = tmp_path / "out"
    own = [".lock", "_state.sqlite", "_rejects.jsonl", "tweets.parquet", "data/tweets.parquet"]
    final = [victims.plant(out / n) for n in own]
    victims.plant_temps(out, own[:4])
    victims.plant_temps(out / "data", ["tweets.parquet"])
    args = ["tag-corpus", world["root"] / "data" / "tweets.jsonl.gz", "--model", world["ckpt"], "--out", out,
            *sets(cache_dir=world["root"] / "cache", device="cpu", workers=0)]
    named = run_until_clean(args, victims, final)
    assert {out / n for n in (".lock", "_state.sqlite", "_rejects.jsonl")} <= set(named)
    for link in final:  # the parts are the report's inputs: links there are read, never written; drop them
        if link.is_symlink():
            link.unlink()
    data = out / "data"  # the output contract: OUT/data holds the Parquet parts (older tag-corpus wrote them to OUT)
    data.mkdir(exist_ok=True)
    for part in out.glob("*.parquet"):
        part.rename(data / part.name)
    report = victims.plant(out / "_report.html")
    victims.plant_temps(out, ["_report.html"])
    assert run_until_clean(["report", out], victims, [report]) == [report]
    assert "<html" in (out / "_report.html").read_text().lower()


# ---- make-sample -------------------------------------------------------------------------------------------------
def test_make_sample_never_writes_through_links(tmp_path):
    from pipeline.io.sample import make_sample
    from exit_codes import UsageError

    victims = Victims(tmp_path / "victims")
    out = tmp_path / "s"
    final = [victims.plant(out / "twitter2015", folder=True), victims.plant(out / "tweets.jsonl.gz")]
    victims.plant_temps(out, ["twitter2015", "tweets.jsonl.gz"])
    small = {"train": 16, "valid": 8, "test": 6}
    for link in final:
        with pytest.raises(UsageError, match=str(link)):
            make_sample(out, seed=0, sizes=small)
        victims.check()
        link.unlink()
    make_sample(out, seed=0, sizes=small)
    victims.check()
    assert (out / "twitter2015" / "train.txt").is_file()
    assert (out / "twitter2015").stat().st_mode & 0o077, "the sample folder keeps mkdtemp's private mode"


# ---- a file where a folder belongs: exit 2 -------------------------------------------------------------------------
@pytest.mark.slow
def test_a_file_where_a_folder_belongs_is_exit_2(world, tmp_path):
    blocker = tmp_path / "blocker"
    blocker.write_text("mine")
    run = tmp_path / "run"
    run.mkdir()
    runs = {
        "cache_dir (extract)": [*map(str, world["extract"]), *sets(cache_dir=blocker)],
        "cache_dir (train)": [*map(str, world["train"]), *sets(cache_dir=blocker, save_path=run)],
        "save_path": [*map(str, world["train"]), *sets(save_path=blocker)],
        "save_path parent": [*map(str, world["train"]), *sets(save_path=blocker / "run")],
        "--out (tag)": ["tag-corpus", str(world["root"] / "data" / "tweets.jsonl.gz"), "--model", str(world["ckpt"]),
                        "--out", str(blocker), *sets(cache_dir=world["root"] / "cache", workers=0)],
        "--out folder (evaluate)": ["evaluate", str(world["ckpt"]), str(world["root"] / "data/twitter2015/test.txt"),
                                    "--out", str(tmp_path), *sets(cache_dir=world["root"] / "cache")],
    }
    for what, args in runs.items():
        before = sorted(p.name for p in tmp_path.iterdir())
        res = cli(*args)
        assert res.exit_code == 2, (what, res.stdout, res.stderr[-2000:])
        assert "Traceback" not in res.stderr and str(blocker if "evaluate" not in what else tmp_path) in res.stderr
        assert blocker.read_text() == "mine"
        assert sorted(p.name for p in tmp_path.iterdir()) == before, f"{what} left files behind"


def test_a_folder_the_user_reached_through_a_link_takes_the_output(world, tmp_path):
    """A link the user gave as the output folder itself (runs -> another disk) is followed: the file lands in its
    target whole and the command succeeds (it used to write the file, then fail on the folder fsync: exit 1)."""
    from cache.durable import atomic_dir, atomic_write_text

    real, linked = tmp_path / "disk" / "results", tmp_path / "results"
    real.mkdir(parents=True)
    linked.symlink_to(real, target_is_directory=True)
    atomic_write_text(linked / "note.txt", "kept")
    with atomic_dir(linked / "best") as tmp:
        (tmp / "weights.bin").write_bytes(b"w")
    assert (real / "note.txt").read_text() == "kept" and (real / "best" / "weights.bin").read_bytes() == b"w"
    res = cli("evaluate", world["ckpt"], world["root"] / "data/twitter2015/test.txt", "--out", linked / "metrics.json",
              *sets(cache_dir=world["root"] / "cache", device="cpu"))
    assert res.exit_code == 0, res.stderr
    assert json.loads((real / "metrics.json").read_text())["f1"] >= 0
    assert sorted(p.name for p in real.iterdir()) == ["best", "metrics.json", "note.txt"]  # no temp left

"""Preflight checks of each stage's paths, run by the CLI before any model, encoder or Ray loads.

Every missing or unreadable input file, dataset folder, model or checkpoint folder, and every output folder that
cannot be created, is one exit-2 line (UsageError) naming the path and the fix: a cron wrapper can act on exit 2.
"""
from __future__ import annotations

import os
import re
import stat
from pathlib import Path
from typing import Iterable

from exit_codes import UsageError
from rpihmif.checkpoint import RUN_CHECKPOINTS

__all__ = ["problem", "input_file", "input_dir", "checkpoint_dir", "output_dir", "model_dir", "input_paths", "ray_address",
           "check_data_stats", "check_make_sample", "check_extract", "check_train", "check_evaluate", "check_tag",
           "check_report"]


def problem(path: Path, folder: bool) -> str | None:
    """Why `path` is not a readable regular file (`folder=False`) or a listable folder, or None when it is one. A file
    is opened and closed, never read (a FIFO does not block)."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return "not found"
    except OSError as exc:  # ENOTDIR (a file on the way), EACCES on a parent, ELOOP
        return f"cannot be reached ({exc.strerror})"
    if folder != stat.S_ISDIR(st.st_mode) or not (folder or stat.S_ISREG(st.st_mode)):
        return "is a file, not a folder" if folder else "is a folder" if stat.S_ISDIR(st.st_mode) else \
            "is not a regular file"
    try:
        if folder:
            with os.scandir(path) as entries:
                next(entries, None)
        else:
            os.close(os.open(path, os.O_RDONLY | os.O_NONBLOCK))
    except OSError as exc:
        return f"is unreadable ({exc.strerror}; check its permissions)"
    return None


def _require(path: str | os.PathLike, what: str, fix: str, folder: bool) -> Path:
    path = Path(path)
    why = problem(path, folder=folder)
    if why:
        raise UsageError(f"{path}: {what} {why}; {fix}")
    return path


def input_file(path: str | os.PathLike, what: str, fix: str) -> Path:
    """`path` is a regular file this process can open for reading, else UsageError `path: what <why>; fix`."""
    return _require(path, what, fix, folder=False)


def input_dir(path: str | os.PathLike, what: str, fix: str) -> Path:
    """`path` is a folder this process can list, else UsageError `path: what <why>; fix`."""
    return _require(path, what, fix, folder=True)


def checkpoint_dir(folder: str | os.PathLike) -> None:
    """A checkpoint folder (or a run folder holding one): listable, with a readable config.json (its contents are the
    checkpoint opener's job). A Hugging Face Hub id (`org/name`, no such path here) is left to the opener."""
    folder = Path(folder)
    if not os.path.lexists(folder) and re.fullmatch(r"[A-Za-z0-9][\w.-]*/[\w.-]+", str(folder)):
        return
    if folder.is_dir() and not (folder / "config.json").exists():
        folder = next((folder / sub for sub in RUN_CHECKPOINTS if (folder / sub / "config.json").is_file()), folder)
    why = problem(folder, folder=True)
    if why is None:
        inner = problem(folder / "config.json", folder=False)
        why = f"config.json {inner}" if inner else None
    if why:
        raise UsageError(f"{folder}: not a checkpoint folder ({why}); {CHECKPOINT_FIX}")


def output_dir(path: str | os.PathLike, what: str) -> Path:
    """`path` is a writable folder, or the nearest folder above it that exists is writable (nothing is created)."""
    path = Path(path)
    probe = path
    while not os.path.lexists(probe) and probe != probe.parent:
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        where = "is a file" if probe == path else f"cannot be created: {probe} is a file"
        raise UsageError(f"{path}: {what} {where}, not a folder; give a folder path")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise UsageError(f"{path}: {what} is not writable ({probe} refuses writes: read-only or permission denied); "
                         "give a folder you can write to")
    return path


def model_dir(name: str, what: str, fix: str = "") -> None:
    """A model given as a local folder exists with a readable config.json; a Hugging Face Hub id (org/name, no
    such folder here) is left to the loader, which knows the cache and offline mode."""
    if not name:
        return
    path = Path(name).expanduser()
    if not (name.startswith(("/", "./", "../", "~")) or os.path.lexists(path)):
        return
    fix = f"give {what} a model folder saved with save_pretrained (or a Hugging Face Hub id){fix}"
    input_dir(path, f"{what} folder", fix)
    input_file(path / "config.json", f"{what} config.json", fix)


def input_paths(paths: Iterable[str | os.PathLike], what: str, fix: str) -> None:
    """Each path is a readable file or a listable folder."""
    for item in paths:
        path = Path(item)
        if path.is_dir():
            input_dir(path, what, fix)
        else:
            input_file(path, what, fix)


def ray_address(address: str, uses_ray: bool) -> None:
    """An address the stage will join (after RAY_ADDRESS and `auto`) answers as a Ray cluster; skipped without Ray."""
    if uses_ray:
        from pipeline.runtime.ray_cluster import check_address

        check_address(address)


# ---------------------------------------------------------------------------------------------------------------
# per stage
# ---------------------------------------------------------------------------------------------------------------
DATASET_FIX = "point to a dataset folder in the DeepKE layout ({train,valid,test}.txt)"
CHECKPOINT_FIX = "pass the best/ folder of a train run, the run folder, or a Hugging Face Hub id (org/name)"


def check_data_stats(dataset_dir: Path) -> None:
    input_dir(dataset_dir, "dataset folder", DATASET_FIX)


def check_make_sample(out: Path) -> None:
    output_dir(out, "sample folder")


def check_extract(cfg, dumps: list[Path]) -> None:
    model_dir(cfg.vision.vit_name, "vision.vit_name", ", or leave vit_name empty for the random-init encoder")
    if cfg.dataset:
        input_dir(Path(cfg.data_dir) / cfg.dataset, "dataset folder (data_dir/dataset)",
                  "set data_dir to the folder holding it, or dataset to \"\" to encode only --dump files")
    input_paths([*dumps, *cfg.dump.files], "dump", "pass existing JSONL(.gz) files with --dump")
    if cfg.dump.image_root:
        input_dir(cfg.dump.image_root, "dump.image_root", "set it to the folder the dumps' image paths are under")
    if cfg.cache_dir:
        output_dir(cfg.cache_dir, "cache_dir")
    ray_address(cfg.ray_address, cfg.workers > 0)


def check_train(cfg) -> None:
    fix = "set data_dir to the folder holding the dataset folder, with train.txt and valid.txt (DeepKE layout)"
    input_dir(Path(cfg.data_dir) / cfg.dataset, "dataset folder (data_dir/dataset)", fix)
    model_dir(cfg.text.bert_name, "bert_name")
    if cfg.features == "online" and not cfg.text_only:
        model_dir(cfg.vision.vit_name, "vision.vit_name")
    if cfg.load_path:  # a run killed before its first epoch has no last/ yet: the trainer then starts fresh
        run = Path(cfg.load_path)
        run = run.parent if run.name == "last" and not os.path.lexists(run) and run.parent.is_dir() else run
        input_dir(run, "load_path", "point it at a run folder or its last/ folder, or drop it")
    output_dir(cfg.save_path, "save_path")
    if cfg.log_dir:
        output_dir(cfg.log_dir, "log_dir")


def check_evaluate(checkpoint: Path, split_file: Path, out: Path | None, predictions: Path | None) -> None:
    checkpoint_dir(checkpoint)
    input_file(split_file, "split file", "give a CoNLL .txt file inside a dataset folder")
    for target, what in ((out, "--out"), (predictions, "--predictions")):
        if target is not None:
            output_dir(Path(target).parent, f"folder of {what}")


def check_tag(inputs: list[Path], cfg) -> None:
    input_paths(inputs, "tag-corpus input", "pass JSONL(.gz) files or folders of them")
    if not cfg.load_path:
        raise UsageError("no model: pass --model CHECKPOINT (or --set load_path=CHECKPOINT)")
    model = Path(cfg.load_path)
    folder = model.parent if model.is_file() else model  # a file inside the checkpoint folder names it too
    checkpoint_dir(folder)
    if cfg.out:
        output_dir(cfg.out, "--out")
    ray_address(cfg.ray_address, cfg.workers > 0)


def check_report(out_dir: Path, image_root: Path | None) -> None:
    input_dir(out_dir, "output folder", "pass the --out folder of a tag-corpus run")
    if image_root is not None:
        input_dir(image_root, "--image-root", "give the folder the rows' image paths are relative to")

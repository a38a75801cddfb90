"""Preflight checks of each stage's paths, run by the CLI before any model, encoder or Ray loads.

Every missing or unreadable input file, dataset folder, model or checkpoint folder, and every output folder that
cannot be created, is one exit-2 line (UsageError) naming the path and the fix: a cron wrapper can act on exit 2.
"""
from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Iterable

from rpihmif.errors import UsageError

__all__ = ["input_file", "input_dir", "output_dir", "model_dir", "input_paths", "ray_address",
           "check_data_stats", "check_make_sample", "check_extract", "check_train", "check_evaluate", "check_tag",
           "check_report"]


def _stat(path: Path, what: str, fix: str) -> os.stat_result:
    try:
        return path.stat()
    except FileNotFoundError:
        raise UsageError(f"{path}: {what} not found; {fix}") from None
    except OSError as exc:  # ENOTDIR (a file on the way), EACCES on a parent, ELOOP
        raise UsageError(f"{path}: {what} cannot be reached ({exc.strerror}); {fix}") from None


def input_file(path: str | os.PathLike, what: str, fix: str) -> Path:
    """`path` is a regular file this process can open for reading (opened and closed, never read: a FIFO won't block)."""
    path = Path(path)
    st = _stat(path, what, fix)
    if not stat.S_ISREG(st.st_mode):
        kind = "a folder" if stat.S_ISDIR(st.st_mode) else "not a regular file"
        raise UsageError(f"{path}: {what} is {kind}; {fix}")
    try:
        os.close(os.open(path, os.O_RDONLY | os.O_NONBLOCK))
    except OSError as exc:
        raise UsageError(f"{path}: {what} is unreadable ({exc.strerror}); check its permissions, or {fix}") from None
    return path


def input_dir(path: str | os.PathLike, what: str, fix: str) -> Path:
    """`path` is a folder this process can list."""
    path = Path(path)
    st = _stat(path, what, fix)
    if not stat.S_ISDIR(st.st_mode):
        raise UsageError(f"{path}: {what} is a file, not a folder; {fix}")
    try:
        with os.scandir(path) as entries:
            next(entries, None)
    except OSError as exc:
        raise UsageError(f"{path}: {what} is unreadable ({exc.strerror}); check its permissions, or {fix}") from None
    return path


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


def model_dir(name: str, what: str) -> None:
    """A model given as a local folder exists with a readable config.json; a Hugging Face Hub id (org/name, no
    such folder here) is left to the loader, which knows the cache and offline mode."""
    if not name:
        return
    path = Path(name).expanduser()
    if not (name.startswith(("/", "./", "../", "~")) or os.path.lexists(path)):
        return
    fix = f"give {what} a model folder saved with save_pretrained (or a Hugging Face Hub id)"
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
CHECKPOINT_FIX = "pass the best/ folder of a train run"


def check_data_stats(dataset_dir: Path) -> None:
    input_dir(dataset_dir, "dataset folder", DATASET_FIX)


def check_make_sample(out: Path) -> None:
    output_dir(out, "sample folder")


def check_extract(cfg, dumps: list[Path]) -> None:
    if cfg.dataset:
        input_dir(Path(cfg.data_dir) / cfg.dataset, "dataset folder (data_dir/dataset)",
                  "set data_dir to the folder holding it, or dataset to \"\" to encode only --dump files")
    input_paths([*dumps, *cfg.dump.files], "dump", "pass existing JSONL(.gz) files with --dump")
    if cfg.dump.image_root:
        input_dir(cfg.dump.image_root, "dump.image_root", "set it to the folder the dumps' image paths are under")
    model_dir(cfg.vision.vit_name, "vision.vit_name")
    if cfg.cache_dir:
        output_dir(cfg.cache_dir, "cache_dir")
    ray_address(cfg.ray_address, cfg.workers > 0)


def check_train(cfg) -> None:
    fix = "set data_dir to the folder holding the dataset folder, with train.txt and valid.txt (DeepKE layout)"
    input_dir(Path(cfg.data_dir) / cfg.dataset, "dataset folder (data_dir/dataset)", fix)
    for name in filter(None, (n.strip() for n in str(cfg.train_also or "").split(","))):
        input_dir(Path(cfg.data_dir) / name, "train_also dataset folder", fix)
    model_dir(cfg.bert_name, "bert_name")
    if cfg.features == "online" and not cfg.text_only:
        model_dir(cfg.vision.vit_name, "vision.vit_name")
    if cfg.load_path:
        input_dir(cfg.load_path, "load_path", "point it at a run folder or its last/ folder, or drop it")
    output_dir(cfg.save_path, "save_path")
    if cfg.log_dir:
        output_dir(cfg.log_dir, "log_dir")


def check_evaluate(checkpoint: Path, split_file: Path, out: Path | None, predictions: Path | None) -> None:
    input_dir(checkpoint, "checkpoint folder", CHECKPOINT_FIX)
    input_file(Path(checkpoint) / "config.json", "checkpoint config.json", CHECKPOINT_FIX)
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
    input_dir(folder, "model checkpoint folder (--model)", CHECKPOINT_FIX)
    input_file(folder / "config.json", "model checkpoint config.json", CHECKPOINT_FIX)
    if cfg.out:
        output_dir(cfg.out, "--out")
    ray_address(cfg.ray_address, bool(cfg.ray_address) or cfg.workers > 1 or cfg.use_ray)


def check_report(out_dir: Path, image_root: Path | None) -> None:
    input_dir(out_dir, "output folder", "pass the --out folder of a tag-corpus run")
    if image_root is not None:
        input_dir(image_root, "--image-root", "give the folder the rows' image paths are relative to")

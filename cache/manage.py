"""The `cache` command's work: list, verify and prune the fingerprint folders of a feature-cache root.

Verify reads and writes nothing but what it checks; prune removes whole fingerprint folders, each under its `.lock`
(a running extract-features holds it: LockHeldError, exit 3, and nothing is removed).
"""
from __future__ import annotations

import os
import shutil
import stat
import time
from pathlib import Path
from typing import Any

from cache.durable import FileLock, remove_stale_temps
from cache.format import SHARD_GLOB, read_fingerprint
from cache.index import INDEX_NAME, load_index
from cache.integrity import DAMAGED_SUFFIX, verify_shard
from cache.memo import StampMemo, last_read
from cache.reader import fingerprint_folders
from cache.safe_open import open_index
from exit_codes import DamagedCacheError, LockHeldError, PipelineError, UsageError

__all__ = ["cache_info", "verify_cache", "prune_cache", "folder_info"]

_PRUNING = ".tmp-{pid}-prune"  # a folder being removed: hidden, and a dead run's leftover is a stale temp


def _iso(ts: float | None) -> str | None:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(ts)) if ts else None


def _tree_bytes(folder: Path) -> int:
    total = 0
    for top, _dirs, files in os.walk(folder):  # never follows a link
        for name in files:
            try:
                total += os.lstat(os.path.join(top, name)).st_size
            except OSError:
                pass
    return total


def _mtime(path: Path) -> float | None:
    try:
        st = os.lstat(path)
    except OSError:
        return None
    return st.st_mtime if stat.S_ISREG(st.st_mode) else None


def folder_info(folder: Path) -> dict[str, Any]:
    """One fingerprint folder: encoder, images, bytes, shards, last written and last read (reading it stamps nothing)."""
    shards = sorted(folder.glob(SHARD_GLOB))
    written = [t for t in (_mtime(p) for p in shards + [folder / INDEX_NAME, folder / "fingerprint.json"]) if t]
    info: dict[str, Any] = {"fingerprint": folder.name, "encoder": None, "images": None, "bytes": _tree_bytes(folder),
                            "shards": len(shards), "damaged_set_aside": len(list(folder.glob("*" + DAMAGED_SUFFIX))),
                            "last_written": max(written, default=None), "last_read": last_read(folder),
                            "path": str(folder), "problem": None}
    try:
        fp = read_fingerprint(folder)
        info["encoder"] = fp["info"].get("encoder")
        info["images"] = len(load_index(folder, fp).keys)
    except PipelineError as exc:  # listed anyway: `cache verify` says what is wrong, prune can remove it
        info["problem"] = str(getattr(exc, "reason", exc))[:200]
    info["last_used"] = max(info["last_written"] or 0, info["last_read"] or 0) or None
    return info


def _readable(info: dict[str, Any]) -> dict[str, Any]:
    return {**info, **{k: _iso(info[k]) for k in ("last_written", "last_read", "last_used")}}


def cache_info(root: Path) -> dict[str, Any]:
    """{"cache_dir", "bytes", "folders": [folder_info, most recently used first]}."""
    folders = sorted((folder_info(f) for f in fingerprint_folders(root)), key=lambda i: -(i["last_used"] or 0))
    return {"cache_dir": str(root), "bytes": sum(f["bytes"] for f in folders), "folders": [_readable(f) for f in folders]}


def _index_problem(folder: Path) -> str:
    path = folder / INDEX_NAME
    if not os.path.lexists(path):
        return ""
    try:
        with open_index(path, strict=True):
            pass
    except DamagedCacheError as exc:
        return exc.reason
    except (OSError, KeyError, ValueError, RuntimeError) as exc:
        return str(exc)[:300]
    return ""


def verify_cache(root: Path, fingerprint: str | None = None) -> dict[str, Any]:
    """Every shard of every (or one) fingerprint folder read back against its checksums and structure.

    {"cache_dir", "shards", "broken": [{"file", "reason"}]}; nothing is moved or written (extract-features repairs).
    """
    broken: list[dict[str, str]] = []
    checked = 0
    for folder in _select(root, fingerprint):
        try:
            fp = read_fingerprint(folder)
        except UsageError as exc:
            broken.append({"file": str(folder / "fingerprint.json"), "reason": str(exc)[:300]})
            continue
        for path in sorted(folder.glob(SHARD_GLOB)):
            checked += 1
            try:
                reason = verify_shard(path, fp)
            except UsageError as exc:  # another encoder's shard
                reason = str(exc)[:300]
            if reason:
                broken.append({"file": str(path), "reason": reason})
        problem = _index_problem(folder)
        if problem:
            broken.append({"file": str(folder / INDEX_NAME), "reason": problem})
    return {"cache_dir": str(root), "shards": checked, "broken": broken}


def _select(root: Path, fingerprint: str | None) -> list[Path]:
    folders = fingerprint_folders(root)
    if fingerprint is None:
        return folders
    chosen = [f for f in folders if f.name == fingerprint]
    if not chosen:
        have = ", ".join(f.name for f in folders) or "none"
        raise UsageError(f"feature cache {root} has no fingerprint folder {fingerprint!r} (it has: {have}); "
                         "see `cache info`")
    return chosen


def prune_cache(root: Path, fingerprint: str | None = None, unused_since_days: float | None = None,
                keep: int | None = None, dry_run: bool = False, now: float | None = None) -> dict[str, Any]:
    """Remove the fingerprint folders that match every criterion given (at least one): `fingerprint`, not used
    (read or written) for `unused_since_days`, not among the `keep` most recently used.

    Every folder to remove is locked first; one held lock -> LockHeldError naming its holder, nothing removed.
    Returns {"cache_dir", "dry_run", "removed": [folder info], "kept": [fingerprint], "bytes_freed"}.
    """
    if fingerprint is None and unused_since_days is None and keep is None:
        raise UsageError("cache prune: say what to remove: --fingerprint FP, --unused-since DAYS and/or --keep N "
                         "(with --dry-run to see it first)")
    if (keep is not None and keep < 0) or (unused_since_days is not None and unused_since_days < 0):
        raise UsageError("cache prune: --keep and --unused-since take numbers >= 0")
    if (root / "fingerprint.json").exists():
        raise UsageError(f"{root} is one fingerprint folder; point --cache-dir at the cache root that holds it")
    infos = sorted((folder_info(f) for f in _select(root, fingerprint) if not f.is_symlink()),
                   key=lambda i: -(i["last_used"] or 0))
    if keep is not None:  # ranked among every folder, not only the selected ones
        ranked = sorted((folder_info(f) for f in fingerprint_folders(root)), key=lambda i: -(i["last_used"] or 0))
        kept_names = {i["fingerprint"] for i in ranked[:keep]}
        infos = [i for i in infos if i["fingerprint"] not in kept_names]
    if unused_since_days is not None:
        cutoff = (time.time() if now is None else now) - unused_since_days * 86400
        infos = [i for i in infos if (i["last_used"] or 0) < cutoff]
    gone = {i["fingerprint"] for i in infos}
    result = {"cache_dir": str(root), "dry_run": dry_run, "removed": [_readable(i) for i in infos],
              "kept": [f.name for f in fingerprint_folders(root) if f.name not in gone],
              "bytes_freed": sum(i["bytes"] for i in infos)}
    if not dry_run and infos:
        _remove([Path(i["path"]) for i in infos], root)
    return result


def _remove(folders: list[Path], root: Path) -> None:
    locks: list[FileLock] = []
    try:
        for folder in folders:
            locks.append(FileLock(folder, "extract-features run or cache prune").acquire())
    except LockHeldError:
        for lock in locks:
            lock.release()
        raise
    remove_stale_temps(root)  # what a killed prune left (dead runs' temps only)
    memo = StampMemo(root)
    for folder, lock in zip(folders, locks):
        aside = root / f".{folder.name}{_PRUNING.format(pid=os.getpid())}"
        try:
            os.replace(folder, aside)  # readers stop seeing it at once; a kill here leaves a stale temp
        finally:
            lock.release()
        shutil.rmtree(aside)
        memo.set_verified(folder, {})
    memo.save()


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def info_table(data: dict[str, Any]) -> str:
    """`cache info` as a table: one row per fingerprint folder, most recently used first, then the total."""
    head = ("fingerprint", "images", "bytes", "shards", "last written", "last read", "encoder")
    rows = [(f["fingerprint"], "?" if f["images"] is None else str(f["images"]), _size(f["bytes"]), str(f["shards"]),
             (f["last_written"] or "-")[:19], (f["last_read"] or "never")[:19],
             (f["encoder"] or "?") + (f"  [problem: {f['problem']}]" if f["problem"] else ""))
            for f in data["folders"]]
    widths = [max(len(r[i]) for r in [head] + rows) for i in range(len(head) - 1)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r[:-1], widths)) + "  " + r[-1] for r in [head] + rows]
    lines.append(f"{len(rows)} fingerprint folder(s), {_size(data['bytes'])} under {data['cache_dir']}")
    return "\n".join(lines)


def prune_lines(result: dict[str, Any]) -> str:
    """`cache prune` output: each folder removed (or that would be), what is kept, the bytes freed."""
    verb = "would remove" if result["dry_run"] else "removed"
    lines = [f"{verb} {f['fingerprint']}  {_size(f['bytes'])}  last used {(f['last_used'] or 'never')[:19]}  "
             f"{f['encoder'] or '?'}" for f in result["removed"]]
    lines.append(f"kept: {', '.join(result['kept']) or 'nothing'}")
    lines.append(f"{verb} {len(result['removed'])} folder(s), {_size(result['bytes_freed'])}"
                 + (" freed" if not result["dry_run"] else " would be freed"))
    return "\n".join(lines)

"""Durable, link-safe files: atomic writes, atomic folder swaps, exclusive locks and content hashes.

Every file a stage creates goes through here: made with O_EXCL/O_NOFOLLOW (never through a planted link), fsynced
before it becomes visible under its final name, with the umask's permissions; a link where a stage's own file
belongs is a UsageError naming it.
"""
from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import shutil
import socket
import stat
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import IO, Iterator

from exit_codes import LockHeldError, UsageError

__all__ = ["atomic_file", "atomic_write_text", "atomic_write_bytes", "atomic_dir", "recover_dir", "FileLock",
           "LOCK_NAME", "ensure_dir", "refuse_link", "sha256_file", "fsync_path", "naming_path", "temp_path",
           "is_temp_name", "remove_stale_temps", "file_mode", "commit_temp", "file_stamp", "open_nofollow", "open_append",
           "disk_of", "is_no_space"]

LOCK_NAME = ".lock"
_TMP_TAG = ".tmp-"  # temp names: ".<final name>.tmp-<pid>-<random>"


def file_mode(directory: bool = False) -> int:
    """The permissions a plain `open()` / `mkdir()` would give under the current umask (0644 / 0755 by default)."""
    mask = os.umask(0)
    os.umask(mask)
    return (0o777 if directory else 0o666) & ~mask


def refuse_link(path: Path) -> None:
    """A symbolic link (or a non-regular file) where a stage writes its own file is a UsageError naming it."""
    if path.is_symlink():
        raise UsageError(f"{path} is a symbolic link where this stage writes its own file; remove the link "
                         "(nothing is ever written through it)")
    if path.exists() and not path.is_file():
        raise UsageError(f"{path} exists and is not a regular file; move it away and rerun")


def ensure_dir(path: str | os.PathLike, what: str = "output folder") -> Path:
    """Create `path` (and parents); an existing non-folder there is a UsageError naming it."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UsageError(f"{what} {path} is a file, not a folder; give a folder path")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError) as exc:
        raise UsageError(f"{what} {path}: a parent is a file, not a folder ({exc.filename})") from exc
    except PermissionError as exc:
        raise UsageError(f"{what} {path} cannot be created: permission denied") from exc
    return path


def fsync_path(path: str | os.PathLike, directory: bool = False) -> None:
    """fsync a file (never through a link), or (directory=True) a folder so that renames inside it survive a crash;
    a folder the user reached through a link is followed (an fsync writes nothing)."""
    fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if directory else os.O_NOFOLLOW))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def disk_of(path: str | os.PathLike) -> str:
    """"disk <mount point> (<free> MiB free)" of the file system that holds `path`, for an ENOSPC message."""
    p = Path(path).absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    try:
        dev = os.stat(p).st_dev
        while p != p.parent and os.stat(p.parent).st_dev == dev:
            p = p.parent
        return f"disk {p} ({shutil.disk_usage(p).free / 2**20:.1f} MiB free)"
    except OSError:
        return f"the disk of {path}"


_NO_SPACE = "No space left on device, disk"


def is_no_space(exc: BaseException) -> bool:
    """Whether `exc` is a full disk (HDF5 reports it in its message, without errno)."""
    return isinstance(exc, OSError) and (exc.errno in (errno.ENOSPC, errno.EDQUOT) or "No space left" in str(exc)
                                         or "errno = 28," in str(exc))


@contextmanager
def naming_path(path: str | os.PathLike) -> Iterator[None]:
    """Re-raise an OSError that names no file (ENOSPC from write/fsync, HDF5's write errors) with `path`, and a full
    disk as one line naming the path and its disk, so the user knows where and what to free."""
    try:
        yield
    except OSError as exc:
        if is_no_space(exc) and not str(exc.strerror).startswith(_NO_SPACE):
            raise OSError(errno.ENOSPC, f"No space left on device, {disk_of(path)}, while writing; free space there (or "
                                        "write to another disk) and rerun", str(path)) from None
        if exc.filename:
            raise
        reason = os.strerror(exc.errno) if exc.errno else str(exc)
        raise OSError(exc.errno, f"{reason} (while writing; free space and rerun)", str(path)) from exc


def is_temp_name(name: str) -> bool:
    """Whether `name` is an unfinished temp file of this module (hidden: readers skip names starting with '.')."""
    return name.startswith(".") and _TMP_TAG in name


def temp_path(final: Path) -> Path:
    """Create (O_EXCL, mode 0600 until committed) a fresh hidden temp file beside `final` and return its path."""
    fd, tmp = tempfile.mkstemp(prefix=f".{final.name}{_TMP_TAG}{os.getpid()}-", dir=final.parent)
    os.close(fd)
    return Path(tmp)


def commit_temp(tmp: Path, final: Path) -> None:
    """fsync `tmp`, give it the umask's mode and rename it over `final` (never following a link there)."""
    refuse_link(final)
    with naming_path(final):
        os.chmod(tmp, file_mode())
        fsync_path(tmp)
        os.replace(tmp, final)
        fsync_path(final.parent, directory=True)


def open_nofollow(path: str, flags: int) -> int:
    """`open(..., opener=open_nofollow)`: never follows a symbolic link at the last path component."""
    return os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC, file_mode())


def open_append(path: str | os.PathLike, encoding: str = "utf-8") -> IO:
    """A text file opened for appending (a log), created if missing, never through a link or into a non-file."""
    path = Path(path)
    ensure_dir(path.parent)
    refuse_link(path)
    try:
        fh = open(path, "a", encoding=encoding, opener=lambda p, f: open_nofollow(p, f | os.O_NONBLOCK))
    except OSError as exc:  # a link planted between the check and the open
        raise UsageError(f"{path}: cannot open for appending ({exc.strerror}); it must be a regular file, "
                         "not a link") from exc
    if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):
        fh.close()
        raise UsageError(f"{path} is not a regular file; move it away and rerun")
    return fh


@contextmanager
def atomic_file(path: str | os.PathLike, mode: str = "wb", encoding: str | None = None) -> Iterator[IO]:
    """Yield a file object on a fresh temp sibling of `path`; on success it replaces `path` whole.

    On an exception the temp file is removed and `path` keeps its previous content.
    """
    final = Path(path)
    ensure_dir(final.parent)
    refuse_link(final)
    with naming_path(final):  # outermost: a full disk is reported after the temp file is gone
        tmp = temp_path(final)
        try:
            with open(tmp, mode, encoding=encoding, newline="" if "b" not in mode else None,
                      opener=open_nofollow) as fh:
                yield fh
                fh.flush()
            commit_temp(tmp, final)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_file(path, "wb") as fh:
        fh.write(data)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write `text` (UTF-8) to a temp sibling, fsync it, then rename it over `path`."""
    atomic_write_bytes(path, text.encode("utf-8"))


def remove_stale_temps(folder: Path, prefix: str = "") -> int:
    """Delete temp files/folders `.<prefix>*.tmp-<pid>-*` of processes that are gone; returns how many."""
    removed = 0
    for stale in folder.glob(f".{prefix}*{_TMP_TAG}*"):
        pid = stale.name.split(_TMP_TAG, 1)[1].split("-", 1)[0]
        if pid.isdigit() and int(pid) != os.getpid() and not _pid_alive(int(pid)):
            if stale.is_dir() and not stale.is_symlink():
                shutil.rmtree(stale, ignore_errors=True)
            else:
                stale.unlink(missing_ok=True)
            removed += 1
    return removed


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def recover_dir(path: Path) -> None:
    """Finish an interrupted `atomic_dir` swap: bring back `<path>.old` when `path` is missing; drop dead temps."""
    old = path.with_name(path.name + ".old")
    if old.is_symlink():
        raise UsageError(f"{old} is a symbolic link where this stage keeps its previous folder; remove it")
    if old.exists() and not path.exists():
        old.rename(path)
    elif old.exists():
        shutil.rmtree(old)
    remove_stale_temps(path.parent, path.name)


@contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a fresh temporary sibling folder to fill; on success it replaces `path` in two renames.

    A crash leaves either the previous folder (possibly as `<path>.old`, see `recover_dir`) or the new one.
    """
    path = Path(path)
    ensure_dir(path.parent)
    if path.is_symlink() or (path.exists() and not path.is_dir()):
        raise UsageError(f"{path} is a symbolic link or a file where this stage writes its own folder; remove it")
    recover_dir(path)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}{_TMP_TAG}{os.getpid()}-", dir=path.parent))
    try:
        yield tmp
        os.chmod(tmp, file_mode(directory=True))
        for f in tmp.iterdir():
            if f.is_file() and not f.is_symlink():
                os.chmod(f, file_mode())
                fsync_path(f)
        old = path.with_name(path.name + ".old")
        if path.exists():
            path.rename(old)
        tmp.rename(path)
        fsync_path(path.parent, directory=True)
        if old.exists():
            shutil.rmtree(old)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def file_stamp(st: os.stat_result) -> list[int]:
    """What changes whenever a file is written or replaced: size, mtime, ctime and inode (ctime and inode cannot be
    set back by a user), so a result remembered under an unchanged stamp still holds."""
    return [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> tuple[str, int]:
    """(hex sha256 of the file's bytes, bytes hashed), read in chunks."""
    digest, size = hashlib.sha256(), 0
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
            size += len(block)
    return digest.hexdigest(), size


class FileLock:
    """Exclusive, non-blocking `fcntl.flock` on `folder/.lock`: `with FileLock(out_dir, "tag-corpus run"): ...`.

    A second holder gets LockHeldError (exit 3) naming the first one's pid, host and start time; the kernel drops
    the lock when the holder exits or is killed, so none goes stale. A link or non-file at `.lock` is a UsageError.
    """

    def __init__(self, folder: str | os.PathLike, what: str = "run"):
        self.folder = Path(folder)
        self.path = self.folder / LOCK_NAME
        self.what = what
        self._fd: int | None = None

    def acquire(self) -> "FileLock":
        ensure_dir(self.folder)
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK,
                         file_mode())
        except OSError as exc:
            if self.path.is_symlink():
                raise UsageError(f"{self.path} is a symbolic link where this stage keeps its lock; remove it "
                                 "(nothing is ever written through it)") from exc
            raise UsageError(f"{self.path}: cannot open the lock file ({exc.strerror}); fix its permissions") from exc
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise UsageError(f"{self.path} is not a regular file; move it away and rerun")
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = self._describe(fd)
            os.close(fd)
            raise LockHeldError(f"{self.folder} is locked by another {self.what} ({holder}); wait for it to "
                                "finish or use another folder") from None
        info = {"pid": os.getpid(), "host": socket.gethostname(),
                "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "what": self.what}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(info) + "\n").encode(), 0)
        self._fd = fd
        return self

    @staticmethod
    def _describe(fd: int) -> str:
        try:
            info = json.loads(os.pread(fd, 4096, 0).decode() or "{}")
            return f"pid {info['pid']} on {info['host']}, started {info['started']}"
        except (ValueError, KeyError, OSError, TypeError):
            return "holder unknown: it has not written its details yet"

    def release(self) -> None:
        if self._fd is not None:
            try:
                os.ftruncate(self._fd, 0)
                fcntl.flock(self._fd, fcntl.LOCK_UN)
            finally:
                os.close(self._fd)
                self._fd = None

    def __enter__(self) -> "FileLock":
        return self.acquire()

    def __exit__(self, exc_type: type | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.release()

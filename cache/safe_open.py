"""Opening feature-cache HDF5 files as untrusted input: nothing in a cache file may point outside it or declare more
than it stores.

Every shard and `index.h5` is opened here: regular files only (no link, FIFO or device), every object a hard link to
a plain dataset (no soft/external link, virtual dataset or external raw storage), only the filters the writer uses,
declared sizes backed by stored bytes, and the shapes and dtypes the fingerprint's spec fixes -- all checked before
any data is read. A refused file raises `DamagedCacheError`, the path a corrupt shard takes.
"""
from __future__ import annotations

import math
import os
import stat
from pathlib import Path
from typing import Any

import h5py
import numpy as np
from h5py import h5d, h5z

from cache.format import check_fingerprint, feature_shapes, spec_of
from rpihmif.errors import DamagedCacheError

__all__ = ["open_checked", "open_shard", "check_index_layout", "STRING_TABLES"]

STRING_TABLES = ("alias_source", "alias_id", "alias_key", "rejects")
_LAYOUTS = {h5d.COMPACT, h5d.CONTIGUOUS, h5d.CHUNKED}  # never h5d.VIRTUAL (data in other files)
_FILTERS = {h5z.FILTER_FLETCHER32}  # the only filter the writer applies (no plugin is ever loaded)
_FLOATS = {np.dtype("float16"), np.dtype("float32")}
ANY_LENGTH = (-1,)  # `_expect` shape of a 1-D dataset of any length


def open_checked(path: Path) -> h5py.File:
    """`path` opened read-only after the kind and layout of every object in it passed (DamagedCacheError if not)."""
    try:
        st = os.lstat(path)
    except OSError as exc:
        raise DamagedCacheError(path, exc) from exc
    if not stat.S_ISREG(st.st_mode):  # a FIFO would block the open; a link would read another file
        raise DamagedCacheError(path, "not a regular file (a link, FIFO or device where a cache file belongs)")
    try:
        f = h5py.File(path, "r")
    except (OSError, ValueError, RuntimeError) as exc:
        raise DamagedCacheError(path, exc) from exc
    try:
        opened = os.fstat(f.id.get_vfd_handle())
        if (opened.st_dev, opened.st_ino) != (st.st_dev, st.st_ino):
            raise DamagedCacheError(path, "replaced while it was being opened")
        _check_group(f, path, st.st_size)
    except BaseException:
        f.close()
        raise
    return f


def _check_group(group: h5py.Group, path: Path, file_size: int) -> None:
    for name in group:  # listing names resolves no link
        link = group.get(name, getlink=True)
        if not isinstance(link, h5py.HardLink):
            raise DamagedCacheError(path, f"{group.name.rstrip('/')}/{name} is a {type(link).__name__} "
                                          "(points outside the file); cache files hold their own data only")
        obj = group[name]
        if isinstance(obj, h5py.Group):
            _check_group(obj, path, file_size)
        elif isinstance(obj, h5py.Dataset):
            _check_dataset(obj, path, file_size)
        else:
            raise DamagedCacheError(path, f"{obj.name} is a {type(obj).__name__}, not a dataset")


def _check_dataset(d: h5py.Dataset, path: Path, file_size: int) -> None:
    plist = d.id.get_create_plist()
    where = f"dataset {d.name!r}"
    if d.is_virtual or plist.get_layout() not in _LAYOUTS:
        raise DamagedCacheError(path, f"{where} is virtual (its data lives in other files)")
    if plist.get_external_count():
        raise DamagedCacheError(path, f"{where} keeps its data in external raw files")
    for i in range(plist.get_nfilters()):
        code = plist.get_filter(i)[0]
        if code not in _FILTERS:
            raise DamagedCacheError(path, f"{where} uses HDF5 filter {code}, which the cache writer never applies")
    dt = d.dtype
    if dt.fields is not None or h5py.check_dtype(ref=dt) is not None or (
            dt.kind == "O" and h5py.check_string_dtype(dt) is None):
        raise DamagedCacheError(path, f"{where} has dtype {dt}, which no cache dataset has")
    declared = math.prod(d.shape or ()) * d.id.get_type().get_size()
    stored = d.id.get_storage_size()
    if declared > stored or stored > file_size:  # huge shapes in a tiny (chunked, unallocated) file
        raise DamagedCacheError(path, f"{where} declares shape {d.shape} ({declared} bytes) but stores {stored} "
                                      f"bytes in a file of {file_size}")


def _expect(f: h5py.File, path: Path, name: str, shape: tuple[int, ...], kinds: set[np.dtype] | str) -> h5py.Dataset:
    d = f.get(name)
    if not isinstance(d, h5py.Dataset):
        raise DamagedCacheError(path, f"dataset {name!r} is missing" if d is None else f"{name!r} is not a dataset")
    ok = h5py.check_string_dtype(d.dtype) is not None if kinds == "str" else d.dtype in kinds
    if not ok:
        raise DamagedCacheError(path, f"dataset {name!r} has dtype {d.dtype}, expected {kinds}")
    if (d.ndim != 1) if shape == ANY_LENGTH else tuple(d.shape) != shape:
        raise DamagedCacheError(path, f"dataset {name!r} has shape {d.shape}, expected {shape}")
    return d


def _check_tables(f: h5py.File, path: Path) -> None:
    n = {name: _expect(f, path, name, ANY_LENGTH, "str").shape[0] for name in STRING_TABLES}
    if len({n["alias_source"], n["alias_id"], n["alias_key"]}) != 1:
        raise DamagedCacheError(path, f"alias tables differ in length ({n})")


def open_shard(path: Path, fingerprint: dict[str, Any]) -> h5py.File:
    """A shard of `fingerprint`'s folder, opened by `open_checked` and matched to the spec's shapes and dtypes.

    Another encoder's shard raises UsageError (as `check_fingerprint`), anything malformed DamagedCacheError.
    """
    f = open_checked(path)
    try:
        check_fingerprint(f.attrs, path, fingerprint)
        try:
            rows = int(f.attrs["rows"])
        except (KeyError, TypeError, ValueError) as exc:
            raise DamagedCacheError(path, f"attribute 'rows' missing or not a number ({exc})") from exc
        _expect(f, path, "keys", (rows,), {np.dtype("S64")})
        for name, row_shape in feature_shapes(spec_of(fingerprint)).items():
            kinds = {np.dtype(bool)} if name.endswith("_mask") else _FLOATS
            _expect(f, path, name, (rows,) + row_shape, kinds)
        _check_tables(f, path)
    except BaseException:
        f.close()
        raise
    return f


def check_index_layout(f: h5py.File, path: Path, shards: int) -> None:
    """DamagedCacheError unless index.h5 holds (K,) key S64, key_shard and key_row ints with shards in range."""
    k = _expect(f, path, "key", ANY_LENGTH, {np.dtype("S64")}).shape[0]
    ints = {np.dtype("int32"), np.dtype("int64")}
    shard_of = _expect(f, path, "key_shard", (k,), ints)[()]
    row_of = _expect(f, path, "key_row", (k,), ints)[()]
    _check_tables(f, path)
    if k and (shard_of.min() < 0 or shard_of.max() >= shards):
        raise DamagedCacheError(path, f"key_shard values {shard_of.min()}..{shard_of.max()} outside the "
                                      f"{shards} shard(s) it names")
    if k and row_of.min() < 0:
        raise DamagedCacheError(path, "negative key_row values")

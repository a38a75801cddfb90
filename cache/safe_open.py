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
from h5py import h5d, h5g, h5l, h5o, h5z

from cache.format import check_fingerprint, feature_shapes, spec_of
from exit_codes import DamagedCacheError

__all__ = ["open_checked", "open_shard", "open_index", "STRING_TABLES"]

STRING_TABLES = ("alias_source", "alias_id", "alias_key", "rejects")
_LAYOUTS = {h5d.COMPACT, h5d.CONTIGUOUS, h5d.CHUNKED}  # never h5d.VIRTUAL (data in other files)
_FILTERS = {h5z.FILTER_FLETCHER32}  # the only filter the writer applies (no plugin is ever loaded)
_FLOATS = {np.dtype("float16"), np.dtype("float32")}
ANY_LENGTH = (-1,)  # `_expect` shape of a 1-D dataset of any length


Layout = dict[str, tuple[tuple[int, ...], np.dtype]]  # dataset path -> (shape, dtype), as checked


def open_checked(path: Path) -> h5py.File:
    """`path` opened read-only after the kind and layout of every object in it passed (DamagedCacheError if not)."""
    return _open(path)[0]


def _open(path: Path, strict: bool = False) -> tuple[h5py.File, Layout]:
    """(file, layout) after every check; `strict` also demands every declared byte be allocated (verify)."""
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
        layout: Layout = {}
        total = _check_group(h5g.open(f.id, b"/"), "", path, st.st_size, layout, strict)
        if total > st.st_size:  # every dataset's bytes live in this file (no filter compresses)
            raise DamagedCacheError(path, f"its datasets declare {total} bytes in a file of {st.st_size}")
    except BaseException:
        f.close()
        raise
    return f, layout


def _check_group(gid: Any, prefix: str, path: Path, file_size: int, layout: Layout, strict: bool) -> int:
    """Every link of group `gid` hard, every object a checked dataset (or a group, checked the same way); returns
    the bytes its datasets declare."""
    total = 0
    for raw in gid:  # low-level: names only, no link is resolved
        name = prefix + raw.decode("utf-8", "replace")
        kind = gid.links.get_info(raw).type
        if kind != h5l.TYPE_HARD:
            what = {h5l.TYPE_SOFT: "SoftLink", h5l.TYPE_EXTERNAL: "ExternalLink"}.get(kind, f"link of type {kind}")
            raise DamagedCacheError(path, f"{name} is a {what} (points outside the file); cache files hold their own "
                                          "data only")
        otype = h5o.get_info(gid, raw).type
        if otype == h5o.TYPE_GROUP:
            total += _check_group(h5g.open(gid, raw), name + "/", path, file_size, layout, strict)
        elif otype == h5o.TYPE_DATASET:
            shape, dt, declared = _check_dataset(h5d.open(gid, raw), name, path, file_size, strict)
            layout[name] = shape, dt
            total += declared
        else:
            raise DamagedCacheError(path, f"{name} is an HDF5 object of type {otype}, not a dataset")
    return total


def _check_dataset(dsid: Any, name: str, path: Path, file_size: int,
                   strict: bool) -> tuple[tuple[int, ...], np.dtype, int]:
    """(shape, dtype, bytes declared) of a dataset stored in this file, with no filter the writer never applies."""
    plist = dsid.get_create_plist()
    where = f"dataset {name!r}"
    if plist.get_layout() not in _LAYOUTS:
        raise DamagedCacheError(path, f"{where} is virtual (its data lives in other files)")
    if plist.get_external_count():
        raise DamagedCacheError(path, f"{where} keeps its data in external raw files")
    for i in range(plist.get_nfilters()):
        code = plist.get_filter(i)[0]
        if code not in _FILTERS:
            raise DamagedCacheError(path, f"{where} uses HDF5 filter {code}, which the cache writer never applies")
    dt, shape = dsid.dtype, tuple(dsid.shape or ())
    if dt.fields is not None or h5py.check_dtype(ref=dt) is not None or (
            dt.kind == "O" and h5py.check_string_dtype(dt) is None):
        raise DamagedCacheError(path, f"{where} has dtype {dt}, which no cache dataset has")
    declared = math.prod(shape) * dsid.get_type().get_size()
    stored = dsid.get_storage_size() if strict else declared  # (walks every chunk: verify only)
    if declared > stored or declared > file_size:  # huge shapes in a tiny (chunked, unallocated) file
        raise DamagedCacheError(path, f"{where} declares shape {shape} ({declared} bytes) but "
                                      + (f"stores {stored}" if declared > stored else f"the file has {file_size}"))
    return shape, dt, declared


def _expect(layout: Layout, path: Path, name: str, shape: tuple[int, ...], kinds: set[np.dtype] | str) -> int:
    """Rows of dataset `name` after its shape and dtype matched (ANY_LENGTH: any 1-D); DamagedCacheError if not."""
    if name not in layout:
        raise DamagedCacheError(path, f"dataset {name!r} is missing")
    got, dt = layout[name]
    ok = h5py.check_string_dtype(dt) is not None if kinds == "str" else dt in kinds
    if not ok:
        raise DamagedCacheError(path, f"dataset {name!r} has dtype {dt}, expected {kinds}")
    if (len(got) != 1) if shape == ANY_LENGTH else got != shape:
        raise DamagedCacheError(path, f"dataset {name!r} has shape {got}, expected {shape}")
    return got[0] if got else 0


def _check_tables(layout: Layout, path: Path) -> None:
    n = {name: _expect(layout, path, name, ANY_LENGTH, "str") for name in STRING_TABLES}
    if len({n["alias_source"], n["alias_id"], n["alias_key"]}) != 1:
        raise DamagedCacheError(path, f"alias tables differ in length ({n})")


def open_shard(path: Path, fingerprint: dict[str, Any], strict: bool = False) -> h5py.File:
    """A shard of `fingerprint`'s folder, opened by `open_checked` and matched to the spec's shapes and dtypes.

    Another encoder's shard raises UsageError (as `check_fingerprint`), anything malformed DamagedCacheError;
    `strict` (verify) also refuses declared data that was never written.
    """
    f, layout = _open(path, strict)
    try:
        check_fingerprint(f.attrs, path, fingerprint)
        try:
            rows = int(f.attrs["rows"])
        except (KeyError, TypeError, ValueError) as exc:
            raise DamagedCacheError(path, f"attribute 'rows' missing or not a number ({exc})") from exc
        _expect(layout, path, "keys", (rows,), {np.dtype("S64")})
        for name, row_shape in feature_shapes(spec_of(fingerprint)).items():
            kinds = {np.dtype(bool)} if name.endswith("_mask") else _FLOATS
            _expect(layout, path, name, (rows,) + row_shape, kinds)
        _check_tables(layout, path)
    except BaseException:
        f.close()
        raise
    return f


def open_index(path: Path, strict: bool = False) -> h5py.File:
    """index.h5 opened as `open_checked`, holding (S,) shards, (K,) key S64 and int key_shard/key_row with every
    key_shard naming one of its shards and no negative row; DamagedCacheError otherwise."""
    f, layout = _open(path, strict)
    try:
        shards = _expect(layout, path, "shards", ANY_LENGTH, "str")
        k = _expect(layout, path, "key", ANY_LENGTH, {np.dtype("S64")})
        ints = {np.dtype("int32"), np.dtype("int64")}
        _expect(layout, path, "key_shard", (k,), ints)
        _expect(layout, path, "key_row", (k,), ints)
        _check_tables(layout, path)
        shard_of, row_of = f["key_shard"][()], f["key_row"][()]
        if k and (shard_of.min() < 0 or shard_of.max() >= shards):
            raise DamagedCacheError(path, f"key_shard values {shard_of.min()}..{shard_of.max()} outside the "
                                          f"{shards} shard(s) it names")
        if k and row_of.min() < 0:
            raise DamagedCacheError(path, "negative key_row values")
    except BaseException:
        f.close()
        raise
    return f

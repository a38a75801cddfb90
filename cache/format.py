"""On-disk format of the HDF5 feature cache: names, fingerprint checks and the alias/reject tables of a file.

Shared by the reader (`cache.reader`), the index (`cache.index`), the writer (`cache.writer`), the checks of
`cache.safe_open` and `cache.integrity`, and the `cache` command (`cache.manage`).

Layout of `<cache_dir>/<fingerprint id>/`:
  fingerprint.json        the encoder fingerprint (id, hashed part, readable info) -- written once, checked on every read
  shard-<ns>-<pid>-<n>.h5  finished shards; each holds rows of features, the aliases and rejects it committed, and the
                          fingerprint as an attribute. A shard is visible only after its rename, so readers never see
                          half a shard; the aliases of a key are always in the key's shard or a later one.
  index.h5                a rebuildable summary of the shards it names (keys -> shard/row, aliases, rejects); shards
                          it does not name are scanned directly, so a lost or stale index is only slower, never wrong.
  rejects.jsonl           one line per rejected image or crop with its reason (regenerated from the shards)
  .lock                   held by the single writer run and by `cache prune` (a second one exits 3)
  .last_read              touched by readers (at most once per process; never in a read-only cache)
Beside the folders, `<cache_dir>/.extract_memo.json` (cache.memo) remembers file stamps: input hashes, encoder
fingerprints and verified shards.
Shard datasets: keys (N,) S64; orig (N, Lo, Dv); orig_mask (N,); grounding (N, K, Lg, Dv); grounding_mask (N, K);
rcnn (N, K, Lr, Dv); rcnn_mask (N, K); alias_source/alias_id/alias_key (M,) str ("" key = no image); rejects (R,) JSON str.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Iterable

import h5py
import numpy as np

from exit_codes import UsageError
from rpihmif.visual import VisualLayout

__all__ = ["FORMAT_VERSION", "FEATURE_NAMES", "NO_IMAGE", "DUMP_SOURCE", "SHARD_GLOB", "feature_shapes", "canonical", "describe",
           "spec_of", "read_fingerprint", "check_fingerprint", "decode_strings", "memory_file", "save_memory_file",
           "write_strings", "read_strings", "write_alias_tables", "read_alias_tables"]

FORMAT_VERSION = 1
FEATURE_NAMES = ("orig", "orig_mask", "grounding", "grounding_mask", "rcnn", "rcnn_mask")
NO_IMAGE = ""  # alias value of a tweet whose image is missing or rejected
DUMP_SOURCE = "dump"  # alias source of dump images: ("dump", image path as written in the record)
SHARD_GLOB = "shard-*.h5"
_STR = h5py.string_dtype("utf-8")


def feature_shapes(spec: VisualLayout) -> dict[str, tuple[int, ...]]:
    """Per-key shape of each FEATURE_NAMES array (no leading N axis); "*_mask" arrays are bool, the rest float."""
    k = spec.max_crops
    return {"orig": (spec.orig_tokens, spec.dim), "orig_mask": (),
            "grounding": (k, spec.grounding_tokens, spec.dim), "grounding_mask": (k,),
            "rcnn": (k, spec.rcnn_tokens, spec.dim), "rcnn_mask": (k,)}


# ---- fingerprints ------------------------------------------------------------------------------------------------
def canonical(fingerprint: dict[str, Any]) -> str:
    """The part of a fingerprint that must match, as a canonical JSON string."""
    return json.dumps({"id": fingerprint["id"], "hashed": fingerprint["hashed"]}, sort_keys=True, separators=(",", ":"))


def describe(fingerprint: dict[str, Any]) -> str:
    """One readable line: id, encoder, sizes, dtype and the start of the weights hash."""
    info = fingerprint.get("info", {})
    h = fingerprint.get("hashed", {})
    return (f"{fingerprint.get('id')} [{info.get('encoder', '?')}; sizes {h.get('image_size')}/{h.get('aux_size')}/"
            f"{h.get('rcnn_size')}; {h.get('dtype')}; weights {str(h.get('weights_sha256', '?'))[:12]}]")


# sane upper bounds of a spec (ViT-G/14 at 336 px has 577 tokens of 1664): a fingerprint.json beyond them is damage
SPEC_LIMITS = {"dim": 16384, "orig_tokens": 4096, "grounding_tokens": 4096, "rcnn_tokens": 4096, "max_crops": 16}


def spec_of(fingerprint: dict[str, Any]) -> VisualLayout:
    """The token layout of a fingerprint; ValueError unless every field is an int within SPEC_LIMITS."""
    spec = fingerprint["info"]["spec"]
    if not isinstance(spec, dict) or set(spec) != set(SPEC_LIMITS):
        raise ValueError(f"spec must have exactly the fields {sorted(SPEC_LIMITS)}")
    for name, top in SPEC_LIMITS.items():
        value = spec[name]
        if type(value) is not int or not (0 if name == "max_crops" else 1) <= value <= top:
            raise ValueError(f"spec {name} = {str(value)[:40]} is outside 1..{top}")
    return VisualLayout(**spec)


def read_fingerprint(folder: Path) -> dict[str, Any]:
    """`folder/fingerprint.json`; UsageError naming the folder to delete when it is unreadable or incomplete."""
    path = folder / "fingerprint.json"
    if path.is_symlink():
        raise UsageError(f"{path} is a symbolic link where the feature cache keeps its own file; remove the link "
                         "(nothing is ever written through it)")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        data["id"], data["hashed"].items  # noqa: B018 -- required fields
        spec_of(data)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise UsageError(f"{path}: unreadable feature-cache fingerprint ({exc}); delete the folder {folder} "
                         "and rerun extract-features") from exc
    return data


def check_fingerprint(attrs: Any, path: Path, fingerprint: dict[str, Any]) -> None:
    """UsageError unless the HDF5 file at `path` (its `attrs`) was written by the encoder of `fingerprint`."""
    found = attrs.get("fingerprint")
    found = found.decode() if isinstance(found, bytes) else found
    if found != canonical(fingerprint):
        try:
            full = attrs.get("fingerprint_full")
            other = json.loads(full.decode() if isinstance(full, bytes) else full or found)
            other.setdefault("info", {})
            desc = describe(other)
        except (TypeError, ValueError):
            desc = repr(found)[:200]
        raise UsageError(f"{path}: written by encoder {desc}, but this cache folder is for "
                         f"{describe(fingerprint)}; features of two encoders never mix: move {path.name} "
                         f"to its own cache folder or delete it and rerun extract-features")


# ---- files built in memory ---------------------------------------------------------------------------------------
_MEMORY_BLOCK = 8 << 20  # bytes the in-memory file grows by (few reallocations for a shard of ~90 MB)


def memory_file(label: str) -> h5py.File:
    """An HDF5 file held in memory (HDF5 itself never writes to disk, so a full disk cannot leave it half flushed)."""
    return h5py.File(label, "w", driver="core", backing_store=False, block_size=_MEMORY_BLOCK)


def save_memory_file(f: h5py.File, final: Path) -> None:
    """Write the image of `memory_file` f to `final` (temp + fsync + rename; a full disk is one OSError) and close f."""
    from cache.durable import atomic_write_bytes

    f.flush()
    image = f.id.get_file_image()
    f.close()
    atomic_write_bytes(final, image)


# ---- string tables -----------------------------------------------------------------------------------------------
def decode_strings(values: np.ndarray) -> list[str]:
    return [v.decode() if isinstance(v, bytes) else str(v) for v in values]


def _digest(values: list[str]) -> str:
    return hashlib.sha256(json.dumps(values, ensure_ascii=False).encode("utf-8", "surrogatepass")).hexdigest()


def write_strings(f: h5py.File, name: str, values: Iterable[str]) -> None:
    """A (N,) UTF-8 string dataset `name` in `f`, with the sha256 of its values as attribute (HDF5 filters, hence
    fletcher32, cannot apply to variable-length strings)."""
    values = list(values)
    f.create_dataset(name, data=np.array(values, dtype=object), dtype=_STR)
    f[name].attrs["sha256"] = _digest(values)


def read_strings(f: h5py.File, name: str) -> list[str]:
    """The values of a `write_strings` dataset; OSError when they no longer match their stored sha256."""
    values = decode_strings(f[name][()])
    want = f[name].attrs.get("sha256")
    if want is not None and _digest(values) != (want.decode() if isinstance(want, bytes) else want):
        raise OSError(f"dataset {name!r} fails its sha256 checksum (damaged)")
    return values


def write_alias_tables(f: h5py.File, aliases: list[tuple[str, str, str]], rejects: list[dict[str, Any]]) -> None:
    """Datasets alias_source/alias_id/alias_key (M,) from (source, image id, key) and rejects (R,) as JSON."""
    write_strings(f, "alias_source", (a[0] for a in aliases))
    write_strings(f, "alias_id", (a[1] for a in aliases))
    write_strings(f, "alias_key", (a[2] for a in aliases))
    write_strings(f, "rejects", (json.dumps(r, sort_keys=True) for r in rejects))


def read_alias_tables(f: h5py.File) -> tuple[list[tuple[str, str, str]], list[dict[str, Any]]]:
    """(aliases as (source, image id, key), reject records) of a shard or index file, in stored order."""
    aliases = list(zip(read_strings(f, "alias_source"), read_strings(f, "alias_id"), read_strings(f, "alias_key")))
    return aliases, [json.loads(r) for r in read_strings(f, "rejects")]

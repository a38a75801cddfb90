"""extract-features: run the frozen CLIP vision encoder once per distinct image (Ray actors) into the HDF5 cache.

Images come from a benchmark dataset and/or tweet dumps; bad images are rejected with a reason, never made up.
"""
from __future__ import annotations

import json
import logging
import re
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

from rpihmif.vision import (Preprocessor, VisionSettings, encode, encoder_fingerprint, load_vision_encoder,
                            visual_spec)

from .errors import InputError, UsageError
from .feature_cache import FEATURE_NAMES, CacheWriter, FeatureCache, fingerprint_folders
from .images import DEFAULT_MAX_PIXELS, decode_image, resolve_in_root, sha256_bytes, sha256_file
from .progress import is_terminal

__all__ = ["run_extract", "ClipFeaturizer", "featurize_images", "resolve_fingerprint", "DUMP_SOURCE"]

log = logging.getLogger("rpihmif.extract")

DUMP_SOURCE = "dump"  # alias source of dump images: ("dump", image path string as in the record)
_IMGID = re.compile(r"^\ufeff?IMGID:(.*)$")


# ---------------------------------------------------------------------------------------------------------------
# the model step: a callable class (one per Ray actor, or in-process)
# ---------------------------------------------------------------------------------------------------------------
class ClipFeaturizer:
    """Frozen CLIP encoder + CLIP preprocessing; loads once in `__init__`, featurizes a batch of paths in `__call__`.

    Works as a Ray actor and in-process (`vision: online` training, `workers: 0`).
    """

    def __init__(self, settings: dict[str, Any] | VisionSettings, max_image_pixels: int = DEFAULT_MAX_PIXELS,
                 device: str = "cpu", threads: int | None = None, expected_fingerprint: str | None = None):
        self.settings = settings if isinstance(settings, VisionSettings) else VisionSettings(**settings)
        if threads:
            torch.set_num_threads(threads)
        self.max_image_pixels = max_image_pixels
        self.device = torch.device(device)
        self.model = load_vision_encoder(self.settings).to(self.device)
        self.preprocess = Preprocessor.for_encoder(self.settings.vit_name)
        self.spec = visual_spec(self.model.config, self.settings)
        self.np_dtype = np.dtype(self.settings.dtype)
        self.forwards = 0  # images (originals + crops) run through the encoder, for tests and benchmarks
        if expected_fingerprint is not None:
            fp = encoder_fingerprint(self.model, self.settings, self.preprocess)
            if fp["id"] != expected_fingerprint:
                raise RuntimeError(f"worker encoder fingerprint {fp['id']} != driver's {expected_fingerprint}: the "
                                   "encoder differs between machines (vit_name folder or torch version); fix that first")

    @property
    def fingerprint(self) -> dict[str, Any]:
        return encoder_fingerprint(self.model, self.settings, self.preprocess)

    def _load(self, path: str, key: str, size: int) -> tuple[torch.Tensor | None, str | None]:
        """Read, verify the content key (when given), decode, preprocess -> (3, size, size) or (None, reason)."""
        try:
            data = Path(path).read_bytes()
        except FileNotFoundError:
            return None, "missing"
        except IsADirectoryError:
            return None, "not_a_file"
        except OSError:
            return None, "unreadable"
        if key and sha256_bytes(data) != key:
            return None, "changed"
        image, reason = decode_image(data, self.max_image_pixels, draft_size=size)
        if image is None:
            return None, reason
        return self.preprocess(image, size), None

    def _forward(self, pixels: list[torch.Tensor]) -> np.ndarray | None:
        if not pixels:
            return None
        # shape: (N, 3, S, S) -> (N, L, Dv)
        x = torch.stack(pixels).to(self.device)
        self.forwards += len(pixels)
        return encode(self.model, x).float().cpu().numpy().astype(self.np_dtype)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """batch: "key" (B,) sha256 hex or "", "path" (B,) resolved image paths, "grounding"/"rcnn" (B, K) resolved
        crop paths ("" = none). Returns "key", the FEATURE_NAMES arrays (B, ...), "reason" (B,) ("" = ok) and
        "grounding_reason"/"rcnn_reason" (B, K) per crop ("" = ok or none)."""
        keys = [str(k) for k in batch["key"]]
        b, k, s = len(keys), self.spec.max_crops, self.spec
        out: dict[str, np.ndarray] = {
            "key": np.array(keys, dtype=object),
            "orig": np.zeros((b, s.orig_tokens, s.dim), self.np_dtype), "orig_mask": np.zeros(b, bool),
            "grounding": np.zeros((b, k, s.grounding_tokens, s.dim), self.np_dtype),
            "grounding_mask": np.zeros((b, k), bool),
            "rcnn": np.zeros((b, k, s.rcnn_tokens, s.dim), self.np_dtype), "rcnn_mask": np.zeros((b, k), bool),
            "reason": np.full(b, "", dtype=object),
            "grounding_reason": np.full((b, k), "", dtype=object), "rcnn_reason": np.full((b, k), "", dtype=object),
        }
        with torch.inference_mode():
            orig, rows = [], []
            for i, (key, path) in enumerate(zip(keys, batch["path"])):
                x, reason = self._load(str(path), key, self.settings.image_size)
                if x is None:
                    out["reason"][i] = reason
                else:
                    orig.append(x)
                    rows.append(i)
            feats = self._forward(orig)
            if feats is not None:
                out["orig"][rows] = feats
                out["orig_mask"][rows] = True
            for kind, size in (("grounding", self.settings.aux_size), ("rcnn", self.settings.rcnn_size)):
                crops, slots = [], []
                paths = np.asarray(batch[kind], dtype=object).reshape(b, -1)
                for i in rows:  # crops only for images that are kept
                    slot = 0
                    for path in paths[i][:k]:
                        if not path:
                            continue
                        x, reason = self._load(str(path), "", size)
                        if x is None:
                            out[f"{kind}_reason"][i, slot] = f"{reason}\t{path}"
                            continue
                        crops.append(x)
                        slots.append((i, slot))
                        slot += 1
                feats = self._forward(crops)
                for j, (i, slot) in enumerate(slots):
                    out[kind][i, slot] = feats[j]
                    out[f"{kind}_mask"][i, slot] = True
        return out


def featurize_images(featurizer: ClipFeaturizer, orig_path: str | Path, grounding_paths: list[str | Path],
                     rcnn_paths: list[str | Path], root: str | Path) -> dict[str, np.ndarray] | None:
    """Features of one image and its crops, in-process (no Ray, no cache): None when the original is unusable.

    Paths are resolved inside `root`; an escaping, missing or bad crop is left out (its mask is False).
    """
    def safe(p: str | Path) -> str:
        try:
            return str(resolve_in_root(root, p))
        except InputError:
            return ""

    path = safe(orig_path)
    if not path:
        return None
    k = featurizer.spec.max_crops
    pad = lambda ps: ([safe(p) for p in ps] + [""] * k)[:k]  # noqa: E731
    out = featurizer({"key": np.array([""]), "path": np.array([path], dtype=object),
                      "grounding": np.array([pad(grounding_paths)], dtype=object),
                      "rcnn": np.array([pad(rcnn_paths)], dtype=object)})
    if out["reason"][0]:
        return None
    return {name: out[name][0] for name in FEATURE_NAMES}


# ---------------------------------------------------------------------------------------------------------------
# fingerprint (memoised so a rerun on a complete cache does not build the encoder)
# ---------------------------------------------------------------------------------------------------------------
def _source_signature(settings: VisionSettings) -> dict[str, Any]:
    """What identifies the encoder's weights without loading them: folder files (size, mtime) or random-init seed."""
    sig: dict[str, Any] = {"settings": settings.__dict__, "torch": torch.__version__}
    if settings.vit_name:
        folder = Path(settings.vit_name).resolve()
        sig["folder"] = str(folder)
        sig["files"] = sorted((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in folder.iterdir() if p.is_file()) \
            if folder.is_dir() else []
    else:
        import transformers
        sig["transformers"] = transformers.__version__
    return sig


def resolve_fingerprint(settings: VisionSettings, cache_dir: Path) -> dict[str, Any]:
    """The encoder fingerprint; memoised in `<cache_dir>/.fingerprints.json` by `_source_signature`."""
    memo_path = cache_dir / ".fingerprints.json"
    sig = json.dumps(_source_signature(settings), sort_keys=True)
    memo: dict[str, Any] = {}
    if memo_path.is_file():
        try:
            memo = json.loads(memo_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            memo = {}
    if sig in memo:
        return memo[sig]
    try:
        model = load_vision_encoder(settings)
    except (FileNotFoundError, OSError, ValueError) as exc:
        raise UsageError(f"vit_name {settings.vit_name!r}: cannot load a CLIP vision encoder ({exc}); give a local "
                         "folder saved with save_pretrained, or leave vit_name empty for the random-init encoder") from exc
    try:
        fp = encoder_fingerprint(model, settings, Preprocessor.for_encoder(settings.vit_name))
    except ValueError as exc:
        raise UsageError(str(exc)) from exc
    memo[sig] = fp
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = memo_path.with_name(f".fingerprints.json.{id(memo)}.tmp")
    tmp.write_text(json.dumps(memo, sort_keys=True), encoding="utf-8")
    tmp.replace(memo_path)
    return fp


# ---------------------------------------------------------------------------------------------------------------
# work items
# ---------------------------------------------------------------------------------------------------------------
@dataclass
class _Item:
    """One image reference (a tweet's image): where it is, its crops and the alias it is known by."""

    source: str
    image_id: str
    path: Path | None  # resolved; None when rejected before reading
    grounding: list[str] = field(default_factory=list)  # resolved existing crop paths
    rcnn: list[str] = field(default_factory=list)
    reason: str = ""  # reject reason of the original ("" = fine so far)
    key: str = ""


def _split_image_ids(path: Path) -> list[str]:
    """IMGIDs of a CoNLL split in file order (only the IMGID lines are read: labels do not matter here)."""
    ids: list[str] = []
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            m = _IMGID.match(line.rstrip("\r\n"))
            if m and m.group(1).strip():
                ids.append(m.group(1).strip())
    return ids


def _benchmark_items(config: dict[str, Any], crop_rejects: list[dict[str, Any]]) -> Iterator[_Item]:
    from .dataset import BenchmarkDataset, UnsafePathError

    ds = BenchmarkDataset(config["data_dir"], config["dataset"])
    k = config["max_crops"]
    present = ds.splits()
    if not ds.images_dir.is_dir():
        log.warning("%s: no images folder (%s): text-only dataset, no benchmark images to encode", ds.root,
                    ds.images_dir.name)
        return
    seen: set[str] = set()
    for split in config["splits"]:
        split = ds.canonical_split(split)
        if split not in present:
            log.info("%s: no %s split; skipped", ds.root, split)
            continue
        for image_id in _split_image_ids(ds.split_file(split)):
            alias = ds.image_name(image_id)
            if alias in seen:
                continue
            seen.add(alias)
            item = _Item(ds.name, alias, None)
            try:
                item.path = ds.image_path(image_id)
                if item.path is None:
                    item.reason = "missing"
            except UnsafePathError:
                item.reason = "unsafe_path"
            if not item.reason:
                for kind, entries in (("grounding", lambda: ds.grounding_entries(split, image_id)),
                                      ("rcnn", lambda: ds.rcnn_entries(image_id))):
                    try:
                        listed = entries()[:k]
                    except UnsafePathError as exc:
                        crop_rejects.append({"source": ds.name, "image_id": alias, "kind": kind, "path": "",
                                             "reason": "unsafe_path", "detail": str(exc)[:300]})
                        continue
                    for name, path in listed:
                        if path.is_file():
                            getattr(item, kind).append(str(path))
                        else:
                            crop_rejects.append({"source": ds.name, "image_id": alias, "kind": kind,
                                                 "path": str(name), "reason": "missing"})
            yield item


def _dump_items(config: dict[str, Any], dumps: list[Path], crop_rejects: list[dict[str, Any]],
                record_rejects: list[dict[str, Any]]) -> Iterator[_Item]:
    from .dump_reader import DumpFields, Reject, iter_dump

    dcfg = config["dump"]
    fields = DumpFields.from_config(dcfg)
    k = config["max_crops"]
    seen: set[str] = set()
    for dump in dumps:
        dump = Path(dump)
        if not dump.is_file():
            raise InputError(f"{dump}: dump file not found; pass existing JSONL(.gz) files with --dump")
        root = Path(dcfg["image_root"]) if dcfg["image_root"] else dump.resolve().parent
        for rec in iter_dump(dump, fields):
            if isinstance(rec, Reject):
                record_rejects.append({"source": DUMP_SOURCE, "kind": "record", "file": rec.file, "line": rec.line,
                                       "id": rec.id, "reason": rec.reason})
                continue
            if not rec.image or rec.image in seen:
                continue
            seen.add(rec.image)
            item = _Item(DUMP_SOURCE, rec.image, None)
            try:
                item.path = resolve_in_root(root, rec.image)
            except InputError:
                item.reason = "unsafe_path"
            if not item.reason:
                for kind, paths in (("grounding", rec.crops), ("rcnn", rec.rcnn)):
                    for p in paths[:k]:
                        try:
                            resolved = resolve_in_root(root, p)
                        except InputError:
                            crop_rejects.append({"source": DUMP_SOURCE, "image_id": rec.image, "kind": kind,
                                                 "path": p, "reason": "unsafe_path"})
                            continue
                        if resolved.is_file():
                            getattr(item, kind).append(str(resolved))
                        else:
                            crop_rejects.append({"source": DUMP_SOURCE, "image_id": rec.image, "kind": kind,
                                                 "path": p, "reason": "missing"})
            yield item


def _hash_items(items: list[_Item], threads: int = 4) -> None:
    """Fill `key` (sha256 of the file) or `reason` for each item; one hash per distinct path."""
    paths = sorted({str(it.path) for it in items if it.path is not None and not it.reason})

    def one(p: str) -> tuple[str, str]:
        path = Path(p)
        try:
            if not path.exists():
                return "", "missing"
            if not path.is_file():
                return "", "not_a_file"
            if path.stat().st_size == 0:
                return "", "empty"
            return sha256_file(path), ""
        except OSError:
            return "", "unreadable"

    with ThreadPoolExecutor(max_workers=threads) as pool:
        result = dict(zip(paths, pool.map(one, paths)))
    for it in items:
        if it.path is not None and not it.reason:
            it.key, it.reason = result[str(it.path)]


# ---------------------------------------------------------------------------------------------------------------
# running the encoder
# ---------------------------------------------------------------------------------------------------------------
def _batches(items: list[_Item], batch_size: int, k: int) -> Iterator[dict[str, np.ndarray]]:
    for start in range(0, len(items), batch_size):
        chunk = items[start:start + batch_size]
        pad = lambda ps: (ps + [""] * k)[:k]  # noqa: E731
        yield {"key": np.array([it.key for it in chunk], dtype=object),
               "path": np.array([str(it.path) for it in chunk], dtype=object),
               "grounding": np.array([pad(it.grounding) for it in chunk], dtype=object).reshape(len(chunk), k),
               "rcnn": np.array([pad(it.rcnn) for it in chunk], dtype=object).reshape(len(chunk), k)}


def _run_inprocess(featurizer_kwargs: dict[str, Any], batches: Iterator[dict[str, np.ndarray]]) -> Iterator[dict]:
    featurizer = ClipFeaturizer(**featurizer_kwargs)
    for batch in batches:
        yield featurizer(batch)


def _run_ray(featurizer_kwargs: dict[str, Any], batches: Iterator[dict[str, np.ndarray]], workers: int,
             num_gpus: float, in_flight: int = 2) -> Iterator[dict]:
    """Stream batches through `workers` actors, at most `in_flight` per actor: driver memory stays bounded."""
    import ray

    actor_cls = ray.remote(ClipFeaturizer).options(num_cpus=1, num_gpus=num_gpus)
    actors = [actor_cls.remote(**featurizer_kwargs) for _ in range(workers)]
    pending: dict[Any, Any] = {}
    it = iter(batches)
    exhausted = False

    def submit(actor: Any) -> bool:
        nonlocal exhausted
        if exhausted:
            return False
        batch = next(it, None)
        if batch is None:
            exhausted = True
            return False
        pending[actor.__call__.remote(batch)] = actor
        return True

    try:
        for _ in range(in_flight):
            for actor in actors:
                submit(actor)
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            actor = pending.pop(done[0])
            result = ray.get(done[0])
            submit(actor)
            yield result
    finally:
        for ref in pending:  # only on error or early close
            try:
                ray.cancel(ref)
            except Exception:  # noqa: BLE001 -- best effort; the actors are killed next
                pass
        for actor in actors:
            ray.kill(actor)


class _Progress:
    """Images/s: a tqdm bar on a terminal, a log line every `every_s` seconds otherwise."""

    def __init__(self, total: int, desc: str = "extract-features", every_s: float = 30.0):
        self.total, self.done, self.every_s = total, 0, every_s
        self.start = self.last = time.monotonic()
        self.bar = None
        if is_terminal():
            from tqdm import tqdm
            self.bar = tqdm(total=total, desc=desc, unit="img", dynamic_ncols=True)

    def update(self, n: int) -> None:
        self.done += n
        if self.bar is not None:
            self.bar.update(n)
            return
        now = time.monotonic()
        if now - self.last >= self.every_s:
            self.last = now
            log.info("extract-features: %d/%d images (%.1f img/s)", self.done, self.total,
                     self.done / max(now - self.start, 1e-9))

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


# ---------------------------------------------------------------------------------------------------------------
# the stage
# ---------------------------------------------------------------------------------------------------------------
def _reject_sig(record: dict[str, Any]) -> tuple:
    return tuple(str(record.get(f, "")) for f in ("kind", "source", "image_id", "path", "file", "line", "reason"))


def run_extract(config: dict[str, Any], dumps: list[Path] | None = None) -> dict[str, Any]:
    """Encode every distinct image of the dataset splits and dumps not yet in the cache; return a summary dict.

    config: conf/extract.yaml keys. dumps: JSONL(.gz) files (added to config["dump"]["files"]).
    """
    t0 = time.monotonic()
    try:
        settings = VisionSettings.from_config(config)
    except (TypeError, ValueError) as exc:
        raise UsageError(f"extract config: {exc}") from exc
    workers, address = int(config["workers"]), str(config.get("ray_address") or "")
    if workers < 0:
        raise UsageError(f"workers must be >= 0 (0 = in-process, no Ray), got {workers}")
    if config["batch_size"] < 1 or config["shard_size"] < 1:
        raise UsageError("batch_size and shard_size must be >= 1")
    from .runtime import resolve_device
    device = resolve_device(config.get("device", "auto"))
    cache_dir = Path(config["cache_dir"])
    dumps = [Path(p) for p in list(config["dump"]["files"]) + list(dumps or [])]
    if not config["dataset"] and not dumps:
        raise UsageError("nothing to extract: set dataset (with data_dir) or pass --dump files")

    fp = resolve_fingerprint(settings, cache_dir)
    log.info("encoder %s: %s", fp["id"], fp["info"]["encoder"])

    # 1. what the inputs reference
    crop_rejects: list[dict[str, Any]] = []
    record_rejects: list[dict[str, Any]] = []
    items: list[_Item] = []
    if config["dataset"]:
        items.extend(_benchmark_items(config, crop_rejects))
    if dumps:
        items.extend(_dump_items(config, dumps, crop_rejects, record_rejects))
    _hash_items(items)

    # 2. dedupe by content key, skip what the cache has
    folder = cache_dir / fp["id"]
    existing = FeatureCache(folder) if folder in fingerprint_folders(cache_dir) else None
    have_keys = existing.index.keys if existing else {}
    have_rejected = existing.index.rejected_keys if existing else {}
    have_aliases = existing.index.aliases if existing else {}
    have_rejects = {_reject_sig(r) for r in existing.index.rejects} if existing else set()

    first: dict[str, _Item] = {}
    todo: list[_Item] = []
    by_key: dict[str, list[_Item]] = {}
    new_aliases: list[tuple[str, str, str]] = []
    new_rejects: list[dict[str, Any]] = []
    counts = Counter()
    for it in items:
        if it.reason:
            counts["rejected"] += 1
            counts[f"rejected:{it.reason}"] += 1
            new_rejects.append({"source": it.source, "image_id": it.image_id, "kind": "image",
                                "path": str(it.path or ""), "reason": it.reason})
            new_aliases.append((it.source, it.image_id, ""))
            continue
        if it.key in first:
            counts["deduplicated"] += 1
            by_key[it.key].append(it)
            if it.key in have_keys or it.key in have_rejected:
                new_aliases.append((it.source, it.image_id, it.key if it.key in have_keys else ""))
            continue
        first[it.key] = it
        by_key[it.key] = [it]
        if it.key in have_keys:
            counts["reused"] += 1
            new_aliases.append((it.source, it.image_id, it.key))
        elif it.key in have_rejected:
            counts["rejected"] += 1
            counts[f"rejected:{have_rejected[it.key]}"] += 1
            new_aliases.append((it.source, it.image_id, ""))
        else:
            todo.append(it)
    new_aliases = [a for a in new_aliases if have_aliases.get((a[0], a[1])) != a[2]]
    new_rejects = [r for r in new_rejects + crop_rejects + record_rejects if _reject_sig(r) not in have_rejects]

    summary: dict[str, Any] = {
        "fingerprint_id": fp["id"], "encoder": fp["info"]["encoder"], "cache": str(folder),
        "images": len(items), "unique_images": len(first), "to_compute": len(todo), "computed": 0,
        "reused": counts["reused"], "deduplicated": counts["deduplicated"], "rejected": counts["rejected"],
        "rejected_crops": 0, "rejected_records": len(record_rejects), "aliases_written": 0, "shards_written": 0,
        "workers": workers, "ray_address": address or ("embedded" if workers else "in-process"),
    }
    if not todo and not new_aliases and not new_rejects:
        log.info("cache %s is complete for these inputs: nothing to compute", folder)
        summary.update(reject_reasons=_reasons(counts), seconds=round(time.monotonic() - t0, 3), compute_seconds=0.0,
                       images_per_s=0.0)
        return summary

    # 3. compute what is missing; a single writer in this process commits the shards
    featurizer_kwargs = {"settings": settings.__dict__, "max_image_pixels": int(config["max_image_pixels"]),
                         "device": str(device), "expected_fingerprint": fp["id"]}
    n_workers = max(1, workers)
    todo.sort(key=lambda it: str(it.path))  # deterministic batches
    batches = _batches(todo, int(config["batch_size"]), settings.max_crops)
    crop_reject_count = sum(r["kind"] in ("grounding", "rcnn") for r in new_rejects)
    t_compute = time.monotonic()
    with CacheWriter(cache_dir, fp, shard_size=int(config["shard_size"]), dtype=settings.dtype) as writer:
        for r in new_rejects:
            writer.add_reject(r)
        for a in new_aliases:
            writer.add_alias(*a)
        summary["aliases_written"] += len(new_aliases)
        if todo:
            stack = ExitStack()
            if workers == 0:
                results = _run_inprocess(featurizer_kwargs, batches)
            else:
                from .ray_runtime import init_ray
                stack.enter_context(init_ray(address, n_workers))
                gpus = 1.0 if device.type == "cuda" else 0.0
                results = _run_ray(featurizer_kwargs, batches, n_workers, gpus)
            bar = _Progress(len(todo))
            try:
                # steady-state rate: images after every worker delivered its first batch (start-up excluded)
                n_results, warm_t, warm_n = 0, None, 0
                for out in results:
                    n_ok, n_crop_bad = _store(writer, out, by_key, summary)
                    crop_reject_count += n_crop_bad
                    bar.update(len(out["key"]))
                    summary["computed"] += n_ok
                    n_results += 1
                    if warm_t is None:
                        if n_results >= n_workers:
                            warm_t, warm_n = time.monotonic(), summary["computed"]
                    steady = (summary["computed"] - warm_n, time.monotonic() - warm_t) if warm_t else (0, 0.0)
                summary["steady_images_per_s"] = round(steady[0] / steady[1], 3) if steady[0] and steady[1] > 0 else None
            finally:
                bar.close()
                results.close()  # stops the actors before Ray shuts down
                stack.close()
    summary["shards_written"] = len(writer.committed)
    elapsed = time.monotonic() - t_compute
    summary["rejected_crops"] = crop_reject_count
    summary.update(reject_reasons=_reasons(counts, summary.pop("_reasons", {})),
                   seconds=round(time.monotonic() - t0, 3), compute_seconds=round(elapsed, 3),
                   images_per_s=round(summary["computed"] / elapsed, 3) if elapsed > 0 else 0.0)
    log.info("extract-features: %s", json.dumps({k: summary[k] for k in (
        "computed", "reused", "deduplicated", "rejected", "rejected_crops", "seconds")}))
    return summary


def _reasons(counts: Counter, extra: dict[str, int] | None = None) -> dict[str, int]:
    out = {k.split(":", 1)[1]: v for k, v in counts.items() if k.startswith("rejected:")}
    for k, v in (extra or {}).items():
        out[k] = out.get(k, 0) + v
    return dict(sorted(out.items()))


def _store(writer: CacheWriter, out: dict[str, np.ndarray], by_key: dict[str, list[_Item]],
           summary: dict[str, Any]) -> tuple[int, int]:
    """Write one featurizer result: good rows + their aliases, rejects (image and crop) with "no image" aliases."""
    keys = [str(k) for k in out["key"]]
    ok = [i for i, r in enumerate(out["reason"]) if not r]
    if ok:
        writer.add_rows({"key": np.array([keys[i] for i in ok]), **{n: out[n][ok] for n in FEATURE_NAMES}})
    reasons = summary.setdefault("_reasons", {})
    crop_bad = 0
    for i, key in enumerate(keys):
        its = by_key[key]
        reason = str(out["reason"][i])
        if reason:
            summary["rejected"] += 1
            reasons[reason] = reasons.get(reason, 0) + 1
            writer.add_reject({"source": its[0].source, "image_id": its[0].image_id, "kind": "image",
                               "path": str(its[0].path), "reason": reason, "key": key if reason != "changed" else ""})
        for kind in ("grounding", "rcnn"):
            for value in out[f"{kind}_reason"][i]:
                if value:
                    crop_bad += 1
                    why, _, path = str(value).partition("\t")
                    writer.add_reject({"source": its[0].source, "image_id": its[0].image_id, "kind": kind,
                                       "path": path, "reason": why})
        for it in its:
            writer.add_alias(it.source, it.image_id, "" if reason else key)
            summary["aliases_written"] += 1
    writer.maybe_commit()
    return len(ok), crop_bad

"""tag-corpus stage: bulk tagging of JSONL(.gz) tweet dumps into one Parquet part per input file.

Streams read -> tokenize -> length-bucketed batches -> inference (in-process or Ray actors) -> row groups,
under an exclusive lock on the output folder, skipping inputs the manifest already has (cron reruns).
"""
from __future__ import annotations

import hashlib
import json
import logging
import time
from collections import deque
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any, Iterable, Iterator

from cache.durable import FileLock, atomic_file, is_temp_name, open_nofollow, refuse_link, sha256_file, temp_path
from cache.format import DUMP_SOURCE
from pipeline.io.checkpoint_folder import checkpoint_info, load_error
from pipeline.io.dumps import DumpFields, DumpRecord, Reject, expand_inputs, iter_dump
from pipeline.runtime.progress import progress
from pipeline.stage_config import TagConfig
from pipeline.tag.infer import make_executor
from pipeline.tag.manifest import MANIFEST_NAME, REJECTS_NAME, Manifest
from pipeline.tag.parquet_parts import PartWriter
from pipeline.tag.tweet_tokenizer import Token, tokenize
from rpihmif.errors import PipelineError, UsageError

__all__ = ["run_tag", "resolve_model_path"]

log = logging.getLogger("rpihmif.tag")

_ROUTING = ("routing_orig", "routing_grounding", "routing_rcnn")


@dataclass
class _TagItem:
    record: DumpRecord
    tokens: list[Token]
    key: str | None  # feature-cache key of the record's image, None = no cached image


@dataclass
class _Counts:
    rows: int = 0
    rejects: int = 0
    images_used: int = 0
    images_missing: int = 0
    no_image: int = 0

    def add(self, other: "_Counts") -> None:
        for name in self.__dataclass_fields__:
            setattr(self, name, getattr(self, name) + getattr(other, name))


@dataclass
class _Context:
    out: Path
    config: TagConfig
    fields: DumpFields
    model_id: str
    cache: Any  # FeatureCache of the model's encoder, or None (text-only model / no cache)
    executor: Any = None
    taken: set[str] = field(default_factory=set)  # output names in use by other inputs


def resolve_model_path(config: TagConfig) -> Path:
    """The checkpoint folder of `load_path` (DeepKE name; --model); a file inside it is accepted too."""
    raw = config.load_path
    if not raw:
        raise UsageError("no model: pass --model CHECKPOINT (or --set load_path=CHECKPOINT)")
    path = Path(raw)
    return path.parent if path.is_file() else path  # checkpoint_info() validates the folder


def _open_feature_cache(config: TagConfig, model_config: Any) -> Any:
    if model_config.text_only or not model_config.visual.fingerprint:
        log.info("text-only model: images are not used")
        return None
    from cache.reader import open_cache

    cache = open_cache(config.cache_dir, model_config.visual.fingerprint)
    if cache is None:
        log.warning("no feature cache of the model's encoder under %s: every image is masked "
                    "(run extract-features over the dumps first)", config.cache_dir)
    return cache


def _output_name(path: Path, key: str, ctx: _Context, manifest: Manifest) -> str:
    """`<stem>.parquet`, or `<stem>-<path hash>.parquet` when another input already has that name."""
    previous = manifest.output_of(key)
    if previous:
        return previous
    stem = path.name
    for suffix in (".gz", ".jsonl", ".ndjson", ".json"):
        stem = stem[: -len(suffix)] if stem.endswith(suffix) else stem
    stem = stem.lstrip("._") or "part"
    name = f"{stem}.parquet"
    if name in ctx.taken:
        name = f"{stem}-{hashlib.sha1(key.encode()).hexdigest()[:8]}.parquet"
    return name


def _clean_temps(out: Path) -> None:
    """Drop temp files a killed run left behind (we hold the lock, so none is being written)."""
    for p in out.iterdir():
        if p.is_file() and is_temp_name(p.name):
            p.unlink(missing_ok=True)


def _prepare(records: Iterable[DumpRecord | Reject], ctx: _Context, counts: _Counts, rejects: Any) -> Iterator[_TagItem]:
    """Tokenize good records and look up their image keys; write rejects as they come."""
    require = ctx.config.require_images

    def reject(r: Reject) -> None:
        rejects.write(json.dumps(r.to_json(), ensure_ascii=False) + "\n")
        counts.rejects += 1

    for rec in records:
        if isinstance(rec, Reject):
            reject(rec)
            continue
        tokens = tokenize(rec.text)
        if not tokens:
            reject(Reject(rec.file, rec.line, "text has no visible characters", rec.id))
            continue
        key = None
        if rec.image is None:
            counts.no_image += 1
        elif ctx.cache is not None:
            key = ctx.cache.key_for(DUMP_SOURCE, rec.image)
            key = key if key and key in ctx.cache else None
        if rec.image is not None and key is None:
            if require:
                reject(Reject(rec.file, rec.line, f"image {rec.image!r} is not in the feature cache and "
                                                  f"require_images is set; run extract-features on this dump",
                              rec.id))
                continue
            counts.images_missing += 1
        yield _TagItem(rec, tokens, key)


def _batches(items: Iterator[_TagItem], bucket: int, batch_size: int) -> Iterator[tuple[list[_TagItem], list[int], bool]]:
    """Read `bucket` items ahead, sort them by length, cut into batches: (chunk, indices, last of chunk)."""
    while chunk := list(islice(items, bucket)):
        order = sorted(range(len(chunk)), key=lambda i: len(chunk[i].tokens))
        starts = range(0, len(order), batch_size)
        for s in starts:
            yield chunk, order[s:s + batch_size], s == starts[-1]


def _row(item: _TagItem, ents: list[tuple], image_used: bool, model_id: str) -> dict[str, Any]:
    rec, toks = item.record, item.tokens
    entities = []
    for etype, start, end, score, *routing in ents:
        s, e = toks[start].start, toks[end - 1].end
        entities.append({"text": rec.text[s:e], "type": etype, "start_char": s, "end_char": e,
                         "start_token": start, "end_token": end, "score": score,
                         **dict(zip(_ROUTING, routing))})
    return {"id": rec.id, "text": rec.text, "tokens": [t.text for t in toks], "entities": entities,
            "image_used": image_used, "model_id": model_id, "image": rec.image, "crops": rec.crops,
            "rcnn_crops": rec.rcnn, "line": rec.line}


def _tag_stream(items: Iterator[_TagItem], ctx: _Context, counts: _Counts) -> Iterator[list[dict[str, Any]]]:
    """Run the batches through the executor; yield each bucket's rows in input order once complete."""
    meta: deque = deque()

    def payloads() -> Iterator[dict[str, list]]:
        for chunk, idx, last in _batches(items, ctx.config.bucket_size, ctx.config.batch_size):
            meta.append((chunk, idx, last))
            yield {"words": [[t.text for t in chunk[i].tokens] for i in idx], "keys": [chunk[i].key for i in idx]}

    rows: dict[int, dict[str, Any]] = {}
    for result in ctx.executor.map(payloads()):
        chunk, idx, last = meta.popleft()
        for i, ents, used in zip(idx, result["entities"], result["image_used"]):
            rows[i] = _row(chunk[i], ents, used, ctx.model_id)
            counts.images_used += used
        if last:
            yield [rows[i] for i in range(len(chunk))]
            rows = {}


def _merge_rejects(out: Path, key: str, new: Path) -> None:
    """Replace the input's earlier reject lines in `_rejects.jsonl` with `new`'s, atomically."""
    final = out / REJECTS_NAME
    with atomic_file(final, "w", encoding="utf-8") as dst:
        if final.exists():
            with open(final, "rb") as src:
                for number, raw in enumerate(src, 1):
                    try:
                        record = json.loads(raw)
                        keep = record.get("file") != key
                    except (ValueError, AttributeError, RecursionError):  # damaged by hand or by a disk: not ours
                        log.warning("%s:%d: damaged line dropped (not a reject record)", final, number)
                        continue
                    if keep:
                        dst.write(raw.decode("utf-8").rstrip("\r\n") + "\n")
        with open(new, encoding="utf-8") as src:
            for line in src:
                dst.write(line)
    new.unlink()


def _tag_file(path: Path, key: str, output: str, sha: str, ctx: _Context) -> _Counts:
    counts = _Counts()
    writer = PartWriter(ctx.out / output, ctx.config.row_group_size,
                        metadata={"model_id": ctx.model_id, "source": key, "source_sha256": sha})
    rejects_tmp = temp_path(ctx.out / f"{output}.rejects")
    try:
        with open(rejects_tmp, "w", encoding="utf-8", opener=open_nofollow) as rejects:
            records = progress(iter_dump(path, ctx.fields, ctx.config.max_record_bytes, name=key),
                               desc=path.name, unit="records")
            for rows in _tag_stream(_prepare(records, ctx, counts, rejects), ctx, counts):
                writer.add(rows)
        counts.rows = writer.commit()
    except BaseException:
        writer.abort()
        rejects_tmp.unlink(missing_ok=True)
        raise
    _merge_rejects(ctx.out, key, rejects_tmp)
    return counts


def run_tag(inputs: list[Path], config: TagConfig) -> dict[str, Any]:
    """Tag every input dump (files or folders) into `config.out`; returns the run's summary dict."""
    started = time.monotonic()
    if not config.out:
        raise UsageError("no output folder: pass --out DIR (or --set out=DIR)")
    load_path = resolve_model_path(config)
    files = expand_inputs(list(inputs))
    if not files:
        raise UsageError(f"no JSONL(.gz) dumps found in {', '.join(map(str, inputs))}")
    out = Path(config.out)
    mid, model_config = checkpoint_info(load_path)
    total, per_file, tagged_s = _Counts(), [], 0.0
    with FileLock(out, "tag-corpus run"):
        for name in (MANIFEST_NAME, REJECTS_NAME):  # read and rewritten by this run: never through a link
            refuse_link(out / name)
        _clean_temps(out)
        manifest = Manifest(out)
        ctx = _Context(out, config, DumpFields.from_config(config), mid, None)
        todo = []
        for path in files:
            key = str(path.resolve())
            sha, size = sha256_file(path)
            output = manifest.output_of(key)
            if manifest.is_done(key, sha, mid) and output and (out / output).exists():
                log.info("skip %s: unchanged since %s", path, manifest.entries[key].get("finished_at"))
                per_file.append({"input": key, "output": output, "status": "skipped"})
            else:
                todo.append((path, key, sha, size))
        ctx.taken = manifest.outputs()
        if todo:
            ctx.cache = _open_feature_cache(config, model_config)
            try:
                ctx.executor = make_executor(config, str(load_path), str(ctx.cache.folder) if ctx.cache else "")
            except PipelineError:
                raise
            except Exception as exc:  # noqa: BLE001 -- SafetensorError and friends: one line naming the folder
                raise load_error(load_path, exc) from exc
            log.info("tagging %d input(s) with model %s, %s", len(todo), mid, ctx.executor.description)
        try:
            for path, key, sha, size in todo:
                output = _output_name(path, key, ctx, manifest)
                ctx.taken.add(output)
                t0 = time.monotonic()
                counts = _tag_file(path, key, output, sha, ctx)
                tagged_s += time.monotonic() - t0
                manifest.record(key, size=size, sha256=sha, rows=counts.rows, rejects=counts.rejects,
                                model_id=mid, output=output, images_used=counts.images_used,
                                images_missing=counts.images_missing, load_path=str(load_path.resolve()),
                                image_root=str(Path(config.image_root or path.parent).resolve()))
                log.info("%s -> %s: %d rows, %d rejects, %d images used, %d not cached", path, output,
                         counts.rows, counts.rejects, counts.images_used, counts.images_missing)
                total.add(counts)
                per_file.append({"input": key, "output": output, "status": "tagged", **vars(counts)})
        finally:
            if ctx.executor is not None:
                ctx.executor.close()
    seconds = time.monotonic() - started
    summary = {"out": str(out), "model_id": mid, "inputs": len(files), "tagged": len(todo),
               "skipped": len(files) - len(todo), **vars(total), "seconds": round(seconds, 3),
               "tweets_per_s": round(total.rows / tagged_s, 1) if tagged_s else None, "files": per_file}
    log.info("tag-corpus done: %d rows, %d rejects, %d input(s) tagged, %d skipped in %.1fs (%s)",
             total.rows, total.rejects, len(todo), summary["skipped"], seconds, out)
    return summary

"""Worker side of tag-corpus: `ChunkTagger` loads the model once, then turns one chunk of raw dump lines into a
Parquet part (parse, tokenize, feature lookup, inference, Arrow) written to a hidden temp file the driver commits.
"""
from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from itertools import islice
from pathlib import Path
from typing import Any, Callable, Iterator

from cache import DUMP_SOURCE
from pipeline.io.dumps import DumpFields, DumpRecord, Reject, UniqueIds, line_record
from pipeline.tag.parquet_parts import PartWriter
from rpihmif.api import entity_dicts
from rpihmif.tweet_tokenizer import tokenize

__all__ = ["ChunkTagger", "TaggerSettings", "TagTask", "TagResult", "load_tagger"]

log = logging.getLogger("rpihmif.tag")



def load_tagger(load_path: str, device: str = "auto", threads: int = 0, precision: str = "fp32") -> Any:
    """The checkpoint's `Tagger` on `device` (the default model factory of the workers)."""
    import torch

    from pipeline.runtime.device import resolve_device
    from rpihmif.precision import resolve_precision
    from rpihmif.predictor import Tagger

    if threads > 0:  # 0 keeps torch's default (in a Ray actor: its num_cpus, via OMP_NUM_THREADS)
        torch.set_num_threads(threads)
    dev = resolve_device(device)
    tagger = Tagger.from_pretrained(load_path, str(dev), autocast=resolve_precision(precision, dev).autocast)
    tagger.predict([["warm", "up"]])  # first-call costs (lazy imports, kernel set-up) belong to loading
    return tagger


@dataclass(frozen=True)
class TaggerSettings:
    """What every worker needs besides the model: seed, device, batching, Parquet sizing and the record rules."""

    fields: DumpFields = DumpFields()
    seed: int = 0
    device: str = "auto"
    precision: str = "fp32"
    threads: int = 0
    batch_size: int = 64
    bucket_size: int = 1024
    row_group_bytes: int = 64 << 20
    max_record_bytes: int = 100_000
    require_images: bool = False
    sources: tuple[str, ...] = ()  # visual sources the model may see (a subset of its trained ones); () = all
    text_only: bool = False  # predict with no image at all


@dataclass
class TagTask:
    """One chunk to tag: its raw lines (see RawChunk) and where to write the temp part (`part`)."""

    key: str
    source: str
    first_line: int
    lines: list[bytes | None]
    part: str
    tagged_at: float  # POSIX seconds
    oversize: dict[int, int] = field(default_factory=dict)
    tail: str | None = None


@dataclass
class TagResult:
    """A tagged chunk: the temp part (None when no record was good: no part without rows), its sha256, the rows'
    id digests (UniqueIds.digest, in row order), the rejects (Reject.to_json dicts), counts and worker CPU seconds."""

    key: str
    tmp: str | None
    digest: str
    ids: list[int]
    rejects: list[dict[str, Any]]
    rows: int = 0
    images_used: int = 0
    images_missing: int = 0
    no_image: int = 0
    cpu_s: float = 0.0


class ChunkTagger:
    """Tags chunks (Ray's callable-class contract): loads the model once in `__init__`, then `TagTask` -> `TagResult`."""

    def __init__(self, load_path: str, settings: TaggerSettings, footer: dict[str, str], model_id: str,
                 cache_folder: str = "", factory: Callable[..., Any] | None = None):
        if factory is None:
            from pipeline.runtime.device import seed_everything

            seed_everything(settings.seed)
            factory = load_tagger
        self.tagger = factory(load_path, settings.device, settings.threads, settings.precision)
        self.s = settings
        self.fields = settings.fields
        self.footer, self.model_id = footer, model_id
        self.cache_folder = cache_folder  # one fingerprint folder of the feature cache ("" = none)
        self._cache: Any = None

    def _cache_key(self, image: str) -> str | None:
        if not self.cache_folder:
            return None
        if self._cache is None:  # opened in the process that reads (h5py is not fork-safe)
            from cache.reader import FeatureCache

            self._cache = FeatureCache(self.cache_folder)
        key = self._cache.key_for(DUMP_SOURCE, image)
        return key if key and key in self._cache else None

    def _features(self, keys: list[str | None]) -> list[dict | None]:
        if not any(keys):
            return [None] * len(keys)
        return [self._cache.get(k) if k else None for k in keys]

    def __call__(self, task: TagTask) -> TagResult:
        cpu0 = time.process_time()
        result = TagResult(task.key, None, "", [], [])
        items = self._parse(task, result)
        if not items:  # nothing to write: no empty part
            result.cpu_s = time.process_time() - cpu0
            return result
        tagged_at = datetime.fromtimestamp(task.tagged_at, timezone.utc)
        meta = {**self.footer, "rpihmif.source": task.source, "rpihmif.first_line": str(task.first_line)}
        writer = PartWriter(Path(task.part), self.s.row_group_bytes, meta)
        try:
            it = iter(items)
            while bucket := list(islice(it, self.s.bucket_size)):
                writer.add(self._tag_bucket(bucket, task.source, tagged_at, result))
            tmp = writer.finish()
        except BaseException:
            writer.abort()
            raise
        with open(tmp, "rb") as fh:
            result.digest = hashlib.file_digest(fh, "sha256").hexdigest()
        result.tmp, result.rows = str(tmp), writer.rows
        result.ids = [UniqueIds.digest(rec.id) for rec, _, _ in items]
        result.cpu_s = time.process_time() - cpu0
        return result

    def _records(self, task: TagTask) -> Iterator[DumpRecord | Reject]:
        """The chunk's records and rejects in line order (blank lines skipped), by the dump reader's rules."""
        ids, max_bytes = UniqueIds("this input"), self.s.max_record_bytes
        line = task.first_line - 1
        for i, raw in enumerate(task.lines):
            line += 1
            size = task.oversize.get(i, 0) if raw is None else len(raw)
            rec = line_record(raw, size, task.source, line, self.fields, max_bytes)
            if isinstance(rec, DumpRecord):
                rec = ids.check(rec) if tokenize(rec.text) else Reject(task.source, line,
                                                                       "text has no visible characters", rec.id)
            if rec is not None:
                yield rec
        if task.tail is not None:
            yield Reject(task.source, line + 1, task.tail)

    def _parse(self, task: TagTask, result: TagResult) -> list[tuple]:
        """Good records as (record, tokens, cache key) in line order; rejects appended as dicts."""
        items = []
        for rec in self._records(task):
            if isinstance(rec, Reject):
                result.rejects.append(rec.to_json())
                continue
            key = None
            if rec.image is None:
                result.no_image += 1
            else:
                key = self._cache_key(rec.image)
                if key is None:
                    if self.s.require_images:
                        result.rejects.append(Reject(rec.file, rec.line, f"image {rec.image!r} is not in the feature "
                                                     "cache and require_images is set; run extract-features on this "
                                                     "dump", rec.id).to_json())
                        continue
                    result.images_missing += 1
            items.append((rec, tokenize(rec.text), key))
        return items

    def _tag_bucket(self, bucket: list[tuple], source: str, tagged_at: datetime,
                    result: TagResult) -> list[dict[str, Any]]:
        """Sort by length into model batches (less padding); rows come back in line order."""
        order = sorted(range(len(bucket)), key=lambda i: len(bucket[i][1]))
        rows: list[dict[str, Any] | None] = [None] * len(bucket)
        step = self.s.batch_size
        for s in range(0, len(order), step):
            idx = order[s:s + step]
            feats = self._features([bucket[i][2] for i in idx])
            preds = self.tagger.predict([[t.text for t in bucket[i][1]] for i in idx], feats, batch_size=step,
                                        sources=self.s.sources, text_only=self.s.text_only)
            for i, pred, feat in zip(idx, preds, feats):
                rows[i] = self._row(bucket[i], pred, feat is not None, source, tagged_at)
                result.images_used += bool(pred.image_used)
        return rows  # type: ignore[return-value]

    def _row(self, item: tuple, pred: Any, has_feat: bool, source: str, tagged_at: datetime) -> dict[str, Any]:
        rec, toks, _ = item
        entities = entity_dicts(rec.text, toks, pred, has_feat)  # the notebook API's entities, exactly
        return {"id": rec.id, "text": rec.text, "tokens": [t.text for t in toks], "entities": entities,
                "image_used": bool(pred.image_used), "model_id": self.model_id, "image": rec.image,
                "crops": rec.crops, "rcnn_crops": rec.rcnn, "line": rec.line, "source": source,
                "tagged_at": tagged_at}

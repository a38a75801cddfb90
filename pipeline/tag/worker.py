"""Worker side of tag-corpus: `ChunkTagger` loads the model once, then turns one chunk of raw dump lines into a
Parquet part (parse, tokenize, feature lookup, inference, Arrow) written to a hidden temp file the driver commits.
"""
from __future__ import annotations

import logging
import time
from datetime import datetime, timezone
from itertools import islice
from pathlib import Path
from typing import Any, Callable

from cache.format import DUMP_SOURCE
from pipeline.io.dumps import DumpFields, DumpRecord, Reject, line_record
from pipeline.tag.parquet_parts import PartWriter
from pipeline.tag.tweet_tokenizer import tokenize

__all__ = ["ChunkTagger", "load_tagger"]

log = logging.getLogger("rpihmif.tag")

_ROUTING = ("routing_orig", "routing_grounding", "routing_rcnn")


def load_tagger(load_path: str, device: str = "auto", threads: int = 0, precision: str = "fp32") -> Any:
    """The checkpoint's `Tagger` on `device` (the default model factory of the workers)."""
    import torch

    from pipeline.io.checkpoint_folder import load_error
    from pipeline.runtime.device import resolve_device
    from pipeline.runtime.precision import resolve_precision
    from rpihmif.errors import PipelineError
    from rpihmif.predictor import Tagger

    if threads > 0:  # 0 keeps torch's default (in a Ray actor: its num_cpus, via OMP_NUM_THREADS)
        torch.set_num_threads(threads)
    dev = resolve_device(device)
    try:
        tagger = Tagger.from_pretrained(load_path, str(dev), autocast=resolve_precision(precision, dev).autocast)
    except PipelineError:
        raise
    except Exception as exc:  # noqa: BLE001 -- SafetensorError and friends: one line naming the folder
        raise load_error(Path(load_path), exc) from exc
    tagger.predict([["warm", "up"]])  # first-call costs (lazy imports, kernel set-up) belong to loading
    return tagger


class ChunkTagger:
    """Tags chunks: `task = {"key", "source", "first_line", "lines", "part", "tagged_at"}` -> a result dict with the
    temp part path, row and reject counts, the rejects, image counts and the worker's CPU seconds."""

    def __init__(self, load_path: str, settings: dict[str, Any], footer: dict[str, str], model_id: str,
                 cache_folder: str = "", factory: Callable[..., Any] | None = None):
        seed = int(settings.get("seed", 0))
        if factory is None:
            from pipeline.runtime.device import seed_everything

            seed_everything(seed)
            factory = load_tagger
        self.tagger = factory(load_path, settings.get("device", "auto"), int(settings.get("threads", 0)),
                              settings.get("precision", "fp32"))
        self.s = settings
        self.fields = DumpFields(**settings["fields"])
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

    def __call__(self, task: dict[str, Any]) -> dict[str, Any]:
        cpu0 = time.process_time()
        counts = {"rows": 0, "images_used": 0, "images_missing": 0, "no_image": 0}
        rejects: list[dict[str, Any]] = []
        items = self._parse(task, counts, rejects)
        tagged_at = datetime.fromtimestamp(task["tagged_at"], timezone.utc)
        meta = {**self.footer, "rpihmif.source": task["source"], "rpihmif.first_line": str(task["first_line"])}
        writer = PartWriter(Path(task["part"]), int(self.s["row_group_bytes"]), meta)
        try:
            size = int(self.s["bucket_size"])
            it = iter(items)
            while bucket := list(islice(it, size)):
                rows = self._tag_bucket(bucket, task["source"], tagged_at, counts)
                writer.add(rows)
            tmp = writer.finish()
        except BaseException:
            writer.abort()
            raise
        counts["rows"] = writer.rows
        return {"key": task["key"], "tmp": str(tmp), "rejects": rejects, **counts,
                "cpu_s": time.process_time() - cpu0}

    def _parse(self, task: dict[str, Any], counts: dict[str, int], rejects: list[dict[str, Any]]) -> list[tuple]:
        """Good records as (record, tokens, cache key) in line order; rejects appended as dicts."""
        source, line, items = task["source"], task["first_line"] - 1, []
        max_bytes = int(self.s["max_record_bytes"])
        seen: set[str] = set()  # ids in this chunk (iter_dump's per-file rule, per chunk here)
        for raw in task["lines"]:
            line += 1
            if isinstance(raw, str):  # the reason a gzip tail could not be read
                rec: DumpRecord | Reject | None = Reject(source, line, raw)
            else:  # bytes, or the size of an over-long line
                rec = line_record(None if isinstance(raw, int) else raw, raw if isinstance(raw, int) else len(raw),
                                  source, line, self.fields, max_bytes)
            if rec is None:
                continue
            if isinstance(rec, DumpRecord):
                tokens = tokenize(rec.text)
                if not tokens:
                    rec = Reject(source, line, "text has no visible characters", rec.id)
                elif rec.id in seen:
                    rec = Reject(source, line, f"duplicate id {rec.id!r}: an earlier record of this chunk has it "
                                               "(ids 1 and \"1\" are the same id); the first one is kept", rec.id)
                else:
                    seen.add(rec.id)
            if isinstance(rec, Reject):
                rejects.append(rec.to_json())
                continue
            key = None
            if rec.image is None:
                counts["no_image"] += 1
            else:
                key = self._cache_key(rec.image)
                if key is None:
                    if self.s["require_images"]:
                        rejects.append(Reject(source, line, f"image {rec.image!r} is not in the feature cache and "
                                                            "require_images is set; run extract-features on this "
                                                            "dump", rec.id).to_json())
                        continue
                    counts["images_missing"] += 1
            items.append((rec, tokens, key))
        return items

    def _tag_bucket(self, bucket: list[tuple], source: str, tagged_at: datetime,
                    counts: dict[str, int]) -> list[dict[str, Any]]:
        """Sort by length into model batches (less padding); rows come back in line order."""
        order = sorted(range(len(bucket)), key=lambda i: len(bucket[i][1]))
        rows: list[dict[str, Any] | None] = [None] * len(bucket)
        step = int(self.s["batch_size"])
        for s in range(0, len(order), step):
            idx = order[s:s + step]
            feats = self._features([bucket[i][2] for i in idx])
            preds = self.tagger.predict([[t.text for t in bucket[i][1]] for i in idx], feats, batch_size=step,
                                        sources=self.s.get("sources", ()), text_only=self.s.get("text_only", False))
            for i, pred, feat in zip(idx, preds, feats):
                rows[i] = self._row(bucket[i], pred, feat is not None, source, tagged_at)
                counts["images_used"] += bool(pred.image_used)
        return rows  # type: ignore[return-value]

    def _row(self, item: tuple, pred: Any, has_feat: bool, source: str, tagged_at: datetime) -> dict[str, Any]:
        rec, toks, _ = item
        entities = []
        for ent in pred.entities:
            s, e = toks[ent.start].start, toks[ent.end - 1].end
            r = ent.routing if has_feat and ent.routing else {}
            entities.append({"text": rec.text[s:e], "type": ent.type, "start_char": s, "end_char": e,
                             "start_token": int(ent.start), "end_token": int(ent.end), "score": float(ent.score),
                             **{k: r.get(k.split("_", 1)[1]) for k in _ROUTING}})
        return {"id": rec.id, "text": rec.text, "tokens": [t.text for t in toks], "entities": entities,
                "image_used": bool(pred.image_used), "model_id": self.model_id, "image": rec.image,
                "crops": rec.crops, "rcnn_crops": rec.rcnn, "line": rec.line, "source": source,
                "tagged_at": tagged_at}

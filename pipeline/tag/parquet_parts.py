"""Parquet parts of tag-corpus (one per chunk): the row schema, footer metadata and a writer invisible until committed.

A worker streams rows into zstd row groups of about `row_group_bytes` in a hidden temp file; the driver commits it.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from cache.durable import naming_path, temp_path

__all__ = ["ENTITY_TYPE", "SCHEMA", "SCHEMA_VERSION", "PartWriter", "footer"]

SCHEMA_VERSION = 2  # 2: source, tagged_at columns; one part per chunk; footer metadata

# One entity; routing_* = each visual source's share of the capsules, weighted by the IFFE coupling of the entity's
# words and averaged over them (report legend); null when the tweet had no image or the model was text-only.
ENTITY_TYPE = pa.struct([
    ("text", pa.string()),  # == text[start_char:end_char]
    ("type", pa.string()),  # PER | LOC | ORG | MISC
    ("start_char", pa.int32()),  # Python str index (code points) into `text`
    ("end_char", pa.int32()),  # exclusive
    ("start_token", pa.int32()),  # index into `tokens`
    ("end_token", pa.int32()),  # exclusive
    ("score", pa.float32()),  # CRF-marginal confidence in (0, 1]
    ("routing_orig", pa.float32()),
    ("routing_grounding", pa.float32()),
    ("routing_rcnn", pa.float32()),
])

SCHEMA = pa.schema([
    ("id", pa.string()),
    ("text", pa.string()),
    ("tokens", pa.list_(pa.string())),
    ("entities", pa.list_(ENTITY_TYPE)),
    ("image_used", pa.bool_()),  # cached image features were fed to the model
    ("model_id", pa.string()),
    ("image", pa.string()),  # image path as written in the record (null: none)
    ("crops", pa.list_(pa.string())),  # grounding-crop paths as in the record
    ("rcnn_crops", pa.list_(pa.string())),  # RCNN-crop paths as in the record
    ("line", pa.int64()),  # 1-based line of the record in its input file
    ("source", pa.string()),  # absolute path of the input file the record was read from
    ("tagged_at", pa.timestamp("ms", tz="UTC")),  # when its chunk was tagged
])


def footer(model_id: str, encoder: str, labels: list[str] | tuple[str, ...], **extra: Any) -> dict[str, str]:
    """The key/value metadata each part carries in its footer (all readers expose it as schema metadata)."""
    meta = {"schema_version": str(SCHEMA_VERSION), "model_id": model_id, "encoder_fingerprint": encoder,
            "labels": json.dumps(list(labels)), **{k: str(v) for k, v in extra.items()}}
    return {f"rpihmif.{k}": v for k, v in meta.items()}

class PartWriter:
    """Write rows (dicts with the SCHEMA's fields) into a hidden temp beside `final`, one row group per
    `row_group_bytes` of Arrow data; `finish()` closes it and returns the temp path for the driver to commit."""

    def __init__(self, final: Path, row_group_bytes: int = 64 << 20, metadata: dict[str, str] | None = None):
        if row_group_bytes < 1:
            raise ValueError(f"expected row_group_bytes >= 1, got {row_group_bytes}")
        self.final = Path(final)
        self.tmp = temp_path(self.final)  # hidden: readers skip names starting with "."
        self.row_group_bytes = row_group_bytes
        self.schema = SCHEMA.with_metadata(metadata or {})
        self._writer = pq.ParquetWriter(self.tmp, self.schema, compression="zstd")
        self._pending: list[pa.RecordBatch] = []  # rows not yet in a row group, already columnar (compact)
        self._pending_bytes = 0
        self.rows = 0

    def add(self, rows: list[dict[str, Any]]) -> None:
        """Buffer rows as an Arrow batch; write a row group once `row_group_bytes` are buffered."""
        with naming_path(self.tmp):
            if rows:
                batch = pa.RecordBatch.from_pylist(rows, schema=self.schema)
                self._pending.append(batch)
                self._pending_bytes += batch.nbytes
            if self._pending_bytes >= self.row_group_bytes:
                self._flush(whole_groups_only=True)

    def _flush(self, whole_groups_only: bool = False) -> None:
        """Write the buffered rows as row groups of ~row_group_bytes; keep a partial last group unless finishing."""
        table = pa.Table.from_batches(self._pending, schema=self.schema)
        if not len(table):
            return
        per_group = max(1, int(self.row_group_bytes * len(table) / max(self._pending_bytes, 1)))
        n = len(table) - len(table) % per_group if whole_groups_only else len(table)
        if n:
            self._writer.write_table(table.slice(0, n), row_group_size=per_group)
            self.rows += n
        rest = table.slice(n).combine_chunks()  # a copy, so the written rows' buffers are freed
        self._pending, self._pending_bytes = rest.to_batches(), rest.nbytes

    def finish(self) -> Path:
        """Flush and close the temp file; returns its path (commit it with cache.durable.commit_temp)."""
        with naming_path(self.tmp):
            self._flush()
            self._writer.close()
        return self.tmp

    def abort(self) -> None:
        """Drop the temp file (on error); the final file, if any, stays as it was."""
        try:
            self._writer.close()
        finally:
            self.tmp.unlink(missing_ok=True)

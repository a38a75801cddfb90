"""Parquet part files of tag-corpus: the row schema and a writer that is invisible until it finishes.

Rows stream into row groups of a hidden temp file in the output folder; `commit()` fsyncs and renames it
to its final name, so readers (pandas, polars, DuckDB, Spark) only ever see complete files.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from cache.durable import commit_temp, naming_path, temp_path

__all__ = ["ENTITY_TYPE", "SCHEMA", "PartWriter"]

# One entity; routing_* = share of the IFFE coupling mass (averaged over the entity's words) that went to
# each visual source; null when the tweet had no image or the model was text-only.
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
])

class PartWriter:
    """Write rows (dicts with the SCHEMA's fields) to `final` in row groups of `row_group_size` rows."""

    def __init__(self, final: Path, row_group_size: int = 4096, metadata: dict[str, str] | None = None):
        if row_group_size < 1:
            raise ValueError(f"expected row_group_size >= 1, got {row_group_size}")
        self.final = Path(final)
        self.tmp = temp_path(self.final)  # hidden: readers skip names starting with "."
        self.row_group_size = row_group_size
        self.schema = SCHEMA.with_metadata({f"rpihmif.{k}": str(v) for k, v in (metadata or {}).items()})
        # snappy: the codec every Parquet reader (old Spark/Hive included) decodes
        self._writer = pq.ParquetWriter(self.tmp, self.schema, compression="snappy")
        self._pending: list[pa.RecordBatch] = []  # rows not yet in a row group, already columnar (compact)
        self._pending_rows = 0
        self.rows = 0

    def add(self, rows: list[dict[str, Any]]) -> None:
        """Buffer rows as an Arrow batch; write every full row group at once."""
        with naming_path(self.tmp):
            self._add(rows)

    def _add(self, rows: list[dict[str, Any]]) -> None:
        if rows:
            self._pending.append(pa.RecordBatch.from_pylist(rows, schema=self.schema))
            self._pending_rows += len(rows)
        if self._pending_rows >= self.row_group_size:
            self._flush(full_groups_only=True)

    def _flush(self, full_groups_only: bool) -> None:
        table = pa.Table.from_batches(self._pending, schema=self.schema)
        n = len(table) - len(table) % self.row_group_size if full_groups_only else len(table)
        if n:
            self._writer.write_table(table.slice(0, n), row_group_size=self.row_group_size)
            self.rows += n
        rest = table.slice(n).combine_chunks()  # a copy, so the written rows' buffers are freed
        self._pending, self._pending_rows = rest.to_batches(), len(rest)

    def commit(self) -> int:
        """Flush, close, fsync and rename to the final name; returns the rows written."""
        with naming_path(self.tmp):
            self._flush(full_groups_only=False)
            self._writer.close()
        commit_temp(self.tmp, self.final)
        return self.rows

    def abort(self) -> None:
        """Drop the temp file (on error); the previous final file, if any, stays as it was."""
        try:
            self._writer.close()
        finally:
            self.tmp.unlink(missing_ok=True)

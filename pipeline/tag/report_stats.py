"""Aggregates of a tag-corpus dataset in one streaming pass of vectorized Arrow compute over record batches.

Counts per type, top entities per type (case-folded), score spread, image and routing shares, tagged-at range, a seeded
random sample and the least confident tweets (as global row indices); memory is bounded by the batch size and a few
fixed-size buffers.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

__all__ = ["Aggregates", "TopEntity", "BottomK", "aggregate", "row_keys", "ROUTING", "AGG_COLUMNS"]

ROUTING = ("routing_orig", "routing_grounding", "routing_rcnn")
AGG_COLUMNS = ("entities", "image_used", "tagged_at")  # the only columns the pass reads (no text, no tokens)
BINS = 10  # score histogram: [0, .1), ..., [.9, 1]
_COUNT_ALL = pc.CountOptions(mode="all")
_MASK = np.uint64(0xFFFFFFFFFFFFFFFF)


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """SplitMix64 finalizer, vectorized over uint64 (wrapping arithmetic): a well-mixed hash of each value."""
    with np.errstate(over="ignore"):
        z = (x + np.uint64(0x9E3779B97F4A7C15)) & _MASK
        z = ((z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)) & _MASK
        z = ((z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)) & _MASK
    return z ^ (z >> np.uint64(31))


def row_keys(seed: int, index: np.ndarray) -> np.ndarray:
    """Random sort keys of global row indices for `seed`: the k smallest keys are a uniform sample of k rows.

    A key depends only on (seed, row index), so the sample is the same whatever the batch order or size.
    """
    salt = _splitmix64(np.array([seed & 0xFFFFFFFFFFFFFFFF], dtype=np.uint64))[0]
    return _splitmix64(index.astype(np.uint64) ^ salt)


class BottomK:
    """The `k` (key, row) pairs with the smallest keys offered so far; ties go to the lower row index."""

    def __init__(self, k: int, dtype: Any = np.float64):
        self.k = max(0, int(k))
        self.keys = np.empty(0, dtype=dtype)
        self.rows = np.empty(0, dtype=np.int64)

    def offer(self, keys: np.ndarray, rows: np.ndarray) -> None:
        """keys, rows: (n,) arrays; keeps the bottom k of the union."""
        if self.k == 0 or len(keys) == 0:
            return
        if len(self.keys) >= self.k:  # only candidates below the current k-th key can enter
            keep = keys <= self.keys.max()
            keys, rows = keys[keep], rows[keep]
            if len(keys) == 0:
                return
        keys = np.concatenate([self.keys, keys.astype(self.keys.dtype)])
        rows = np.concatenate([self.rows, rows.astype(np.int64)])
        order = np.lexsort((rows, keys))[: self.k]
        self.keys, self.rows = keys[order], rows[order]


@dataclass
class TopEntity:
    """One entity of a type's top list: its case-folded spellings counted together, shown as the most common one."""

    text: str  # the most common surface form (ties: the first in code point order)
    n: int  # mentions over every spelling
    mean: float | None  # mean score over the scored mentions
    forms: list[tuple[str, int]]  # up to 5 spellings with their counts, most common first
    spellings: int  # distinct spellings


@dataclass
class Aggregates:
    """What the report shows about the whole dataset; per-type dicts are keyed by entity type."""

    rows: int = 0
    with_image: int = 0
    with_entities: int = 0
    with_image_entities: int = 0  # tagged with their image and with at least one entity
    entities: int = 0
    types: dict[str, dict[str, float]] = field(default_factory=dict)  # n, scored, sum, min, max, routing sums/counts
    hist: dict[str, list[int]] = field(default_factory=dict)  # type -> BINS counts of entity scores
    top: dict[str, list[TopEntity]] = field(default_factory=dict)  # type -> its most mentioned entities
    top_exact: bool = True  # False when the distinct-entity table was pruned to stay bounded
    tagged: tuple[Any, Any] | None = None  # (min, max) of the tagged_at column, None when absent
    sample: list[int] = field(default_factory=list)  # global row indices of the random sample
    image_sample: list[int] = field(default_factory=list)  # ... of tweets with an image and entities, not in `sample`
    least: list[tuple[int, float]] = field(default_factory=list)  # (global row, lowest entity score), ascending


def _struct_field(flat: pa.Array, name: str, typ: pa.DataType) -> pa.Array:
    if flat.type.get_field_index(name) < 0:
        return pa.nulls(len(flat), typ)
    return pc.struct_field(flat, name)


def _finite(x: pa.Array) -> pa.Array:
    """Float values with NaN/inf replaced by null, as float64 (all null when the column is not numeric)."""
    if not (pa.types.is_floating(x.type) or pa.types.is_integer(x.type)):
        return pa.nulls(len(x), pa.float64())
    x = pc.cast(x, pa.float64())
    return pc.if_else(pc.is_finite(x), x, pa.scalar(None, pa.float64()))


class _Pass:
    """Accumulators of one pass; `add(batch, offset)` consumes a RecordBatch whose first row has global index offset."""

    def __init__(self, seed: int, sample: int, image_sample: int, least: int, top: int, max_distinct: int):
        self.agg = Aggregates()
        self.seed, self.top_n, self.max_distinct = seed, top, max_distinct
        self.sample = BottomK(sample, np.uint64)
        self.image_k = image_sample
        self.image_sample = BottomK(image_sample + sample, np.uint64)  # the sample's own are dropped at the end
        self.least = BottomK(least)
        self.groups: pa.Table | None = None  # (text, type, n, score_sum, scored) over distinct entities
        self.pending: list[pa.Table] = []
        self.pending_rows = 0

    def add(self, batch: pa.RecordBatch, offset: int) -> None:
        n = batch.num_rows
        a = self.agg
        a.rows += n
        # shape: (n,) per-row columns
        used = pc.fill_null(batch.column("image_used"), False)
        ents = batch.column("entities")
        has = pc.greater(pc.fill_null(pc.list_value_length(ents), 0), 0)
        a.with_image += int(pc.sum(used).as_py() or 0)
        a.with_entities += int(pc.sum(has).as_py() or 0)
        rows = np.arange(offset, offset + n, dtype=np.int64)
        keys = row_keys(self.seed, rows)
        self.sample.offer(keys, rows)
        eligible = pc.and_(used, has).to_numpy(zero_copy_only=False)
        a.with_image_entities += int(eligible.sum())
        self.image_sample.offer(keys[eligible], rows[eligible])
        if "tagged_at" in batch.schema.names:
            self._tagged(batch.column("tagged_at"))
        flat = pc.list_flatten(ents)  # shape: (entities in batch,) struct
        if len(flat):
            self._entities(flat, pc.list_parent_indices(ents), offset)

    def _tagged(self, col: pa.Array) -> None:
        mm = pc.min_max(col)
        lo, hi = mm["min"].as_py(), mm["max"].as_py()
        if lo is None:
            return
        if self.agg.tagged is None:
            self.agg.tagged = (lo, hi)
        else:
            self.agg.tagged = (min(self.agg.tagged[0], lo), max(self.agg.tagged[1], hi))

    def _entities(self, flat: pa.Array, parents: pa.Array, offset: int) -> None:
        score = _finite(_struct_field(flat, "score", pa.float32()))
        etype = pc.fill_null(pc.cast(_struct_field(flat, "type", pa.string()), pa.string()), "(none)")
        cols = {"text": pc.fill_null(_struct_field(flat, "text", pa.string()), ""), "type": etype, "score": score,
                "row": parents}
        for r in ROUTING:
            cols[r] = _finite(_struct_field(flat, r, pa.float32()))
        # shape: (entities,) bin of each score, null when the score is missing
        raw = pc.cast(pc.floor(pc.multiply(score, BINS)), pa.int32())
        cols["bin"] = pc.max_element_wise(pc.min_element_wise(raw, BINS - 1, skip_nulls=False), 0, skip_nulls=False)
        t = pa.table(cols)
        self.agg.entities += len(t)
        self._per_type(t)
        self._hist(t)
        self._least(t, offset)
        self._top(t)

    def _per_type(self, t: pa.Table) -> None:
        aggs = [("type", "count", _COUNT_ALL), ("score", "count"), ("score", "sum"), ("score", "min"),
                ("score", "max")] + [(r, op) for r in ROUTING for op in ("sum", "count")]
        for rec in t.group_by("type").aggregate(aggs).to_pylist():  # one row per type: a handful
            acc = self.agg.types.setdefault(rec["type"], {"n": 0, "scored": 0, "sum": 0.0, "min": None,
                                                          "max": None, **{f"{r}_{op}": 0 for r in ROUTING
                                                                          for op in ("sum", "count")}})
            acc["n"] += rec["type_count"]
            acc["scored"] += rec["score_count"]
            acc["sum"] += rec["score_sum"] or 0.0
            for op, pick in (("min", min), ("max", max)):
                v = rec[f"score_{op}"]
                acc[op] = v if acc[op] is None else (acc[op] if v is None else pick(acc[op], v))
            for r in ROUTING:
                acc[f"{r}_sum"] += rec[f"{r}_sum"] or 0.0
                acc[f"{r}_count"] += rec[f"{r}_count"]

    def _hist(self, t: pa.Table) -> None:
        for rec in t.filter(pc.is_valid(t["bin"])).group_by(["type", "bin"]).aggregate([("bin", "count")]).to_pylist():
            self.agg.hist.setdefault(rec["type"], [0] * BINS)[rec["bin"]] += rec["bin_count"]

    def _least(self, t: pa.Table, offset: int) -> None:
        # shape: (rows with a scored entity,) lowest entity score of each row
        low = t.filter(pc.is_valid(t["score"])).group_by("row").aggregate([("score", "min")])
        if len(low):
            rows = low["row"].to_numpy().astype(np.int64) + offset
            self.least.offer(low["score_min"].to_numpy(), rows)

    def _top(self, t: pa.Table) -> None:
        g = t.group_by(["text", "type"]).aggregate([("type", "count", _COUNT_ALL), ("score", "sum"),
                                                     ("score", "count")])
        self.pending.append(g.rename_columns(["text", "type", "n", "score_sum", "scored"]))
        self.pending_rows += len(g)
        if self.pending_rows >= max(self.max_distinct, 1 << 16):
            self._merge_top()

    def _merge_top(self) -> None:
        parts = ([self.groups] if self.groups is not None else []) + self.pending
        self.pending, self.pending_rows = [], 0
        if not parts:
            return
        g = pa.concat_tables(parts).group_by(["text", "type"]).aggregate([("n", "sum"), ("score_sum", "sum"),
                                                                         ("scored", "sum")])
        g = g.rename_columns(["text", "type", "n", "score_sum", "scored"])
        if len(g) > self.max_distinct:  # bounded memory: keep the most frequent half; counts become lower bounds
            self.agg.top_exact = False
            g = g.take(pc.select_k_unstable(g, self.max_distinct // 2, [("n", "descending")]))
        self.groups = g

    def _top_per_type(self) -> dict[str, list[TopEntity]]:
        """The `top_n` most mentioned entities of each type, spellings that differ only in case counted together."""
        g = self.groups
        if g is None or not len(g) or self.top_n <= 0:
            return {}
        # shape: (distinct (text, type),) most frequent spelling first, so "first" below is the most common one
        g = g.append_column("key", pc.utf8_lower(g["text"]))
        g = g.take(pc.sort_indices(g, [("n", "descending"), ("text", "ascending")]))
        folded = g.group_by(["type", "key"], use_threads=False).aggregate(
            [("n", "sum"), ("score_sum", "sum"), ("scored", "sum"), ("text", "first"), ("text", "count")])
        top: dict[str, list[TopEntity]] = {}
        for etype in pc.unique(folded["type"]).to_pylist():  # a handful of types
            mine = folded.filter(pc.equal(folded["type"], etype))
            order = pc.sort_indices(mine, [("n_sum", "descending"), ("key", "ascending")])[: self.top_n]
            best = mine.take(order)
            spellings = g.filter(pc.and_(pc.equal(g["type"], etype), pc.is_in(g["key"], best["key"])))
            forms: dict[str, list[tuple[str, int]]] = {}
            for rec in spellings.select(["key", "text", "n"]).to_pylist():  # sorted: most common first
                forms.setdefault(rec["key"], []).append((rec["text"], rec["n"]))
            top[etype] = [TopEntity(r["text_first"], r["n_sum"], r["score_sum_sum"] / r["scored_sum"]
                                    if r["scored_sum"] else None, forms[r["key"]][:5], r["text_count"])
                          for r in best.to_pylist()]
        return top

    def finish(self) -> Aggregates:
        self._merge_top()
        a = self.agg
        a.top = self._top_per_type()
        a.sample = sorted(int(r) for r in self.sample.rows)
        shown = set(a.sample)
        a.image_sample = sorted(int(r) for r in self.image_sample.rows if int(r) not in shown)[: self.image_k]
        a.least = [(int(r), float(k)) for k, r in zip(self.least.keys, self.least.rows)]
        return a


def aggregate(batches: Iterable[pa.RecordBatch], seed: int = 0, sample: int = 30, image_sample: int = 12,
              least: int = 12, top: int = 10, max_distinct: int = 500_000) -> Aggregates:
    """Aggregate record batches (columns of AGG_COLUMNS; tagged_at optional) given in global row order."""
    p = _Pass(seed, sample, image_sample, least, top, max_distinct)
    offset = 0
    for batch in batches:
        p.add(batch, offset)
        offset += batch.num_rows
    return p.finish()

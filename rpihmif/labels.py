"""Label schema of the Twitter MNER benchmarks: BIO tags over PER, LOC, ORG, MISC.

Normalises raw benchmark labels (OTHER -> MISC), repairs or rejects broken BIO, and turns tags into spans.
"""
from __future__ import annotations

__all__ = ["ENTITY_TYPES", "LABELS", "LABEL2ID", "normalize_label", "bio_spans", "check_bio", "repair_bio"]

ENTITY_TYPES: tuple[str, ...] = ("PER", "LOC", "ORG", "MISC")
LABELS: tuple[str, ...] = ("O",) + tuple(f"{p}-{t}" for t in ENTITY_TYPES for p in ("B", "I"))
LABEL2ID: dict[str, int] = {label: i for i, label in enumerate(LABELS)}
_ALIASES = {"OTHER": "MISC"}


def normalize_label(raw: str) -> str:
    """Map a raw benchmark label to the schema (`B-OTHER` -> `B-MISC`); raise ValueError if unknown."""
    raw = raw.strip()
    if raw == "O":
        return raw
    prefix, _, etype = raw.partition("-")
    etype = _ALIASES.get(etype, etype)
    label = f"{prefix}-{etype}"
    if label not in LABEL2ID:
        raise ValueError(f"unknown label {raw!r}; use O or B-/I- of PER, LOC, ORG, MISC (OTHER)")
    return label


def check_bio(labels: list[str]) -> int | None:
    """Index of the first `I-X` that follows neither `B-X` nor `I-X`, or None when the sequence is valid."""
    prev = "O"
    for i, label in enumerate(labels):
        if label.startswith("I-") and prev[2:] != label[2:]:
            return i
        prev = label
    return None


def repair_bio(labels: list[str]) -> tuple[list[str], int]:
    """Turn every dangling `I-X` into `B-X`; return the repaired tags and how many were changed."""
    out, fixed, prev = [], 0, "O"
    for label in labels:
        if label.startswith("I-") and prev[2:] != label[2:]:
            label, fixed = "B-" + label[2:], fixed + 1
        out.append(label)
        prev = label
    return out, fixed


def bio_spans(labels: list[str]) -> list[tuple[str, int, int]]:
    """Entity spans `(type, start, end_exclusive)` of a BIO sequence; a dangling `I-` opens a span (seqeval)."""
    spans: list[tuple[str, int, int]] = []
    start, etype = None, None
    for i, label in enumerate(list(labels) + ["O"]):
        inside = label.startswith("I-") and etype == label[2:]
        if start is not None and not inside:
            spans.append((etype, start, i))
            start, etype = None, None
        if label.startswith("B-") or (label.startswith("I-") and start is None):
            start, etype = i, label[2:]
    return spans

"""The label schema: normalising benchmark labels, repairing dangling I- tags, and BIO spans at the edges.

Spans follow seqeval: a dangling I- opens an entity, a type change closes one.
"""
from __future__ import annotations

import pytest

from rpihmif.labels import LABEL2ID, LABELS, bio_spans, check_bio, normalize_label, repair_bio


def test_schema():
    assert LABELS[0] == "O" and len(LABELS) == 9 and LABEL2ID["B-MISC"] == LABELS.index("B-MISC")


@pytest.mark.parametrize("raw, label", [("O", "O"), (" B-PER ", "B-PER"), ("I-OTHER", "I-MISC"),
                                        ("B-MISC", "B-MISC"), ("I-LOC\n", "I-LOC")])
def test_normalize(raw, label):
    assert normalize_label(raw) == label


@pytest.mark.parametrize("raw", ["B-PERS", "b-PER", "X-LOC", "PER", "", "B-", "I-O", "OTHER"])
def test_normalize_rejects_unknown(raw):
    with pytest.raises(ValueError, match="unknown label"):
        normalize_label(raw)


@pytest.mark.parametrize("labels, repaired, fixed", [
    ([], [], 0),
    (["O", "O"], ["O", "O"], 0),
    (["I-PER"], ["B-PER"], 1),  # at the start
    (["B-PER", "I-PER", "I-PER"], ["B-PER", "I-PER", "I-PER"], 0),
    (["B-PER", "I-LOC", "I-LOC"], ["B-PER", "B-LOC", "I-LOC"], 1),  # type change: only the first is dangling
    (["O", "I-ORG", "O", "I-ORG"], ["O", "B-ORG", "O", "B-ORG"], 2),
])
def test_repair_bio(labels, repaired, fixed):
    assert repair_bio(labels) == (repaired, fixed)
    assert check_bio(repaired) is None
    assert check_bio(labels) == (None if fixed == 0 else next(i for i, (a, b) in enumerate(zip(labels, repaired))
                                                               if a != b))


@pytest.mark.parametrize("labels, spans", [
    ([], []),
    (["O"], []),
    (["B-PER"], [("PER", 0, 1)]),  # a one-word entity at the start
    (["O", "B-LOC", "I-LOC"], [("LOC", 1, 3)]),  # an entity running to the end
    (["B-PER", "B-PER"], [("PER", 0, 1), ("PER", 1, 2)]),  # B- after B- starts a new entity
    (["B-PER", "I-LOC"], [("PER", 0, 1), ("LOC", 1, 2)]),  # a type change ends one and opens another
    (["I-ORG", "I-ORG", "O"], [("ORG", 0, 2)]),  # a dangling I- opens an entity (seqeval)
    (["B-MISC", "O", "I-MISC"], [("MISC", 0, 1), ("MISC", 2, 3)]),
])
def test_bio_spans(labels, spans):
    assert bio_spans(labels) == spans

"""`entity_scores`: seqeval micro P/R/F1 and per type (0-100), checked against counts done by hand.

Zero cases (no gold entity, no predicted entity) give 0.0, never a division error.
"""
from __future__ import annotations

import pytest

from pipeline.train.evaluate import entity_scores


def test_micro_and_per_type_by_hand():
    gold = [["B-PER", "I-PER", "O", "B-LOC"], ["B-ORG", "O"]]
    pred = [["B-PER", "I-PER", "O", "B-ORG"], ["B-ORG", "O"]]
    # gold: PER[0:2], LOC[3], ORG[0]; predicted: PER[0:2], ORG[3], ORG[0] -> 2 of 3 right, 2 of 3 found
    s = entity_scores(gold, pred)
    assert (s["precision"], s["recall"], s["f1"], s["entities"]) == (66.67, 66.67, 66.67, 3)
    assert s["per_type"] == {
        "PER": {"precision": 100.0, "recall": 100.0, "f1": 100.0, "support": 1},
        "LOC": {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1},  # never predicted: 0, not an error
        "ORG": {"precision": 50.0, "recall": 100.0, "f1": 66.67, "support": 1},  # 1 of 2 predicted ORGs is right
    }


def test_a_partial_span_is_wrong():
    s = entity_scores([["B-LOC", "I-LOC", "I-LOC"]], [["B-LOC", "I-LOC", "O"]])
    assert (s["precision"], s["recall"], s["f1"]) == (0.0, 0.0, 0.0)


def test_dangling_i_opens_an_entity_as_seqeval_does():
    s = entity_scores([["I-PER", "I-PER", "B-LOC"]], [["B-PER", "I-PER", "B-LOC"]])
    assert (s["f1"], s["entities"]) == (100.0, 2)


def test_zero_cases():
    none = entity_scores([["O", "O"]], [["O", "O"]])
    assert none == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "entities": 0, "per_type": {}}
    spurious = entity_scores([["O", "O"]], [["B-PER", "O"]])  # a prediction where gold has nothing
    assert (spurious["precision"], spurious["recall"], spurious["f1"], spurious["entities"]) == (0.0, 0.0, 0.0, 0)
    assert spurious["per_type"] == {"PER": {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}}
    missed = entity_scores([["B-MISC"]], [["O"]])
    assert (missed["precision"], missed["recall"], missed["entities"]) == (0.0, 0.0, 1)


@pytest.mark.parametrize("gold, pred", [([["O"]], [["O"], ["O"]]), ([["O", "O"]], [["O"]])])
def test_mismatched_lengths_raise(gold, pred):
    with pytest.raises(ValueError, match="differ in number or length"):
        entity_scores(gold, pred)

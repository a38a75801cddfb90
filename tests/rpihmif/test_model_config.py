"""`ModelConfig.from_dict` (a checkpoint's config.json): round trip, and unknown or mistyped keys refused by name."""
from __future__ import annotations

import pytest

from rpihmif.config import ModelConfig


def test_round_trip():
    config = ModelConfig()
    config.him.question, config.iffe.iterations, config.visual.sources = "who?", 0, ["orig"]
    config.constrain_bio = True
    assert ModelConfig.from_dict(config.to_dict()) == config


@pytest.mark.parametrize("data, message", [
    ({"foo": 1}, "unknown model config key 'foo'"),
    ({"him": {"nope": 1}}, r"unknown him config keys \['nope'\]"),
    ({"text": {"max_seq": 64, "window": 2}}, r"unknown text config keys \['window'\]"),
    ({"visual": {"source": ["orig"]}}, r"unknown visual config keys \['source'\]"),
    ({"iffe": 3}, "iffe must be a mapping"),
    ({"text_only": "yes"}, "text_only must be bool"),
    ({"constrain_bio": 1}, "constrain_bio must be bool"),
    ({"labels": []}, "labels must be a non-empty list"),
    ({"visual": {"sources": ["orig", 3]}}, r"visual.sources\[1\] must be str"),
])
def test_unknown_or_mistyped_keys_are_refused(data, message):
    with pytest.raises(ValueError, match=message):
        ModelConfig.from_dict(data)


def test_a_missing_key_reads_as_its_legacy_value_else_the_default():
    """A config.json from before a key existed is read as it was built: no BiLSTM, one softmax, a free CRF."""
    got = ModelConfig.from_dict({"iffe": {"iterations": 1}, "text": {"max_seq": 64}})
    assert (got.text.lstm_dim, got.him.source_attention, got.constrain_bio) == (0, False, False)
    assert got.iffe.iterations == 1 and got.text.max_seq == 64 and got.text.shape_dim == ModelConfig().text.shape_dim
    assert (ModelConfig().text.lstm_dim, ModelConfig().him.source_attention) == (256, True)  # new models: the recipe
    assert ModelConfig.from_dict({"text": {"lstm_dim": 8}, "him": {"source_attention": True}}).text.lstm_dim == 8


def test_checkpoints_from_before_bio_constraints_load_unconstrained():
    assert ModelConfig.from_dict({"text_only": True}).constrain_bio is False

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
    ({"text_only": "yes"}, "text_only has the wrong type"),
    ({"constrain_bio": 1}, "constrain_bio has the wrong type"),
])
def test_unknown_or_mistyped_keys_are_refused(data, message):
    with pytest.raises(ValueError, match=message):
        ModelConfig.from_dict(data)


def test_missing_keys_take_the_defaults():
    assert ModelConfig.from_dict({"iffe": {"iterations": 1}}) == ModelConfig(iffe=ModelConfig().iffe.__class__(1))


def test_checkpoints_from_before_bio_constraints_load_unconstrained():
    assert ModelConfig.from_dict({"text_only": True}).constrain_bio is False

"""Checkpoint save/load round trip, model_id, and the Tagger (windows, scores, routing) on a loaded checkpoint."""
from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from rpihmif.alignment import WindowTokenizer
from rpihmif.checkpoint import load_checkpoint, model_id, save_checkpoint
from rpihmif.errors import ModelError
from rpihmif.labels import LABELS
from rpihmif.model import build_model
from rpihmif.predictor import Tagger
from rpihmif.visual import collate_visual

WORDS = [["john", "smith", "in", "london"], ["rt", "@obama", "at", "the", "nba", "game", "today"]]


def _features(spec, seed):
    rng = np.random.default_rng(seed)
    k = spec.max_crops
    return {"orig": rng.standard_normal((spec.orig_tokens, spec.dim)), "orig_mask": True,
            "grounding": rng.standard_normal((k, spec.grounding_tokens, spec.dim)), "grounding_mask": np.array([True, False]),
            "rcnn": rng.standard_normal((k, spec.rcnn_tokens, spec.dim)), "rcnn_mask": np.array([True, True])}


@pytest.fixture(params=[False, True], ids=["free_crf", "bio_crf"])
def saved(tiny_model_config, tmp_path, request):
    torch.manual_seed(0)
    model, tokenizer = build_model(dataclasses.replace(tiny_model_config, constrain_bio=request.param))
    with torch.no_grad():  # make the CRF opinionated so decoded entities exist
        model.emission.bias.copy_(torch.linspace(-1, 1, len(LABELS)))
    # the checkpoint must not need the original encoder folder
    model.model_config = dataclasses.replace(model.model_config,
                                             text=dataclasses.replace(model.model_config.text, bert_name="/gone"))
    model.config.rpihmif = model.model_config.to_dict()
    folder = save_checkpoint(tmp_path / "ckpt", model.eval(), tokenizer, metrics={"f1": 12.5})
    return folder, model, tokenizer


def test_save_load_identical_predictions(saved):
    folder, model, tokenizer = saved
    assert {p.name for p in folder.iterdir()} >= {"model.safetensors", "config.json", "metrics.json", "tokenizer.json"}
    data = json.loads((folder / "config.json").read_text())
    assert data["rpihmif"]["labels"] == list(LABELS) and data["encoder"]["hidden_size"] == 32
    loaded, tok2, config = load_checkpoint(folder)
    assert loaded.crf.constrained is model.model_config.constrain_bio is data["rpihmif"]["constrain_bio"]
    assert config.text.bert_name == "gone"  # a local folder keeps only its name: no machine path in config.json
    assert config == dataclasses.replace(model.model_config, text=dataclasses.replace(model.model_config.text,
                                                                                     bert_name="gone"))
    assert not loaded.training
    spec = config.visual.spec()
    enc = WindowTokenizer.for_model(tok2, config)
    text = enc.collate([enc.encode_train(w)[0] for w in WORDS])
    visual = collate_visual([_features(spec, 1), None], spec)
    with torch.no_grad():
        a, b = model(text, visual), loaded(text, visual)
    assert torch.equal(a.emissions, b.emissions) and torch.equal(a.routing, b.routing)
    assert model.decode(a) == loaded.decode(b)
    feats = [_features(spec, 1), None]
    model.train()  # an in-memory Tagger (trainer evaluation) must predict in eval mode and restore the mode
    p1 = Tagger(model, tokenizer, model.model_config).predict(WORDS, feats)
    assert model.training
    p2 = Tagger.from_pretrained(folder).predict(WORDS, feats)
    assert p1 == p2


def test_model_id_stable_and_label_check(saved, tmp_path):
    folder, model, tokenizer = saved
    mid = model_id(folder)
    assert mid == model_id(folder) and len(mid) == 12
    assert model_id(save_checkpoint(tmp_path / "again", model, tokenizer)) == mid
    with torch.no_grad():
        model.emission.bias.add_(1.0)
    assert model_id(save_checkpoint(tmp_path / "changed", model, tokenizer)) != mid
    assert Tagger.from_pretrained(folder).model_id == mid
    load_checkpoint(folder, expected_labels=list(LABELS))
    with pytest.raises(ModelError, match="labels"):
        load_checkpoint(folder, expected_labels=["O", "B-PER", "I-PER"])
    with pytest.raises(ModelError, match="config.json"):
        load_checkpoint(tmp_path / "nowhere")


def test_tagger_long_tweet_scores_and_routing(saved):
    folder, _, _ = saved
    tagger = Tagger.from_pretrained(folder)
    spec = tagger.visual_spec
    long_tweet = [f"w{i}" for i in range(300)]
    words = [long_tweet, WORDS[0], [], WORDS[1]]
    preds = tagger.predict(words, [_features(spec, 2), _features(spec, 3), None, None], batch_size=3)
    assert [len(p.labels) for p in preds] == [300, 4, 0, 7]
    assert preds[0].image_used and not preds[3].image_used
    entities = [(i, e) for i, p in enumerate(preds) for e in p.entities]
    assert entities, "the biased emission layer should produce entities"
    for i, e in entities:
        assert 0 < e.score <= 1 and 0 <= e.start < e.end <= len(words[i])
        assert preds[i].labels[e.start].startswith("B-")
        if i in (0, 1):
            assert set(e.routing) == {"orig", "grounding", "rcnn"} and abs(sum(e.routing.values()) - 1) < 1e-4
        else:
            assert e.routing is None
    # windowed prediction of a long tweet agrees with itself in smaller batches and text-only input
    again = tagger.predict([long_tweet], [_features(spec, 2)], batch_size=5)
    assert again[0].labels == preds[0].labels
    with pytest.raises(ValueError, match="feature entries"):
        tagger.predict(WORDS, [None])

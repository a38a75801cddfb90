"""Prediction-time source control (`keep_sources`, `resolve_sources`, Tagger.predict(sources=, text_only=)) and
training-time source dropout (`drop_sources`)."""
import numpy as np
import pytest
import torch

from rpihmif.model import build_model
from rpihmif.predictor import Tagger
from rpihmif.visual import SOURCES, collate_visual, drop_sources, keep_sources, resolve_sources

WORDS = [["john", "smith", "visits", "london", "today"], ["google", "and", "apple", "love", "paris"]]


def _feature(spec, seed: int, rcnn: bool = True) -> dict:
    rng = np.random.default_rng(seed)
    k = spec.max_crops
    return {"orig": rng.normal(size=(spec.orig_tokens, spec.dim)).astype(np.float32), "orig_mask": np.bool_(True),
            "grounding": rng.normal(size=(k, spec.grounding_tokens, spec.dim)).astype(np.float32),
            "grounding_mask": np.ones(k, bool),
            "rcnn": rng.normal(size=(k, spec.rcnn_tokens, spec.dim)).astype(np.float32) * rcnn,
            "rcnn_mask": np.full(k, rcnn)}


@pytest.fixture
def tagger(tiny_model_config):
    torch.manual_seed(0)
    model, tokenizer = build_model(tiny_model_config)
    return Tagger(model.eval(), tokenizer)


def _forward(tagger, feats, keep=None):
    text = tagger.window_tokenizer.collate([tagger.window_tokenizer.encode_predict(w)[0] for w in WORDS])
    visual = collate_visual(feats, tagger.visual_spec)
    if keep is not None:
        visual = keep_sources(visual, keep)
    with torch.inference_mode():
        return tagger.model(text, visual)


def test_masking_a_source_that_is_absent_changes_nothing_bit_for_bit(tagger):
    feats = [_feature(tagger.visual_spec, i, rcnn=False) for i in range(len(WORDS))]
    full, masked = _forward(tagger, feats), _forward(tagger, feats, keep=("orig", "grounding"))
    assert torch.equal(full.emissions, masked.emissions) and torch.equal(full.routing, masked.routing)
    a = tagger.predict(WORDS, feats)
    b = tagger.predict(WORDS, feats, sources=["orig", "grounding"])
    assert a == b


def test_masking_a_present_source_removes_its_routing_share(tagger):
    feats = [_feature(tagger.visual_spec, i) for i in range(len(WORDS))]
    full, masked = _forward(tagger, feats), _forward(tagger, feats, keep=("orig", "grounding"))
    words = full.word_mask
    assert (full.routing[..., 2][words] > 0).all()  # rcnn carried a share before
    assert (masked.routing[..., 2][words] == 0).all()
    assert not torch.equal(full.emissions, masked.emissions)
    for pred in tagger.predict(WORDS, feats, sources=["orig"]):
        for ent in pred.entities:
            assert ent.routing["grounding"] == 0 and ent.routing["rcnn"] == 0


def test_text_only_is_every_source_masked_and_no_image(tagger):
    feats = [_feature(tagger.visual_spec, i) for i in range(len(WORDS))]
    text_only = tagger.predict(WORDS, feats, text_only=True)
    assert text_only == tagger.predict(WORDS, None)  # the same as tweets without an image
    assert not any(p.image_used for p in text_only)
    none = _forward(tagger, feats, keep=())
    assert not none.present.any() and (none.gate == 0).all()


def test_resolve_sources_checks_against_the_trained_sources():
    assert resolve_sources(SOURCES) == SOURCES
    assert resolve_sources(["orig", "rcnn"], ["rcnn", "orig"]) == ("orig", "rcnn")
    assert resolve_sources(SOURCES, ["orig"], text_only=True) == ()
    with pytest.raises(ValueError, match=r"not trained with \['rcnn'\]; use a subset of \['orig', 'grounding'\]"):
        resolve_sources(["orig", "grounding"], ["rcnn"])
    with pytest.raises(ValueError, match="not trained with"):
        resolve_sources(SOURCES, ["faces"])


def test_predict_refuses_a_source_the_model_was_not_trained_with(tiny_model_config):
    tiny_model_config.visual.sources = ["orig", "grounding"]
    model, tokenizer = build_model(tiny_model_config)
    with pytest.raises(ValueError, match="not trained with"):
        Tagger(model, tokenizer).predict(WORDS, None, sources=["rcnn"])


def _batch(spec, n: int):
    return collate_visual([_feature(spec, i) for i in range(n)], spec)


def test_source_dropout_masks_about_p_per_source_and_is_seeded(tiny_model_config):
    spec = tiny_model_config.visual.spec()
    batch = _batch(spec, 400)
    assert drop_sources(batch, 0.0, 0.0, torch.Generator().manual_seed(0)) is batch  # p = 0 draws nothing
    a = drop_sources(batch, 0.3, 0.0, torch.Generator().manual_seed(1))
    b = drop_sources(batch, 0.3, 0.0, torch.Generator().manual_seed(1))
    for s in SOURCES:
        assert torch.equal(getattr(a, f"{s}_mask"), getattr(b, f"{s}_mask"))
    dropped = {s: int((~getattr(a, f"{s}_mask").reshape(400, -1).any(-1)).sum()) for s in SOURCES}
    assert all(80 <= d <= 160 for d in dropped.values()), dropped  # ~120 of 400 each
    assert float(a.orig[~a.orig_mask].abs().sum()) == 0  # a dropped source's features are zero, as if missing
    c = drop_sources(batch, 0.3, 0.0, torch.Generator().manual_seed(2))
    assert not torch.equal(a.orig_mask, c.orig_mask)


def test_image_dropout_masks_whole_images():
    from rpihmif.visual import VisualLayout

    spec = VisualLayout(dim=4, orig_tokens=2, grounding_tokens=2, rcnn_tokens=2, max_crops=2)
    out = drop_sources(_batch(spec, 400), 0.0, 0.5, torch.Generator().manual_seed(0))
    gone = ~(out.orig_mask | out.grounding_mask.any(-1) | out.rcnn_mask.any(-1))  # (B,) no visual token left
    assert 160 <= int(gone.sum()) <= 240
    assert torch.equal(~out.orig_mask, gone) and torch.equal(~out.rcnn_mask.any(-1), gone)
    with pytest.raises(ValueError, match=r"in \[0, 1\)"):
        drop_sources(out, 1.0, 0.0, torch.Generator())

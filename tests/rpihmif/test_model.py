"""RPIHMIF model: shapes, masks (no image = text path exactly), routing, ablation switches, gradients, overfit."""
from __future__ import annotations

import dataclasses

import numpy as np
import torch

from rpihmif.alignment import WindowTokenizer
from rpihmif.config import IFFEConfig
from rpihmif.fusion import IFFE
from rpihmif.labels import LABEL2ID, LABELS, bio_spans
from rpihmif.model import build_model
from rpihmif.visual import collate_visual

TWEETS = [["john", "smith", "in", "london"], ["rt", "@obama", "at", "the", "nba", "game"],
          ["love", "new", "york", "today"]]
TAGS = [["B-PER", "I-PER", "O", "B-LOC"], ["O", "B-PER", "O", "O", "B-ORG", "O"], ["O", "B-LOC", "I-LOC", "O"]]


def make(config, seed=0):
    torch.manual_seed(seed)
    model, tokenizer = build_model(config)
    return model.eval(), WindowTokenizer.for_model(tokenizer, config)


def features(spec, seed, orig=True, grounding=(True, False), rcnn=(False, True)):
    rng = np.random.default_rng(seed)
    k = spec.max_crops
    return {"orig": rng.standard_normal((spec.orig_tokens, spec.dim)).astype(np.float32), "orig_mask": orig,
            "grounding": rng.standard_normal((k, spec.grounding_tokens, spec.dim)).astype(np.float32),
            "grounding_mask": np.array(grounding), "rcnn": rng.standard_normal((k, spec.rcnn_tokens, spec.dim)),
            "rcnn_mask": np.array(rcnn)}


def batch(enc, labels=True):
    windows = [enc.encode_train(w)[0] for w in TWEETS]
    return enc.collate(windows, [[LABEL2ID[t] for t in ts] for ts in TAGS] if labels else None)


def test_shapes_routing_and_gate(tiny_model_config):
    model, enc = make(tiny_model_config)
    spec = tiny_model_config.visual.spec()
    text = batch(enc)
    out = model(text, collate_visual([features(spec, 1), None, features(spec, 2, orig=False)], spec))
    b, w, c = 3, 6, tiny_model_config.him.num_capsules
    assert out.emissions.shape == (b, w, len(LABELS)) and out.loss.dim() == 0
    assert out.coupling.shape == (b, w, c) and out.routing.shape == (b, w, 3) and out.gate.shape == (b,)
    assert torch.allclose(out.coupling.sum(-1), torch.ones(b, w), atol=1e-5)  # coupling coefficients sum to 1
    assert torch.allclose(out.routing[[0, 2]].sum(-1), torch.ones(2, w), atol=1e-5)
    assert (out.routing[1] == 0).all() and out.gate[1] == 0 and out.present.tolist() == [True, False, True]
    assert (out.gate[[0, 2]] > 0).all() and (out.gate <= 1).all()
    assert [len(p) for p in model.decode(out)] == [4, 6, 4]


def test_no_image_or_all_masked_equals_text_path_exactly(tiny_model_config):
    model, enc = make(tiny_model_config)
    spec = tiny_model_config.visual.spec()
    text = batch(enc)
    with torch.no_grad():
        ref = model(text, None)
        masked = features(spec, 3, orig=False, grounding=(False, False), rcnn=(False, False))
        all_masked = model(text, collate_visual([masked, masked, None], spec))
        mixed = model(text, collate_visual([features(spec, 4), masked, None], spec))
    assert ref.routing is None and ref.gate is None
    assert torch.equal(all_masked.emissions, ref.emissions) and torch.equal(all_masked.loss, ref.loss)
    assert torch.isfinite(all_masked.routing).all() and (all_masked.routing == 0).all()
    assert torch.equal(mixed.emissions[1:], ref.emissions[1:])
    assert not torch.equal(mixed.emissions[0], ref.emissions[0])


def test_text_only_ignores_vision(tiny_model_config):
    config = dataclasses.replace(tiny_model_config, text_only=True)
    model, enc = make(config)
    assert model.iffe is None and model.him.visual is None
    spec = config.visual.spec()
    text = batch(enc)
    with torch.no_grad():
        a, b = model(text, None), model(text, collate_visual([features(spec, 5)] * 3, spec))
    assert torch.equal(a.emissions, b.emissions) and b.routing is None


def test_no_question_and_single_source(tiny_model_config):
    config = dataclasses.replace(tiny_model_config, him=dataclasses.replace(tiny_model_config.him, question=""),
                                 visual=dataclasses.replace(tiny_model_config.visual, sources=["orig"]))
    model, enc = make(config)
    assert model.him.text is None and set(model.him.visual.proj) == {"orig"}
    spec = config.visual.spec()
    text = batch(enc)
    with torch.no_grad():
        ref = model(text, None)
        out = model(text, collate_visual([features(spec, 6), features(spec, 7, orig=False), None], spec))
    assert not text.question_mask.any()
    assert torch.allclose(out.routing[0, :, 0], torch.ones(6)) and (out.routing[0, :, 1:] == 0).all()
    assert torch.equal(out.emissions[1:], ref.emissions[1:])  # crops only, but only "orig" is used -> no image


def test_iterations_zero_is_concatenation():
    torch.manual_seed(0)
    fusion = IFFE(IFFEConfig(iterations=0), text_dim=6, hidden=4)
    text, caps = torch.randn(2, 5, 6), torch.randn(2, 3, 4)
    mass = torch.softmax(torch.randn(2, 3, 3), -1)
    gate, present = torch.tensor([0.7, 0.0]), torch.tensor([True, False])
    out = fusion(text, caps, mass, gate, present)
    pooled = caps.mean(1, keepdim=True).expand(2, 5, 4)
    expected = text + 0.7 * fusion.concat(torch.cat([text, pooled], -1)) * torch.tensor([1.0, 0.0])[:, None, None]
    torch.testing.assert_close(out.features, expected)
    assert torch.allclose(out.coupling, torch.full((2, 5, 3), 1 / 3))
    torch.testing.assert_close(out.routing[0], mass[0].mean(0).expand(5, 3))


def test_iterations_rounds_change_fusion(tiny_model_config):
    spec = tiny_model_config.visual.spec()
    outs = []
    for it in (0, 1, 3):
        config = dataclasses.replace(tiny_model_config, iffe=IFFEConfig(iterations=it))
        model, enc = make(config)
        with torch.no_grad():
            out = model(batch(enc), collate_visual([features(spec, 8)] * 3, spec))
        assert torch.isfinite(out.emissions).all()
        assert torch.allclose(out.coupling.sum(-1), torch.ones(3, 6), atol=1e-5)
        outs.append(out.emissions)
    assert not torch.equal(outs[1], outs[2])


def test_gradients_reach_every_trainable_part(tiny_model_config):
    model, enc = make(tiny_model_config)
    model.train()
    spec = tiny_model_config.visual.spec()
    feats = [features(spec, 9, grounding=(True, True), rcnn=(True, True))] * 3
    model(batch(enc), collate_visual(feats, spec)).loss.backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert missing == []
    for part in ("encoder", "shape", "him.text", "him.visual", "iffe", "emission", "crf"):
        norm = sum(p.grad.abs().sum() for n, p in model.named_parameters() if n.startswith(part + "."))
        assert norm > 0, part
    groups = model.param_groups(1e-5, 1e-3, 1e-2, 0.01)
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))
    by_name = {g["name"]: g for g in groups}
    assert by_name["crf_no_decay"]["lr"] == 1e-2 and by_name["text"]["weight_decay"] == 0.01
    ln = model.him.visual.norm1.weight
    assert any(p is ln for p in by_name["fusion_no_decay"]["params"])


def test_deterministic_by_seed(tiny_model_config):
    spec = tiny_model_config.visual.spec()
    runs = []
    for _ in range(2):
        model, enc = make(tiny_model_config, seed=3)
        model.train()
        torch.manual_seed(11)
        opt = torch.optim.AdamW(model.param_groups(1e-3, 1e-3, 1e-2, 0.01))
        out = model(batch(enc), collate_visual([features(spec, 10)] * 3, spec))
        out.loss.backward()
        opt.step()
        with torch.no_grad():
            runs.append(model.eval()(batch(enc), collate_visual([features(spec, 10)] * 3, spec)).emissions)
    assert torch.equal(runs[0], runs[1])


def _f1(gold: list[list[str]], pred: list[list[str]]) -> float:
    g = {(i, s) for i, ts in enumerate(gold) for s in bio_spans(ts)}
    p = {(i, s) for i, ts in enumerate(pred) for s in bio_spans(ts)}
    tp = len(g & p)
    return 2 * tp / max(len(g) + len(p), 1)


def test_tiny_model_overfits_30_tweets(tiny_model_config):
    config = dataclasses.replace(tiny_model_config, text=dataclasses.replace(tiny_model_config.text, dropout=0.0))
    model, enc = make(config, seed=1)
    rng = np.random.default_rng(0)
    names = {"PER": ["john smith", "obama"], "LOC": ["london", "new york", "paris"], "ORG": ["google", "apple"],
             "MISC": ["nba"]}
    filler = ["the", "in", "at", "love", "today", "game", "rt", "a"]
    tweets, gold = [], []
    for _ in range(30):
        words, tags = [], []
        for _ in range(rng.integers(1, 3)):
            words.append(filler[rng.integers(len(filler))]), tags.append("O")
            etype = list(names)[rng.integers(4)]
            ent = names[etype][rng.integers(len(names[etype]))].split()
            words += ent
            tags += [f"B-{etype}"] + [f"I-{etype}"] * (len(ent) - 1)
        tweets.append(words), gold.append(tags)
    windows = [enc.encode_train(w)[0] for w in tweets]
    text = enc.collate(windows, [[LABEL2ID[t] for t in ts] for ts in gold])
    opt = torch.optim.AdamW(model.param_groups(2e-3, 5e-3, 5e-2, 0.0))
    model.train()
    for _ in range(30):
        opt.zero_grad()
        model(text, None).loss.backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        pred = [[LABELS[t] for t in p] for p in model.decode(model(text, None))]
    assert _f1(gold, pred) > 0.95, _f1(gold, pred)


def test_model_without_images_starts_like_the_text_only_model(tiny_model_config, tiny_bert_dir):
    """Same seed: the multimodal model's text-path weights equal the text-only model's (visual layers init last)."""
    import dataclasses

    import torch

    from rpihmif.model import build_model

    torch.manual_seed(3)
    full, _ = build_model(tiny_model_config)
    torch.manual_seed(3)
    text_only, _ = build_model(dataclasses.replace(tiny_model_config, text_only=True))
    full_state = full.state_dict()
    for name, value in text_only.state_dict().items():
        assert torch.equal(value, full_state[name]), name

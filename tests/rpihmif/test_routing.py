"""Routing explanation (issue 15): with him.source_attention the per-source share is each source's graded share of the
capsule update; sums to 1 with an image, 0 without; checkpoints from before the option load as they were; probes."""
from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from rpihmif.alignment import WindowTokenizer
from rpihmif.checkpoint import load_checkpoint, save_checkpoint
from rpihmif.model import build_model
from rpihmif.visual import collate_visual

WORDS = [["john", "smith", "in", "london"], ["rt", "@obama", "at", "the", "nba", "game"], ["love", "new", "york"]]
# end-to-end floors of test_routing_points_at_the_cue_source_on_the_sample (its config: _train_on_sample), measured
# over training seeds 1 / 2 / 3 (1 thread): the worst seed minus a margin
ROUTING_MIN_ARGMAX_ON_CUE = 90.0  # % of image-decided entities whose largest routing share is their cue (100/98.3/100)
OCCLUSION_MIN_ON_CUE = 85.0  # % whose score drops most when their cue source is masked (100/100/100)
ROUTING_MAX_QUARTER_VALUED = 20.0  # % of routing triples within 0.01 of multiples of 0.25 (7.4/5.1/10.7)
ROUTING_MIN_F1 = 85.0  # dev F1 of the image-decided tweets, entities and decoys (91.6/94.5/97.6)


def _config(tiny_model_config, source_attention: bool):
    him = dataclasses.replace(tiny_model_config.him, source_attention=source_attention)
    return dataclasses.replace(tiny_model_config, him=him)


def _model(config, seed=0):
    torch.manual_seed(seed)
    model, tokenizer = build_model(config)
    enc = WindowTokenizer.for_model(tokenizer, config)
    return model.eval(), tokenizer, enc.collate([enc.encode_train(w)[0] for w in WORDS])


def _features(spec, seed, grounding_scale=1.0):
    rng = np.random.default_rng(seed)
    k = spec.max_crops
    return {"orig": rng.standard_normal((spec.orig_tokens, spec.dim)).astype(np.float32), "orig_mask": True,
            "grounding": grounding_scale * rng.standard_normal((k, spec.grounding_tokens, spec.dim)),
            "grounding_mask": np.array([True, True]), "rcnn": rng.standard_normal((k, spec.rcnn_tokens, spec.dim)),
            "rcnn_mask": np.array([True, False])}


def _quarter_valued(routing: torch.Tensor, tol: float = 0.01) -> torch.Tensor:
    """(..., 3) -> (...) bool: every share within tol of a multiple of 0.25."""
    return ((4 * routing - (4 * routing).round()).abs() <= 4 * tol).all(-1)


def _sharpen_heads(model) -> None:
    """Scale the capsule queries so each head's token softmax is nearly one-hot (one token, so one source, per head)."""
    with torch.no_grad():
        model.him.visual.q.weight.mul_(400.0)
        model.him.visual.q.bias.mul_(400.0)


def test_flat_heads_quantize_source_attention_stays_graded(tiny_model_config):
    """The old mass is a head count once heads focus; the source-stage softmax is not, and it moves continuously."""
    spec = tiny_model_config.visual.spec()
    feats = [_features(spec, s) for s in (1, 2, 3)]
    flat, _, text = _model(_config(tiny_model_config, False))
    _sharpen_heads(flat)
    with torch.no_grad():
        old = flat(text, collate_visual(feats, spec)).routing
    assert _quarter_valued(old).float().mean() > 0.9  # 2 heads, each on one source: shares of 0, 0.5, 1
    model, _, text = _model(_config(tiny_model_config, True))
    _sharpen_heads(model)
    visual = collate_visual(feats, spec)
    weight, bias = model.him.visual.source_q.weight.clone(), model.him.visual.source_q.bias.clone()
    curve = []
    with torch.no_grad():
        for t in np.linspace(0.0, 6.0, 25):  # the source stage's query scaled: from indifferent to decided
            model.him.visual.source_q.weight.copy_(t * weight)
            model.him.visual.source_q.bias.copy_(t * bias)
            curve.append(model(text, visual).routing)
    curve = torch.stack(curve)
    assert (curve[0, 1] > 0.1).all()  # t = 0: equal mixture weights, every source holds a share
    assert _quarter_valued(curve).float().mean() < 0.05
    steps = (curve[1:] - curve[:-1]).abs()
    assert steps.max() < 0.05 and (curve[-1] - curve[0]).abs().max() > 0.1  # moves, in small steps


@pytest.mark.parametrize("source_attention", [False, True])
def test_routing_sums_to_one_with_an_image_and_zero_without(tiny_model_config, source_attention):
    config = _config(tiny_model_config, source_attention)
    spec = config.visual.spec()
    model, _, text = _model(config)
    masked = {**_features(spec, 4), "orig_mask": False, "grounding_mask": np.array([False, False]),
              "rcnn_mask": np.array([False, False])}
    only_rcnn = {**masked, "rcnn_mask": np.array([False, True])}
    with torch.no_grad():
        out = model(text, collate_visual([_features(spec, 5), masked, only_rcnn], spec))
        ref = model(text, None)
    w = out.routing.size(1)
    assert torch.allclose(out.routing[0].sum(-1), torch.ones(w), atol=1e-5)
    assert torch.isfinite(out.routing).all() and (out.routing[1] == 0).all()
    torch.testing.assert_close(out.routing[2], torch.tensor([[0.0, 0.0, 1.0]]).expand(w, 3))  # the only source
    assert torch.equal(out.emissions[1], ref.emissions[1])  # all masked = the text path exactly


def test_source_mass_is_each_sources_share_of_the_capsule_update(tiny_model_config):
    """Capsule head outputs = sum over sources of (mixture weight w x pooled summary z), and the source mass is
    w * |W_o z| normalised: each source's share of the update by vector norm, exactly."""
    config = _config(tiny_model_config, True)
    spec = config.visual.spec()
    model, _, _ = _model(config)
    visual = collate_visual([_features(spec, s) for s in (6, 7, 8)], spec)
    torch.manual_seed(1)
    # shape: (B, W, Dt) words, (B, W) mask, (B, Ht) question
    words, word_mask, question = torch.randn(3, 5, 40), torch.ones(3, 5, dtype=torch.bool), torch.randn(3, 32)
    seen = []
    model.him.visual.o.register_forward_hook(lambda m, args, out: seen.append(args[0]))
    with torch.no_grad():
        mass = model.him.visual(words, word_mask, question, visual)[1]
        for keep in ("orig", "grounding", "rcnn"):  # one source alone: its mass is 1, the output its summary
            masks = {f"{s}_mask": getattr(visual, f"{s}_mask") & (s == keep) for s in ("orig", "grounding", "rcnn")}
            model.him.visual(words, word_mask, question, dataclasses.replace(visual, **masks))
    # shape: (B, C, 3, D) summaries; (B, C, 3) their norms through the output projection
    z = torch.stack(seen[1:], 2)
    norm = (z @ model.him.visual.o.weight.T).norm(dim=-1)
    weight = mass / norm
    weight = weight / weight.sum(-1, keepdim=True)  # the mixture weights the shares imply
    torch.testing.assert_close(seen[0], (weight.unsqueeze(-1) * z).sum(2))
    assert ((mass > 0.05) & (mass < 0.95)).all()  # a fresh model mixes all three
    assert not torch.allclose(mass, weight, atol=1e-3)  # the share is not the bare mixture weight


def test_checkpoint_without_the_key_loads_as_flat_attention(tiny_model_config, tmp_path):
    """A config.json written before source_attention existed loads strictly, as the one-softmax model it was."""
    config = _config(tiny_model_config, False)
    model, tokenizer, text = _model(config)
    folder = save_checkpoint(tmp_path / "old", model, tokenizer, metrics={})
    data = json.loads((folder / "config.json").read_text())
    del data["rpihmif"]["him"]["source_attention"]
    (folder / "config.json").write_text(json.dumps(data))
    loaded, _, loaded_config = load_checkpoint(folder)
    assert loaded_config.him.source_attention is False and loaded.him.visual.source_q is None
    spec = config.visual.spec()
    visual = collate_visual([_features(spec, 9), None, _features(spec, 10)], spec)
    with torch.no_grad():
        a, b = model(text, visual), loaded(text, visual)
    assert torch.equal(a.emissions, b.emissions) and torch.equal(a.routing, b.routing)
    new = _model(_config(tiny_model_config, True))[0]
    assert {k for k in new.state_dict() if k not in model.state_dict()} == {
        "him.visual.source_q.weight", "him.visual.source_q.bias", "him.visual.source_k.weight",
        "him.visual.source_k.bias"}



def test_routing_probe_counts_cue_against_argmax():
    """The probe scores exact-span, right-type image-decided entities whose cue source the model sees."""
    from types import SimpleNamespace

    from pipeline.train.routing_probe import quarter_valued, routing_probe
    from rpihmif.predictor import Entity, Prediction

    def feat(*present):
        return {f"{s}_mask": np.array([s in present]) for s in ("orig", "grounding", "rcnn")}

    tweets = [SimpleNamespace(image_id=i, labels=["B-ORG", "O"]) for i in ("a", "b", "c", "d", "e")]
    tweets.append(SimpleNamespace(image_id="f", labels=["O", "O"]))
    cues = {i: {"type": "ORG", "cue_source": c} for i, c in zip("abcd", ("grounding", "rcnn", "orig", "rcnn"))}
    cues["f"] = {"type": None, "cue_source": None}  # a decoy: no entity, no cue
    graded, quarters = {"orig": 0.1, "grounding": 0.7, "rcnn": 0.2}, {"orig": 0.0, "grounding": 0.25, "rcnn": 0.75}
    preds = [Prediction(["B-ORG", "O"], [Entity("ORG", 0, 1, 0.9, graded)]),  # hit
             Prediction(["B-ORG", "O"], [Entity("ORG", 0, 1, 0.9, graded)]),  # cue rcnn, argmax grounding
             Prediction(["B-PER", "O"], [Entity("PER", 0, 1, 0.9, quarters)]),  # wrong type: not scored
             Prediction(["B-ORG", "O"], [Entity("ORG", 0, 1, 0.9, quarters)]),  # cue rcnn unseen: not scored
             Prediction(["B-ORG", "O"], [Entity("ORG", 0, 1, 0.9, quarters)]),  # text-decided: quarter share only
             Prediction(["B-ORG", "O"], [Entity("ORG", 0, 1, 0.9, graded)])]  # a decoy's false entity: share only
    feats = [feat("orig", "grounding", "rcnn"), feat("orig", "grounding", "rcnn"), feat("orig"), feat("orig"),
             feat("orig", "rcnn"), feat("orig", "grounding")]
    r = routing_probe(tweets, preds, feats, cues, ["orig", "grounding", "rcnn"])["routing"]
    assert (r["entities"], r["accuracy"], r["chance"]) == (2, 50.0, 33.33)
    assert r["argmax_by_cue_source"] == {"grounding": {"grounding": 1}, "rcnn": {"grounding": 1}}
    assert (r["routed_entities"], r["quarter_valued"]) == (4, 25.0)  # c and d see one source only: not counted
    assert quarter_valued({"orig": 0.009, "grounding": 0.5, "rcnn": 0.491}) and not quarter_valued(graded)
    assert routing_probe(tweets, preds, feats, cues, ["orig"]) == {}


def test_occlusion_probe_picks_the_source_whose_masking_costs_most():
    """Leave-one-source-out: masking the source the prediction depends on loses the entity (drop = its score)."""
    from types import SimpleNamespace

    from pipeline.train.routing_probe import occlusion_probe
    from rpihmif.predictor import Entity, Prediction

    def feat(*present):
        return {f"{s}_mask": np.array([s in present, False]) for s in ("orig", "grounding", "rcnn")}

    def predict(words, feats, batch_size=64):  # the entity needs grounding; without rcnn its score drops a little
        out = []
        for f in feats:
            if not f["grounding_mask"].any():
                out.append(Prediction(["O", "O"], []))
            else:
                out.append(Prediction(["B-LOC", "O"], [Entity("LOC", 0, 1, 0.8 if f["rcnn_mask"].any() else 0.6)]))
        return out

    tagger = SimpleNamespace(config=SimpleNamespace(visual=SimpleNamespace(sources=["orig", "grounding", "rcnn"])),
                             predict=predict)
    tweets = [SimpleNamespace(image_id=i, words=["x", "y"], labels=["B-LOC", "O"]) for i in ("a", "b", "c")]
    cues = {"a": {"type": "LOC", "cue_source": "grounding"}, "b": {"type": "LOC", "cue_source": "rcnn"},
            "c": {"type": None, "cue_source": None}}
    feats = [feat("orig", "grounding", "rcnn"), feat("orig", "grounding", "rcnn"), feat("orig", "grounding")]
    preds = predict(None, feats)
    r = occlusion_probe(tagger, tweets, preds, feats, cues)["occlusion"]
    assert (r["entities"], r["accuracy"], r["chance"]) == (2, 50.0, 33.33)
    assert r["argmax_by_cue_source"] == {"grounding": {"grounding": 1}, "rcnn": {"grounding": 1}}
    tagger.config.visual.sources = ["orig"]
    assert occlusion_probe(tagger, tweets, preds, feats, cues) == {}

def _train_on_sample(tmp_path, seed: int) -> dict:
    """make-sample (seed 0, 200 train / 100 dev tweets), a random-init 4-layer ViT of hidden 256, the default train
    config for 8 epochs with training seed `seed` and no FGM step (routing does not need it; half the CPU); returns
    probe_sample_run of run/best."""
    from pipeline.extract.stage import run_extract
    from pipeline.io.sample import DATASET, make_sample
    from pipeline.stage_config import stage_config
    from pipeline.train.routing_probe import probe_sample_run
    from pipeline.train.trainer import train

    data, cache, run = tmp_path / "data", tmp_path / "cache", tmp_path / "run"
    make_sample(data, seed=0, sizes={"train": 200, "valid": 100, "test": 10})
    common = [f"data_dir={data}", f"dataset={DATASET}", f"cache_dir={cache}"]
    run_extract(stage_config("extract", overrides=[*common, "random_vit_layers=4", "random_vit_hidden=256",
                                                   "workers=0"]))
    train(stage_config("train", overrides=[*common, f"save_path={run}", "num_epochs=8", f"seed={seed}", "adversarial_eps=0",
                                           "device=cpu"]))
    return probe_sample_run(run / "best", data, DATASET, cache)


@pytest.mark.slow
@pytest.mark.timeout(1200)  # ~700 s measured with three such runs at once beside two trainings on 2 cores
def test_routing_points_at_the_cue_source_on_the_sample(tmp_path):
    """End to end with the default train config (no FGM step) on the generated sample: the routing argmax of
    image-decided dev entities sits on the one source holding their cue (and masking that source costs the most),
    with graded shares."""
    r = _train_on_sample(tmp_path, seed=1)
    routing = r["routing"]
    assert routing["entities"] >= 50 and r["dev_image_decided_f1"] >= ROUTING_MIN_F1
    assert routing["accuracy"] >= ROUTING_MIN_ARGMAX_ON_CUE, routing
    assert routing["quarter_valued"] <= ROUTING_MAX_QUARTER_VALUED, routing
    assert r["occlusion"]["accuracy"] >= OCCLUSION_MIN_ON_CUE, r["occlusion"]

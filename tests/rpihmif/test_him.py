"""HIM on its own: question-aware text, task-guided visual capsules over masked sources, source shares and the gate.

Tiny sizes (hidden 16, 2 heads, Dv 8); every check is on the module's outputs, not on its internals.
"""
from __future__ import annotations

import math

import pytest
import torch

from rpihmif.config import HIMConfig, VisualConfig
from rpihmif.him import HIM, SOURCE_LOGIT_BOUND, VisualCapsules, masked_mean
from rpihmif.visual import SOURCES, VisualBatch

B, W, DT, HT, DV, K = 3, 5, 12, 10, 8, 2


def _visual(orig: list[bool], grounding: list[list[bool]], rcnn: list[list[bool]], seed: int = 0) -> VisualBatch:
    g = torch.Generator().manual_seed(seed)
    n = len(orig)
    return VisualBatch(
        orig=torch.randn(n, 4, DV, generator=g), orig_mask=torch.tensor(orig),
        grounding=torch.randn(n, K, 3, DV, generator=g), grounding_mask=torch.tensor(grounding),
        rcnn=torch.randn(n, K, 2, DV, generator=g), rcnn_mask=torch.tensor(rcnn))


def _capsules(source_attention: bool, sources=SOURCES, question: bool = False) -> VisualCapsules:
    torch.manual_seed(0)
    config = HIMConfig(num_capsules=4, hidden=16, heads=2, source_attention=source_attention)
    visual = VisualConfig(sources=list(sources), dim=DV, orig_tokens=4, grounding_tokens=3, rcnn_tokens=2, max_crops=K)
    return VisualCapsules(config, visual, DT, HT, use_question=question).eval()


def _text(seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    mask = torch.ones(B, W, dtype=torch.bool)
    mask[2, 3:] = False
    return torch.randn(B, W, DT, generator=g), mask


def test_masked_mean_ignores_masked_positions_and_gives_zeros_for_an_empty_row():
    x = torch.arange(2 * 3 * 2, dtype=torch.float32).view(2, 3, 2)
    mask = torch.tensor([[True, False, True], [False, False, False]])
    out = masked_mean(x, mask)
    assert torch.equal(out[0], (x[0, 0] + x[0, 2]) / 2)
    assert torch.equal(out[1], torch.zeros(2))


@pytest.mark.parametrize("source_attention", [True, False])
def test_source_shares_sum_to_one_over_present_sources_and_are_zero_for_absent_ones(source_attention):
    caps = _capsules(source_attention)
    text, mask = _text()
    # tweet 0: all three sources; tweet 1: only RCNN crops; tweet 2: no image at all
    visual = _visual([True, False, False], [[True, True], [False, False], [False, False]],
                     [[True, False], [True, True], [False, False]])
    with torch.no_grad():
        out, mass, gate, present = caps(text, mask, None, visual)
    assert out.shape == (B, 4, 16) and mass.shape == (B, 4, len(SOURCES))
    assert present.tolist() == [True, True, False]
    assert torch.allclose(mass[0].sum(-1), torch.ones(4), atol=1e-5)
    assert (mass[0] > 0).all()
    assert torch.allclose(mass[1, :, 2], torch.ones(4), atol=1e-5) and torch.equal(mass[1, :, :2], torch.zeros(4, 2))
    assert torch.equal(mass[2], torch.zeros(4, 3))
    assert gate[2] == 0 and 0 < gate[0] < 1 and torch.isfinite(out).all()


@pytest.mark.parametrize("source_attention", [True, False])
def test_a_masked_crop_never_reaches_the_capsules(source_attention):
    caps = _capsules(source_attention)
    text, mask = _text()
    masks = ([True, True, True], [[True, False], [True, False], [False, False]], [[False, True], [True, False], [True, True]])
    a, b = _visual(*masks, seed=3), _visual(*masks, seed=3)
    b.grounding[:, 1] = 1e3  # only the masked second grounding crop changes (and tweet 2's masked grounding)
    b.rcnn[0, 0] = -1e3  # tweet 0's masked first RCNN crop
    with torch.no_grad():
        first, second = caps(text, mask, None, a), caps(text, mask, None, b)
    for x, y in zip(first, second):
        assert torch.equal(x, y)


def test_source_mix_weights_stay_graded_under_the_logit_bound():
    caps = _capsules(True)
    with torch.no_grad():
        caps.source_q.weight.mul_(1e4)  # push the source logits far apart
    text, mask = _text()
    visual = _visual([True] * B, [[True, True]] * B, [[False, False]] * B)
    with torch.no_grad():
        _, mass, _, _ = caps(text, mask, None, visual)
    bound = 1 / (1 + math.exp(-2 * SOURCE_LOGIT_BOUND))  # the largest weight two sources can give one of them
    assert bound == pytest.approx(0.982, abs=1e-3)
    assert torch.equal(mass[..., 2], torch.zeros(B, 4))
    # the share also weighs the summary's norm, so it may pass the weight bound a little, never reach 0 or 1
    assert (mass[..., :2] > 1e-4).all() and (mass[..., :2] < 1 - 1e-4).all()


def test_a_source_the_model_does_not_use_gets_no_share_and_no_influence():
    caps = _capsules(True, sources=("orig", "rcnn"))
    assert caps.sources == ["orig", "rcnn"] and set(caps.proj) == {"orig", "rcnn"}
    text, mask = _text()
    masks = ([True] * B, [[True, True]] * B, [[True, False]] * B)
    a, b = _visual(*masks, seed=5), _visual(*masks, seed=5)
    b.grounding.normal_()
    with torch.no_grad():
        first, second = caps(text, mask, None, a), caps(text, mask, None, b)
    assert torch.equal(first[0], second[0]) and torch.equal(first[1][..., 1], torch.zeros(B, 4))


@pytest.mark.parametrize("kwargs, message", [
    (dict(hidden=15, heads=2), "divisible"),
    (dict(sources=["orig", "pixels"]), "subset"),
    (dict(sources=[]), "subset"),
])
def test_bad_sizes_and_sources_are_refused_with_the_values(kwargs, message):
    sources = kwargs.pop("sources", list(SOURCES))
    config = HIMConfig(num_capsules=2, hidden=kwargs.get("hidden", 16), heads=kwargs.get("heads", 2))
    with pytest.raises(ValueError, match=message):
        VisualCapsules(config, VisualConfig(sources=sources, dim=DV), DT, HT, use_question=False)


def test_him_without_question_passes_words_through_and_text_only_has_no_capsules():
    words, mask = _text()
    states, qmask = torch.randn(B, 7, HT), torch.zeros(B, 7, dtype=torch.bool)
    visual = _visual([True] * B, [[True, False]] * B, [[True, True]] * B)
    vis_config = VisualConfig(dim=DV, orig_tokens=4, grounding_tokens=3, rcnn_tokens=2, max_crops=K)
    plain = HIM(HIMConfig(question="", hidden=16, heads=2, num_capsules=4), vis_config, DT, HT, text_only=False)
    out = plain(states, qmask, words, mask, visual)
    assert out.question is None and torch.equal(out.text, words) and out.capsules.shape == (B, 4, 16)
    text_only = HIM(HIMConfig(question="which entities?", hidden=16, heads=2), vis_config, DT, HT, text_only=True)
    qmask[:, 1:3] = True
    out = text_only(states, qmask, words, mask, visual)
    assert out.capsules is None and out.gate is None
    assert out.question.shape == (B, HT) and torch.allclose(out.question, states[:, 1:3].mean(1))
    assert out.text.shape == words.shape and not torch.equal(out.text, words)

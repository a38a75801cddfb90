"""FGM adversarial training (`adversarial_eps`): the perturbation itself, and a tiny joint run that uses it.

Two tiny datasets named like the Twitter benchmarks are written by the test; nothing here needs ../shared/data.
"""
from __future__ import annotations

import json

import pytest
import torch
from helpers import tiny_overrides

from exit_codes import UsageError
from pipeline.stage_config import stage_config
from pipeline.train.adversarial import adversarial_backward, perturbed
from pipeline.train.trainer import Trainer, train


def _embedding_with_grad(rows: list[int]) -> torch.nn.Embedding:
    torch.manual_seed(0)
    embedding = torch.nn.Embedding(10, 4, padding_idx=0)  # as BERT's word embeddings: [PAD] gets no gradient
    embedding(torch.tensor(rows)).pow(2).sum().backward()
    return embedding


def test_only_the_rows_a_batch_used_move_by_epsilon_along_the_gradient_and_come_back_exactly():
    ids = torch.tensor([[1, 3, 3, 0, 0]])  # a padded batch, shaped (B, T) as the trainer passes it
    embedding = _embedding_with_grad(ids.flatten().tolist())
    before, grad = embedding.weight.detach().clone(), embedding.weight.grad.clone()
    with perturbed(embedding, 0.5, ids) as moved:
        assert moved
        delta = embedding.weight.detach() - before
        assert torch.equal(delta.abs().sum(1) > 0, torch.tensor([i in (1, 3) for i in range(10)]))
        assert delta.norm().item() == pytest.approx(0.5, rel=1e-5)  # L2 over the used rows together
        assert torch.allclose(delta[[1, 3]], 0.5 * grad[[1, 3]] / grad[[1, 3]].norm())
    assert torch.equal(embedding.weight.detach(), before)  # restored bit for bit, not by subtracting


def test_restored_even_when_the_adversarial_pass_raises():
    embedding = _embedding_with_grad([2])
    before = embedding.weight.detach().clone()
    with pytest.raises(RuntimeError, match="boom"), perturbed(embedding, 1.0, torch.tensor([2])):
        raise RuntimeError("boom")
    assert torch.equal(embedding.weight.detach(), before)


@pytest.mark.parametrize("grad", [None, "zero", "nan"])
def test_no_usable_gradient_moves_nothing(grad):
    embedding = torch.nn.Embedding(5, 3)
    if grad is not None:
        embedding.weight.grad = torch.zeros(5, 3) if grad == "zero" else torch.full((5, 3), float("nan"))
    before = embedding.weight.detach().clone()
    with perturbed(embedding, 1.0, torch.tensor([[0, 1, 4]])) as moved:
        assert not moved and torch.equal(embedding.weight.detach(), before)


def test_adversarial_backward_adds_the_gradient_at_the_moved_point():
    ids = torch.tensor([0, 2, 2])
    embedding = _embedding_with_grad(ids.tolist())  # clean loss: sum of squares of the looked-up rows
    clean, before = embedding.weight.grad.clone(), embedding.weight.detach().clone()
    moved = before.clone()
    moved[[0, 2]] += 0.3 * clean[[0, 2]] / clean[[0, 2]].norm()
    assert adversarial_backward(embedding, 0.3, ids, lambda: embedding(ids).pow(2).sum())
    moved_grad = torch.zeros_like(clean).index_add_(0, ids, 2 * moved[ids])  # d/dw of sum(w[ids]^2) at the moved w
    assert torch.allclose(embedding.weight.grad, clean + moved_grad)
    assert torch.equal(embedding.weight.detach(), before)
    calls = []
    assert not adversarial_backward(torch.nn.Embedding(3, 2), 0.3, ids, lambda: calls.append(1))  # no gradient yet
    assert calls == []


def _cfg(tiny_bert_dir, data, run, dataset="twitter2015", **extra):
    return stage_config("train", overrides=tiny_overrides(tiny_bert_dir, data / dataset, run,
                                                          **{"num_epochs": 2, "train_also": "auto", **extra}))


def test_a_run_with_fgm_trains_differently_and_saves_a_normal_checkpoint(tiny_bert_dir, two_datasets, tmp_path):
    plain = train(_cfg(tiny_bert_dir, two_datasets, tmp_path / "plain", adversarial_eps=0))
    fgm = train(_cfg(tiny_bert_dir, two_datasets, tmp_path / "fgm", adversarial_eps=1.0))
    metrics = {r: json.loads((tmp_path / r / "metrics.json").read_text()) for r in ("plain", "fgm")}
    # the second loss changes every update after the first step, so both epochs' mean losses move
    assert all(a["loss"] != b["loss"] for a, b in zip(metrics["plain"]["epochs"], metrics["fgm"]["epochs"]))
    assert metrics["fgm"]["config"]["adversarial_eps"] == 1.0 and metrics["plain"]["config"]["adversarial_eps"] == 0
    assert fgm["model"] == str(tmp_path / "fgm" / "best") and plain["model"] == str(tmp_path / "plain" / "best")
    # the pair's other run trains identically with FGM too, so either command reproduces both datasets' scores
    train(_cfg(tiny_bert_dir, two_datasets, tmp_path / "fgm17", "twitter2017", adversarial_eps=1.0))
    other = json.loads((tmp_path / "fgm17" / "metrics.json").read_text())["epochs"]
    assert [e["loss"] for e in other] == [e["loss"] for e in metrics["fgm"]["epochs"]]
    assert [e["dev"] for e in other] == [e["dev_also"]["twitter2017"] for e in metrics["fgm"]["epochs"]]
    # FGM keeps no state of its own: the run resumes from its last/ like any other
    trainer = Trainer(_cfg(tiny_bert_dir, two_datasets, tmp_path / "again", adversarial_eps=1.0))
    trainer.resume(str(tmp_path / "fgm"))
    assert trainer.epoch == 2 and trainer.history == metrics["fgm"]["epochs"]


def test_a_negative_epsilon_is_refused_with_its_range(tiny_bert_dir, two_datasets, tmp_path):
    with pytest.raises(UsageError, match=r"adversarial_eps.*>= 0"):
        _cfg(tiny_bert_dir, two_datasets, tmp_path / "x", adversarial_eps=-1)

"""CRF head: Viterbi decode, loss and forward-backward marginals against brute-force enumeration."""
from __future__ import annotations

import itertools

import pytest
import torch

from rpihmif.crf_head import FORBIDDEN, CRFHead, bio_transitions


def _path_score(crf, em, path):
    s = crf.start_transitions[path[0]] + em[0, path[0]]
    for t in range(1, len(path)):
        s = s + crf.transitions[path[t - 1], path[t]] + em[t, path[t]]
    return s + crf.end_transitions[path[-1]]


def _setup():
    torch.manual_seed(0)
    head = CRFHead(3)
    for p in head.crf.parameters():
        torch.nn.init.normal_(p)
    em = torch.randn(4, 4, 3)
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0], [1, 0, 0, 0], [0, 0, 0, 0]], dtype=torch.bool)
    return head, em, mask


def test_decode_loss_marginals_match_brute_force():
    head, em, mask = _setup()
    crf = head.crf
    paths = head.decode(em, mask)
    marg = head.marginals(em, mask)
    nll = []
    for b in range(3):
        n = int(mask[b].sum())
        all_paths = list(itertools.product(range(3), repeat=n))
        scores = torch.stack([_path_score(crf, em[b], p) for p in all_paths])
        assert paths[b] == list(all_paths[int(scores.argmax())])
        probs = torch.softmax(scores, 0)
        brute = torch.zeros(n, 3)
        for p, pr in zip(all_paths, probs):
            for t, tag in enumerate(p):
                brute[t, tag] += pr
        torch.testing.assert_close(marg[b, :n], brute, atol=1e-5, rtol=1e-4)
        assert torch.allclose(marg[b, :n].sum(-1), torch.ones(n), atol=1e-5)
        assert (marg[b, n:] == 0).all()
        nll.append(torch.logsumexp(scores, 0) - _path_score(crf, em[b], [0] * n))  # NLL of the all-zero tags
    assert paths[3] == [] and (marg[3] == 0).all()
    tags = torch.zeros(4, 4, dtype=torch.long)
    torch.testing.assert_close(head.loss(em, tags, mask), torch.stack(nll).sum() / 4)


def test_bad_shapes_raise():
    head, em, mask = _setup()
    with pytest.raises(ValueError, match="expected emissions"):
        head.decode(em[..., :2], mask)
    with pytest.raises(ValueError, match="expected mask"):
        head.decode(em, mask[:, :2])


BIO5 = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]


def _valid(labels, path):
    prev = "O"
    for tag in (labels[i] for i in path):
        if tag.startswith("I-") and prev[2:] != tag[2:]:
            return False
        prev = tag
    return True


def test_bio_transitions_table():
    start, trans = bio_transitions(BIO5)
    assert start.tolist() == [True, True, False, True, False]
    allowed = {(BIO5[i], BIO5[j]) for i in range(5) for j in range(5) if trans[i, j]}
    forbidden = {(a, b) for a in BIO5 for b in BIO5} - allowed
    assert forbidden == {("O", "I-PER"), ("O", "I-LOC"), ("B-PER", "I-LOC"), ("I-PER", "I-LOC"),
                         ("B-LOC", "I-PER"), ("I-LOC", "I-PER")}


def test_constrained_crf_matches_brute_force_over_valid_paths():
    torch.manual_seed(3)
    head = CRFHead(5, constrain_bio=BIO5)
    with torch.no_grad():
        for p in head.crf.parameters():
            p.normal_()
        # make the forbidden moves the most attractive ones: the constraint must still win
        head.crf.parametrizations.transitions.original[0, 2] = 8.0
        head.crf.parametrizations.start_transitions.original[4] = 8.0
    em = torch.randn(3, 4, 5) * 2
    em[:, :, 2] += 3.0  # emissions push I-PER everywhere, including after O
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0], [1, 0, 0, 0]], dtype=torch.bool)
    paths, marg = head.decode(em, mask), head.marginals(em, mask)
    tags = torch.tensor([[1, 2, 0, 3], [0, 3, 4, 0], [1, 0, 0, 0]])
    nll = []
    for b in range(3):
        n = int(mask[b].sum())
        valid = [p for p in itertools.product(range(5), repeat=n) if _valid(BIO5, p)]
        scores = torch.stack([_path_score(head.crf, em[b], p) for p in valid])
        assert paths[b] == list(valid[int(scores.argmax())]) and _valid(BIO5, paths[b])
        brute = torch.zeros(n, 5)
        for p, pr in zip(valid, torch.softmax(scores, 0)):
            for t, tag in enumerate(p):
                brute[t, tag] += pr
        torch.testing.assert_close(marg[b, :n], brute, atol=1e-5, rtol=1e-4)
        nll.append(torch.logsumexp(scores, 0) - _path_score(head.crf, em[b], tags[b, :n].tolist()))
    assert marg[:, 0, [2, 4]].abs().max() < 1e-6  # never starts inside an entity
    torch.testing.assert_close(head.loss(em, tags, mask), torch.stack(nll).sum() / 3)


def test_constrained_scores_get_no_gradient_and_stay_pinned_through_training():
    torch.manual_seed(0)
    head = CRFHead(5, constrain_bio=BIO5)
    opt = torch.optim.AdamW(head.parameters(), lr=0.5)
    em, mask = torch.randn(2, 6, 5), torch.ones(2, 6, dtype=torch.bool)
    tags = torch.tensor([[0, 1, 2, 0, 3, 4], [3, 4, 4, 0, 0, 1]])
    for _ in range(3):
        opt.zero_grad()
        head.loss(em, tags, mask).backward()
        opt.step()
    grad = head.crf.parametrizations.transitions.original.grad
    assert grad[0, 2] == 0 and grad[1, 4] == 0 and grad[1, 2] != 0
    assert head.crf.transitions[0, 2].item() == FORBIDDEN and head.crf.start_transitions[2].item() == FORBIDDEN


def test_unconstrained_head_can_output_invalid_bio_and_constrained_cannot():
    em = torch.full((1, 3, 5), -5.0)
    em[0, 0, 0] = em[0, 1, 2] = em[0, 2, 4] = 5.0  # O I-PER I-LOC by emissions alone
    mask = torch.ones(1, 3, dtype=torch.bool)
    free, tied = CRFHead(5), CRFHead(5, constrain_bio=BIO5)
    for head in (free, tied):
        with torch.no_grad():
            for p in head.crf.parameters():
                p.zero_()
    assert free.decode(em, mask) == [[0, 2, 4]]
    path = tied.decode(em, mask)[0]
    assert _valid(BIO5, path), path


def test_constrain_bio_label_count_must_match():
    with pytest.raises(ValueError, match="names 3 labels for 5 tags"):
        CRFHead(5, constrain_bio=BIO5[:3])

"""CRF head: Viterbi decode, loss and forward-backward marginals against brute-force enumeration."""
from __future__ import annotations

import itertools

import pytest
import torch

from rpihmif.crf_head import CRFHead


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

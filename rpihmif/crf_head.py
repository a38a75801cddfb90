"""Linear-chain CRF head over word positions, built on pytorch-crf (`torchcrf.CRF`, batch_first).

Adds forward-backward marginals (entity confidence), optional BIO constraints (no `O -> I-X`, `B-X -> I-Y`, no start
on `I-X`) in loss, Viterbi and marginals alike; always fp32 (autocast off inside, emissions cast up).
"""
from __future__ import annotations

import functools

import torch
from torch import nn
from torch.nn.utils import parametrize
from torchcrf import CRF

__all__ = ["CRFHead", "bio_transitions"]

FORBIDDEN = -10000.0  # score of a forbidden transition: exp() underflows to exactly 0 in fp32, no inf arithmetic


def bio_transitions(labels: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Allowed BIO moves: `(start (L,), transitions (L_prev, L_next))` bool; `I-X` only after `B-X` or `I-X`."""
    inside = [label[2:] if label.startswith("I-") else None for label in labels]
    start = torch.tensor([etype is None for etype in inside])
    trans = torch.tensor([[etype is None or prev[2:] == etype and prev[:2] in ("B-", "I-") for etype in inside]
                          for prev in labels])
    return start, trans


class _Forbid(nn.Module):
    """Parametrization: the learned scores with forbidden entries pinned to FORBIDDEN (they get no gradient)."""

    def __init__(self, allowed: torch.Tensor):
        super().__init__()
        self.register_buffer("allowed", allowed, persistent=False)

    def forward(self, scores: torch.Tensor) -> torch.Tensor:
        return scores.masked_fill(~self.allowed, FORBIDDEN)


def _fp32(method):
    """Run a CRF method with autocast off and fp32 emissions (loss, Viterbi and marginals stay fp32); constrained
    scores are computed once per call, not once per word position."""

    @functools.wraps(method)
    def wrapper(self, emissions: torch.Tensor, *args):
        with torch.autocast(emissions.device.type, enabled=False), parametrize.cached():
            return method(self, emissions.float(), *args)

    return wrapper


class CRFHead(nn.Module):
    """CRF over `num_tags` tags; word positions are packed to the left (mask[:, 0] True for non-empty rows).

    Rows with no word at all are tolerated: they add 0 to the loss, decode to [] and get zero marginals.
    `constrain_bio=labels` forbids invalid BIO paths (torch parametrizations on the start and transition scores).
    """

    def __init__(self, num_tags: int, constrain_bio: list[str] | None = None):
        super().__init__()
        self.num_tags = num_tags
        self.crf = CRF(num_tags, batch_first=True)
        if constrain_bio is not None:
            self.constrain(constrain_bio)

    @property
    def constrained(self) -> bool:
        """Whether invalid BIO moves are forbidden (the transition scores carry the parametrization)."""
        return parametrize.is_parametrized(self.crf, "transitions")

    def constrain(self, labels: list[str]) -> None:
        """Forbid invalid BIO moves from now on (also on a trained unconstrained head, e.g. to compare decoding)."""
        if len(labels) != self.num_tags:
            raise ValueError(f"constrain_bio names {len(labels)} labels for {self.num_tags} tags")
        if self.constrained:
            return
        start, trans = bio_transitions(list(labels))
        device = self.crf.transitions.device
        parametrize.register_parametrization(self.crf, "start_transitions", _Forbid(start.to(device)))
        parametrize.register_parametrization(self.crf, "transitions", _Forbid(trans.to(device)))

    def __repr__(self) -> str:
        return f"{type(self).__name__}(num_tags={self.num_tags}, constrained={self.constrained})"

    def _check(self, emissions: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if emissions.dim() != 3 or emissions.size(-1) != self.num_tags:
            raise ValueError(f"expected emissions (B, W, {self.num_tags}), got {tuple(emissions.shape)}")
        if mask.shape != emissions.shape[:2]:
            raise ValueError(f"expected mask {tuple(emissions.shape[:2])}, got {tuple(mask.shape)}")
        mask = mask.bool()
        nonempty = mask[:, 0]
        # pytorch-crf needs mask[:, 0] all True: give empty rows one dummy position, dropped afterwards
        mask = mask.clone()
        mask[:, 0] = True
        return mask, nonempty

    @_fp32
    def loss(self, emissions: torch.Tensor, tags: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Mean negative log-likelihood over the batch.

        emissions: (B, W, L); tags: (B, W) long; mask: (B, W) bool. Returns a scalar.
        """
        full, nonempty = self._check(emissions, mask)
        # shape: (B,)
        llh = self.crf(emissions, tags.long() * full, full, reduction="none")
        return -(llh * nonempty.to(llh.dtype)).sum() / emissions.size(0)

    @_fp32
    def decode(self, emissions: torch.Tensor, mask: torch.Tensor) -> list[list[int]]:
        """Viterbi tag ids per row, each as long as the row's mask (emissions (B, W, L), mask (B, W))."""
        full, nonempty = self._check(emissions, mask)
        paths = self.crf.decode(emissions, full)
        return [p if keep else [] for p, keep in zip(paths, nonempty.tolist())]

    @_fp32
    def marginals(self, emissions: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """P(tag at word t = j | sentence) by forward-backward; (B, W, L), zero at masked positions."""
        full, nonempty = self._check(emissions, mask)
        return self._forward_backward(emissions, full) * (full & nonempty[:, None]).unsqueeze(-1)

    def _forward_backward(self, emissions: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        assert mask[:, 0].all()
        b, w, n = emissions.shape
        start, end, trans = self.crf.start_transitions, self.crf.end_transitions, self.crf.transitions
        # shape: (B, W, 1)
        m = mask.unsqueeze(-1)
        alphas = [start + emissions[:, 0]]  # each (B, L)
        for t in range(1, w):
            # shape: (B, L_prev, L_next) -> (B, L)
            nxt = torch.logsumexp(alphas[-1].unsqueeze(2) + trans, dim=1) + emissions[:, t]
            alphas.append(torch.where(m[:, t], nxt, alphas[-1]))
        betas = [end.expand(b, n)]  # beta at the last position; built backwards
        for t in range(w - 2, -1, -1):
            # shape: (B, L_cur, L_next) -> (B, L)
            nxt = torch.logsumexp(trans + (emissions[:, t + 1] + betas[-1]).unsqueeze(1), dim=2)
            betas.append(torch.where(m[:, t + 1], nxt, end.expand(b, n)))
        betas.reverse()
        # shape: (B, W, L)
        alpha, beta = torch.stack(alphas, 1), torch.stack(betas, 1)
        # shape: (B, 1, 1): log partition from the last real position
        log_z = torch.logsumexp(alphas[-1] + end, dim=-1)[:, None, None]
        return torch.exp(alpha + beta - log_z)

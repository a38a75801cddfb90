"""Linear-chain CRF head over word positions, built on pytorch-crf (`torchcrf.CRF`, batch_first).

Adds masked forward-backward marginals (log space) used as entity confidence scores at prediction time. Always fp32:
emissions are cast up and autocast is off inside, so bf16 autocast around the model never reaches the CRF.
"""
from __future__ import annotations

import functools

import torch
from torch import nn
from torchcrf import CRF

__all__ = ["CRFHead"]


def _fp32(method):
    """Run a CRF method with autocast off and fp32 emissions (loss, Viterbi and marginals stay fp32)."""

    @functools.wraps(method)
    def wrapper(self, emissions: torch.Tensor, *args):
        with torch.autocast(emissions.device.type, enabled=False):
            return method(self, emissions.float(), *args)

    return wrapper


class CRFHead(nn.Module):
    """CRF over `num_tags` tags; word positions are packed to the left (mask[:, 0] True for non-empty rows).

    Rows with no word at all are tolerated: they add 0 to the loss, decode to [] and get zero marginals.
    """

    def __init__(self, num_tags: int):
        super().__init__()
        self.num_tags = num_tags
        self.crf = CRF(num_tags, batch_first=True)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(num_tags={self.num_tags})"

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

"""Adversarial training (FGM, Miyato et al. 2017): a second loss on word embeddings pushed along their gradient.

`perturbed` moves the rows a batch used by epsilon · g / ‖g‖ for one forward/backward, then puts them back exactly.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch

__all__ = ["perturbed"]


@contextmanager
def perturbed(embedding: torch.nn.Embedding, epsilon: float) -> Iterator[bool]:
    """Inside: the embedding rows with a gradient are moved by epsilon along it (L2-normalised over those rows);
    on exit they hold their exact old values. Yields False (and moves nothing) when there is no usable gradient."""
    weight = embedding.weight
    grad = weight.grad
    if grad is None:
        yield False
        return
    # shape: (R,) the vocabulary rows this batch touched
    rows = grad.abs().sum(dim=1).nonzero().squeeze(1)
    norm = grad[rows].norm()
    if rows.numel() == 0 or not torch.isfinite(norm) or norm == 0:
        yield False
        return
    with torch.no_grad():
        # shape: (R, H)
        saved = weight[rows].clone()
        weight[rows] += epsilon * grad[rows] / norm
    try:
        yield True
    finally:
        with torch.no_grad():
            weight[rows] = saved

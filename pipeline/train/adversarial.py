"""Adversarial training (FGM, Miyato et al. 2017): a second loss on word embeddings pushed along their gradient.

`adversarial_backward` adds the gradient of the loss with the rows a batch used moved by epsilon · g / ‖g‖.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch

__all__ = ["adversarial_backward", "perturbed"]


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


def adversarial_backward(embedding: torch.nn.Embedding, epsilon: float, loss: Callable[[], torch.Tensor]) -> bool:
    """After the clean loss's backward: back-propagate `loss()` once more with the embedding perturbed, so the step
    sums both gradients. Returns whether it ran (False: no usable gradient on the embedding)."""
    with perturbed(embedding, epsilon) as moved:
        if moved:
            loss().backward()
    return moved

"""Adversarial training (FGM, Miyato et al. 2017): a second loss on word embeddings pushed along their gradient.

`adversarial_backward` adds the gradient of the loss with the rows a batch used moved by epsilon · g / ‖g‖.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch

__all__ = ["adversarial_backward", "perturbed"]


@contextmanager
def perturbed(embedding: torch.nn.Embedding, epsilon: float, token_ids: torch.Tensor) -> Iterator[bool]:
    """Inside: the embedding rows of `token_ids` (the batch's inputs) are moved by epsilon along their gradient,
    L2-normalised over those rows; on exit they hold their exact old values. Yields False (and moves nothing) when
    they have no usable gradient."""
    weight, grad = embedding.weight, embedding.weight.grad
    if grad is None:
        yield False
        return
    # shape: (R,) the vocabulary rows this batch looked up (only they have a gradient: no scan of the whole table)
    rows = torch.unique(token_ids.to(weight.device))
    # shape: (R, H)
    step = grad[rows]
    norm = step.norm()
    if not torch.isfinite(norm) or norm == 0:
        yield False
        return
    with torch.no_grad():
        saved = weight[rows].clone()
        weight[rows] += epsilon * step / norm
    try:
        yield True
    finally:
        with torch.no_grad():
            weight[rows] = saved


def adversarial_backward(embedding: torch.nn.Embedding, epsilon: float, token_ids: torch.Tensor,
                         loss: Callable[[], torch.Tensor]) -> bool:
    """After the clean loss's backward: back-propagate `loss()` once more with the rows of `token_ids` perturbed, so
    the step sums both gradients. Returns whether it ran (False: no usable gradient on those rows)."""
    with perturbed(embedding, epsilon, token_ids) as moved:
        if moved:
            loss().backward()
    return moved

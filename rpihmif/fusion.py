"""IFFE: iterative feature fusion engine, improved dynamic routing between visual capsules and tweet tokens.

Routing starts from scaled similarity, grows by agreement for `iterations` rounds; 0 rounds = concatenation fusion.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from rpihmif.config import IFFEConfig

__all__ = ["FusionOutput", "IFFE"]


@dataclass
class FusionOutput:
    """Fused word features and the routing that produced them."""

    features: torch.Tensor  # (B, W, Dt) text features + gated visual contribution (exactly text where no image)
    coupling: torch.Tensor  # (B, W, C) final coupling coefficients, each row sums to 1
    routing: torch.Tensor  # (B, W, 3) coupling mass per visual source; sums to 1 where an image is present, else 0


class IFFE(nn.Module):
    """Routes capsule predictions to tweet tokens and adds the gated result to the text features (residual)."""

    def __init__(self, config: IFFEConfig, text_dim: int, hidden: int):
        super().__init__()
        if config.iterations < 0:
            raise ValueError(f"iffe.iterations must be >= 0, got {config.iterations}")
        self.iterations, self.hidden = config.iterations, hidden
        if self.iterations == 0:
            self.concat = nn.Linear(text_dim + hidden, text_dim)
        else:
            self.token = nn.Linear(text_dim, hidden)
            self.token_norm = nn.LayerNorm(hidden)
            self.predict = nn.Linear(hidden, hidden)
            self.round_norm = nn.LayerNorm(hidden)
            self.out = nn.Linear(hidden, text_dim)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(iterations={self.iterations}, hidden={self.hidden})"

    def forward(self, text: torch.Tensor, capsules: torch.Tensor, source_mass: torch.Tensor, gate: torch.Tensor,
                present: torch.Tensor) -> FusionOutput:
        """text (B, W, Dt), capsules (B, C, D), source_mass (B, C, 3), gate (B,), present (B,) bool."""
        if self.iterations == 0:
            contribution, coupling = self._concat(text, capsules)
        else:
            contribution, coupling = self._route(text, capsules)
        # shape: (B, 1, 1): the visual contribution is exactly zero for rows without an image
        scale = (gate * present.to(gate.dtype))[:, None, None]
        features = torch.where(present[:, None, None], text + scale * contribution, text)
        # shape: (B, W, 3)
        routing = (coupling @ source_mass) * present.to(coupling.dtype)[:, None, None]
        return FusionOutput(features=features, coupling=coupling, routing=routing)

    def _concat(self, text: torch.Tensor, capsules: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Concatenate each word with the mean capsule, then project (uniform coupling)."""
        b, w, _ = text.shape
        c = capsules.size(1)
        # shape: (B, W, D)
        pooled = capsules.mean(1, keepdim=True).expand(b, w, -1)
        coupling = text.new_full((b, w, c), 1.0 / c)
        return self.concat(torch.cat([text, pooled], -1)), coupling

    def _route(self, text: torch.Tensor, capsules: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """`iterations` rounds of routing-by-agreement from similarity-initialised logits."""
        scale = 1.0 / math.sqrt(self.hidden)
        # shape: (B, W, D) token states, (B, C, D) capsule predictions
        tokens = self.token_norm(self.token(text))
        preds = self.predict(capsules)
        # shape: (B, W, C): logits start from scaled similarity, not zeros
        logits = tokens @ preds.transpose(1, 2) * scale
        fused = tokens
        for r in range(self.iterations):
            coupling = torch.softmax(logits, dim=-1)
            # shape: (B, W, D)
            fused = self.round_norm(fused + coupling @ preds)
            if r + 1 < self.iterations:
                logits = logits + fused @ preds.transpose(1, 2) * scale
        return self.out(fused), coupling

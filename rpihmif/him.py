"""HIM: explicit-question heterogeneous information mining (question-aware text + task-guided visual capsules).

The question vector conditions the tweet-word features and, with the tweet, queries the heterogeneous visual tokens.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from rpihmif.config import HIMConfig, VisualConfig
from rpihmif.visual import SOURCES, VisualBatch

__all__ = ["HIMOutput", "QuestionAwareText", "VisualCapsules", "HIM", "masked_mean", "SOURCE_LOGIT_BOUND"]

# source-stage logits lie in [-2, 2]: the mix weights stay graded (two present sources: at most 0.982 / 0.018)
SOURCE_LOGIT_BOUND = 2.0


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of x (B, N, D) over positions where mask (B, N) is True; zeros for an all-False row."""
    m = mask.to(x.dtype).unsqueeze(-1)
    return (x * m).sum(1) / m.sum(1).clamp_min(1.0)


@dataclass
class HIMOutput:
    """What HIM hands to IFFE; visual fields are None when the model is text-only or has no visual input."""

    text: torch.Tensor  # (B, W, Dt) question-aware word features (the text path)
    question: torch.Tensor | None  # (B, Ht) pooled question vector; None when him.question is ""
    capsules: torch.Tensor | None = None  # (B, C, D) task-guided visual capsules
    source_mass: torch.Tensor | None = None  # (B, C, 3) each source's share of a capsule (orig, grounding, rcnn)
    gate: torch.Tensor | None = None  # (B,) text-image relevance in [0, 1], 0 where no image
    present: torch.Tensor | None = None  # (B,) bool: at least one visual token of a used source


class QuestionAwareText(nn.Module):
    """Conditions each word feature on the question vector with a per-feature gate and a residual."""

    def __init__(self, text_dim: int, encoder_dim: int):
        super().__init__()
        self.q_proj = nn.Linear(encoder_dim, text_dim)
        self.gate = nn.Linear(2 * text_dim, text_dim)
        self.norm = nn.LayerNorm(text_dim)

    def forward(self, words: torch.Tensor, question: torch.Tensor) -> torch.Tensor:
        """words (B, W, Dt), question (B, Ht) -> (B, W, Dt)."""
        # shape: (B, W, Dt)
        q = self.q_proj(question).unsqueeze(1).expand_as(words)
        g = torch.sigmoid(self.gate(torch.cat([words, q], dim=-1)))
        return self.norm(words + g * q)


class VisualCapsules(nn.Module):
    """Multi-head attention of question/tweet-conditioned capsule queries over masked heterogeneous visual tokens."""

    def __init__(self, config: HIMConfig, visual: VisualConfig, text_dim: int, encoder_dim: int, use_question: bool):
        super().__init__()
        d = config.hidden
        if d % config.heads:
            raise ValueError(f"him.hidden {d} must be divisible by him.heads {config.heads}")
        unknown = set(visual.sources) - set(SOURCES)
        if unknown or not visual.sources:
            raise ValueError(f"visual.sources must be a non-empty subset of {list(SOURCES)}, got {visual.sources}")
        self.sources = [s for s in SOURCES if s in visual.sources]
        self.heads, self.hidden = config.heads, d
        self.proj = nn.ModuleDict({s: nn.Linear(visual.dim, d) for s in self.sources})
        self.source_emb = nn.Embedding(len(SOURCES), d)
        self.token_norm = nn.LayerNorm(d)
        self.slots = nn.Parameter(torch.empty(config.num_capsules, d))
        self.tweet_query = nn.Linear(text_dim, d)
        self.question_query = nn.Linear(encoder_dim, d) if use_question else None
        self.q, self.k, self.v, self.o = (nn.Linear(d, d) for _ in range(4))
        self.norm1, self.norm2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.ffn = nn.Sequential(nn.Linear(d, 2 * d), nn.GELU(), nn.Linear(2 * d, d))
        self.relevance = nn.Sequential(nn.Linear(2 * d, d), nn.Tanh(), nn.Linear(d, 1))
        # source stage: a capsule's query scores each source's pooled summary; None = one softmax over all tokens
        self.source_q = nn.Linear(d, d) if config.source_attention else None
        self.source_k = nn.Linear(d, d) if config.source_attention else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.normal_(self.slots, std=0.02)
        nn.init.normal_(self.source_emb.weight, std=0.02)

    def tokens(self, visual: VisualBatch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Projected visual tokens (B, N, D), their mask (B, N) and source index (N,) of the used sources."""
        feats, masks, src = [], [], []
        for s in self.sources:
            x, m = getattr(visual, s), getattr(visual, f"{s}_mask")
            if s == "orig":
                # shape: (B, Lo, Dv), mask (B, Lo)
                m = m[:, None].expand(x.shape[:2])
            else:
                # shape: (B, K*L, Dv), mask (B, K*L)
                m = m[:, :, None].expand(x.shape[:3]).reshape(x.size(0), -1)
                x = x.reshape(x.size(0), -1, x.size(-1))
            i = SOURCES.index(s)
            feats.append(self.proj[s](x) + self.source_emb.weight[i])
            masks.append(m)
            src.append(torch.full((x.size(1),), i, dtype=torch.long, device=x.device))
        return self.token_norm(torch.cat(feats, 1)), torch.cat(masks, 1), torch.cat(src)

    def forward(self, text: torch.Tensor, word_mask: torch.Tensor, question: torch.Tensor | None,
                visual: VisualBatch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Returns capsules (B, C, D), source mass (B, C, 3), gate (B,), present (B,) bool."""
        tokens, mask, src = self.tokens(visual)
        b, n, d = tokens.shape
        h, hd = self.heads, d // self.heads
        # shape: (B, D): tweet summary (+ question) conditions every capsule query
        tweet = self.tweet_query(masked_mean(text, word_mask))
        cond = tweet if self.question_query is None else tweet + self.question_query(question)
        # shape: (B, C, D)
        query = self.slots.unsqueeze(0) + cond.unsqueeze(1)
        c = query.size(1)
        # shape: (B, h, C|N, hd)
        q = self.q(query).view(b, c, h, hd).transpose(1, 2)
        k = self.k(tokens).view(b, n, h, hd).transpose(1, 2)
        v = self.v(tokens).view(b, n, h, hd).transpose(1, 2)
        # shape: (B, h, C, N); masked with a finite minimum so an all-masked row stays finite (then zeroed)
        scores = (q @ k.transpose(-1, -2)) / math.sqrt(hd)
        if self.source_q is None:
            out, source_mass = self._flat(scores, v, mask, src)
        else:
            out, source_mass = self._by_source(query, scores, v, mask, src)
        caps = self.norm1(query + self.o(out))
        caps = self.norm2(caps + self.ffn(caps))
        present = mask.any(-1)
        gate = torch.sigmoid(self.relevance(torch.cat([tweet, caps.mean(1)], -1))).squeeze(-1)
        return caps, source_mass, gate * present.to(gate.dtype), present

    @staticmethod
    def _softmax(scores: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        """Softmax over the last axis where keep is True; an all-False row gives zeros (finite, no NaN)."""
        scores = scores.masked_fill(~keep, torch.finfo(scores.dtype).min)
        return torch.softmax(scores, dim=-1) * keep.to(scores.dtype)

    def _flat(self, scores: torch.Tensor, v: torch.Tensor, mask: torch.Tensor, src: torch.Tensor
              ) -> tuple[torch.Tensor, torch.Tensor]:
        """One softmax over all tokens: scores (B, h, C, N), v (B, h, N, hd) -> head outputs (B, C, D) and the
        attention mass per source averaged over heads (B, C, 3)."""
        b, h, c, _ = scores.shape
        # shape: (B, h, C, N)
        attn = self._softmax(scores, mask[:, None, None, :])
        # shape: (B, C, D)
        out = (attn @ v).transpose(1, 2).reshape(b, c, -1)
        onehot = nn.functional.one_hot(src, len(SOURCES)).to(attn.dtype)
        # shape: (B, C, 3)
        return out, attn.mean(1) @ onehot

    def _by_source(self, query: torch.Tensor, scores: torch.Tensor, v: torch.Tensor, mask: torch.Tensor,
                   src: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Two stages: each head pools each source's tokens with its own softmax, then one softmax per capsule over
        the present sources' summaries mixes them. The source mass is each source's share of the capsule's update by
        vector norm: mixture weight x norm of its summary through the output projection (attention weight x
        transformed-value norm, Kobayashi et al. 2020), so a source weighted in but carrying little gets little.
        query (B, C, D), scores (B, h, C, N), v (B, h, N, hd) -> (B, C, D), (B, C, 3)."""
        b, h, c, _ = scores.shape
        pooled, present, used = [], [], []
        for i in range(len(SOURCES)):
            sel = (src == i).nonzero().squeeze(-1)
            if sel.numel() == 0:
                continue  # a source the model does not use
            m = mask[:, sel]
            # shape: (B, h, C, Ns) -> (B, C, D): the heads' pooled values of this source
            attn = self._softmax(scores[..., sel], m[:, None, None, :])
            pooled.append((attn @ v[:, :, sel]).transpose(1, 2).reshape(b, c, -1))
            present.append(m.any(-1))
            used.append(i)
        # shape: (B, C, S, D) summaries, (B, 1, S) present sources
        z = torch.stack(pooled, 2)
        keep = torch.stack(present, -1)[:, None, :]
        # shape: (B, C, S): one query per capsule against each source's summary
        logits = (self.source_k(z) @ self.source_q(query).unsqueeze(-1)).squeeze(-1) / math.sqrt(z.size(-1))
        # bounded to +-SOURCE_LOGIT_BOUND: a present source keeps a mix weight >= e^(-2 bound) of the largest one
        logits = SOURCE_LOGIT_BOUND * torch.tanh(logits / SOURCE_LOGIT_BOUND)
        weights = self._softmax(logits, keep)
        # shape: (B, C, D)
        out = (weights.unsqueeze(-1) * z).sum(2)
        # shape: (B, C, S): the size of each source's term in o(out) - o.bias; 0 for an absent source
        size = weights * (z @ self.o.weight.T).norm(dim=-1)
        mass = weights.new_zeros(b, c, len(SOURCES))
        mass[..., used] = size / size.sum(-1, keepdim=True).clamp_min(torch.finfo(size.dtype).tiny)
        return out, mass


class HIM(nn.Module):
    """Question-aware tweet features (text path) plus, unless text-only, task-guided visual capsules."""

    def __init__(self, config: HIMConfig, visual: VisualConfig, text_dim: int, encoder_dim: int, text_only: bool):
        super().__init__()
        self.use_question = bool(config.question)
        self.text = QuestionAwareText(text_dim, encoder_dim) if self.use_question else None
        self.visual = None if text_only else VisualCapsules(config, visual, text_dim, encoder_dim, self.use_question)

    def forward(self, token_states: torch.Tensor, question_mask: torch.Tensor, words: torch.Tensor,
                word_mask: torch.Tensor, visual: VisualBatch | None) -> HIMOutput:
        """token_states (B, T, Ht), question_mask (B, T), words (B, W, Dt), word_mask (B, W) -> HIMOutput."""
        question = masked_mean(token_states, question_mask) if self.use_question else None
        text = self.text(words, question) if self.text is not None else words
        out = HIMOutput(text=text, question=question)
        if self.visual is not None and visual is not None:
            out.capsules, out.source_mass, out.gate, out.present = self.visual(text, word_mask, question, visual)
        return out

"""Character features of the original cased word: fixed UTF-8 byte ids and a char-CNN word encoder (Ma & Hovy 2016).

The vocabulary is fixed (256 bytes + begin/end markers), so any tweet encodes without a vocab file from the data.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

__all__ = ["CHAR_PAD", "CHAR_BOW", "CHAR_EOW", "CHAR_VOCAB", "word_char_ids", "pad_char_ids", "CharCNN"]

CHAR_PAD = 0  # padding (no character)
CHAR_BOW, CHAR_EOW = 257, 258  # begin / end of word markers; byte b of the UTF-8 word has id b + 1
CHAR_VOCAB = 259


def word_char_ids(word: str, max_chars: int) -> list[int]:
    """Ids of a word: [BOW] bytes [EOW], never empty. A word of more than `max_chars` UTF-8 bytes keeps its first
    `max_chars - max_chars // 2` and its last `max_chars // 2` bytes (prefix and suffix carry casing and endings)."""
    if max_chars < 1:
        raise ValueError(f"expected max_chars >= 1, got {max_chars}")
    data = word.encode("utf-8", errors="replace")
    if len(data) > max_chars:
        tail = max_chars // 2
        data = data[: max_chars - tail] + (data[len(data) - tail :] if tail else b"")
    return [CHAR_BOW] + [b + 1 for b in data] + [CHAR_EOW]


def pad_char_ids(rows: Sequence[Sequence[Sequence[int]]], n_words: int) -> torch.Tensor:
    """(B, W, C) long tensor of per-word char ids (`rows[i][k]` = word k of row i), CHAR_PAD elsewhere;
    C = the longest word of the batch (markers included), W = n_words."""
    c = max((len(ids) for row in rows for ids in row), default=1)
    # shape: (B, W, C)
    out = torch.full((len(rows), n_words, c), CHAR_PAD, dtype=torch.long)
    for i, row in enumerate(rows):
        for k, ids in enumerate(row):
            out[i, k, : len(ids)] = torch.tensor(ids, dtype=torch.long)
    return out


class CharCNN(nn.Module):
    """char embedding -> dropout -> Conv1d (kernel 3, same padding) -> max over the word's characters -> tanh.

    A padding word (no character) gets the zero vector.
    """

    def __init__(self, char_dim: int, emb_dim: int = 32, kernel: int = 3, dropout: float = 0.0):
        super().__init__()
        if char_dim < 1 or emb_dim < 1 or kernel < 1 or kernel % 2 == 0:
            raise ValueError(f"expected char_dim >= 1, emb_dim >= 1 and an odd kernel, "
                             f"got {char_dim}, {emb_dim}, {kernel}")
        self.char_dim = char_dim
        self.embed = nn.Embedding(CHAR_VOCAB, emb_dim, padding_idx=CHAR_PAD)
        self.dropout = nn.Dropout(dropout)
        self.conv = nn.Conv1d(emb_dim, char_dim, kernel, padding=kernel // 2)

    def __repr__(self) -> str:
        return (f"CharCNN(vocab={CHAR_VOCAB}, emb={self.embed.embedding_dim}, out={self.char_dim}, "
                f"kernel={self.conv.kernel_size[0]})")

    def forward(self, char_ids: torch.Tensor) -> torch.Tensor:
        """char_ids: (B, W, C) long, CHAR_PAD on padding -> (B, W, char_dim)."""
        if char_ids.dim() != 3:
            raise ValueError(f"expected char ids (B, W, C), got shape {tuple(char_ids.shape)}")
        b, w, c = char_ids.shape
        flat = char_ids.reshape(b * w, c)
        # shape: (B*W, E, C)
        x = self.dropout(self.embed(flat)).transpose(1, 2)
        # shape: (B*W, D, C)
        h = self.conv(x)
        mask = (flat != CHAR_PAD).unsqueeze(1)
        # shape: (B*W, D): max over the real characters only
        pooled = h.masked_fill(~mask, float("-inf")).amax(dim=-1)
        pooled = torch.tanh(pooled.masked_fill(~mask.any(-1), 0.0))
        return pooled.reshape(b, w, self.char_dim)

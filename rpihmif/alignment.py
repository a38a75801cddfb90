"""Word -> sub-word alignment for tweets: `[CLS] question [SEP] tweet [SEP]` windows with labels on first sub-tokens.

Training truncates (and counts what it cut); prediction windows long tweets with overlap and merges per word.
"""
from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from typing import Any, Sequence

import torch

from rpihmif.chars import pad_char_ids, word_char_ids

__all__ = ["NUM_SHAPES", "word_shape_id", "split_camel_case", "EncodedWindow", "TextBatch", "WindowTokenizer",
           "merge_windows"]

_SHAPES = ("pad", "lower", "Title", "UPPER", "mIxed", "digits", "alnum", "@mention", "#hashtag", "url",
           "punct", "symbol", "other")
NUM_SHAPES = len(_SHAPES)  # shape ids 0..NUM_SHAPES-1; 0 is padding
_SHAPE_ID = {name: i for i, name in enumerate(_SHAPES)}
_URL = re.compile(r"^(https?://|www\.)|^[\w-]+\.(com|org|net|co|ly|io|gl|me)(/|$)", re.IGNORECASE)


def word_shape_id(word: str) -> int:
    """Shape class of a tweet word (casing, digits, @mention, #hashtag, URL, punctuation, symbol); never 0."""
    if not word:
        return _SHAPE_ID["other"]
    if len(word) > 1 and word[0] == "@":
        return _SHAPE_ID["@mention"]
    if len(word) > 1 and word[0] == "#":
        return _SHAPE_ID["#hashtag"]
    if _URL.match(word):
        return _SHAPE_ID["url"]
    letters = [c for c in word if c.isalpha()]
    if not letters:
        if any(c.isdigit() for c in word):
            return _SHAPE_ID["digits"]
        cats = {unicodedata.category(c)[0] for c in word}
        if cats <= {"P"}:
            return _SHAPE_ID["punct"]
        return _SHAPE_ID["symbol"] if "S" in cats else _SHAPE_ID["other"]
    if any(c.isdigit() for c in word):
        return _SHAPE_ID["alnum"]
    if all(c.islower() for c in letters):
        return _SHAPE_ID["lower"]
    if all(c.isupper() for c in letters):
        return _SHAPE_ID["UPPER"] if len(letters) > 1 else _SHAPE_ID["Title"]
    if letters[0].isupper() and all(c.islower() for c in letters[1:]):
        return _SHAPE_ID["Title"]
    return _SHAPE_ID["mIxed"]


def split_camel_case(word: str) -> str:
    """`word` with a space at each camelCase, letter/digit and underscore boundary: `TheEconomist` -> `The Economist`,
    `XMenApocalypse` -> `X Men Apocalypse`, `Robbins1` -> `Robbins 1`. A URL, a word without a boundary and a whole
    `@mention` or `#hashtag` come back unchanged: tagged as one word they are nearly always O (Twitter-2015 writes them
    so: 99% of its split ones); the name after a separate `@` or `#` (Twitter-2017) is split."""
    if word.isalpha() and (word.islower() or word.isupper() or word.istitle()) or word[:1] in ("@", "#") \
            or _URL.match(word):
        return word  # most words: nothing to split
    out: list[str] = []
    for i, c in enumerate(word):
        prev, nxt = word[i - 1] if i else "", word[i + 1] if i + 1 < len(word) else ""
        if c == "_":
            c = " "
        elif prev and (prev.islower() and c.isupper()  # camelCase
                       or prev.isupper() and c.isupper() and nxt.islower()  # ABCWord: a capital run, then a word
                       or prev.isalpha() and c.isdigit() or prev.isdigit() and c.isalpha()):
            out.append(" ")
        out.append(c)
    return "".join(out)


@dataclass
class EncodedWindow:
    """One model input: a contiguous run of a tweet's words with the question in front."""

    input_ids: list[int]  # (T,) [CLS] question [SEP] words [SEP]
    token_type_ids: list[int]  # (T,) 0 on [CLS] question [SEP], 1 on the tweet part
    question_len: int  # sub-tokens of the question (0 = no question segment)
    word_index: list[int]  # (n_words,) position of each word's first sub-token in input_ids
    shape_ids: list[int]  # (n_words,) word_shape_id of each word
    word_start: int  # index in the tweet of this window's first word
    n_words: int  # words in this window
    char_ids: list[list[int]] | None = None  # (n_words, <=max_chars+2) word_char_ids of each cased word; None = off


@dataclass
class TextBatch:
    """Padded text inputs of a batch (word positions packed to the left, so word_mask[:, 0] is True)."""

    input_ids: torch.Tensor  # (B, T) long
    attention_mask: torch.Tensor  # (B, T) long
    token_type_ids: torch.Tensor  # (B, T) long
    question_mask: torch.Tensor  # (B, T) bool: question sub-tokens (no [CLS]/[SEP])
    word_index: torch.Tensor  # (B, W) long: position of each word's first sub-token
    word_mask: torch.Tensor  # (B, W) bool
    shape_ids: torch.Tensor  # (B, W) long
    labels: torch.Tensor | None = None  # (B, W) long, 0 on padding
    char_ids: torch.Tensor | None = None  # (B, W, C) long: UTF-8 byte ids of the cased words, 0 on padding; None = off
    dataset_ids: torch.Tensor | None = None  # (B,) long: each row's annotation style (`RPIHMIF.dataset_ids`); None = own

    def to(self, device: torch.device | str) -> "TextBatch":
        move = lambda t: None if t is None else t.to(device)  # noqa: E731
        return TextBatch(*(move(getattr(self, f)) for f in self.__dataclass_fields__))


class WindowTokenizer:
    """Turns word lists into `EncodedWindow`s for a fast tokenizer and a fixed question.

    max_seq counts every sub-token (question and special tokens included); stride = words shared by two
    prediction windows (0 = a quarter of the window); max_word_pieces caps the sub-tokens of one word;
    max_chars > 0 adds the char ids of each original word, clipped to max_chars UTF-8 bytes (0 = no char ids);
    split_camel: a camelCase word (a handle or hashtag name) is tokenized as its parts (`split_camel_case`) when that
    takes no more sub-words than the word whole (`TheEconomist`: `the economist`, not `thee ##con ##omi ##st`).
    """

    def __init__(self, tokenizer: Any, question: str, max_seq: int, stride: int = 0, max_word_pieces: int = 16,
                 max_chars: int = 0, split_camel: bool = False):
        self.tokenizer = tokenizer
        self.max_chars = max_chars
        self.split_camel = split_camel
        self.question = question
        self.stride = stride
        self.max_word_pieces = max_word_pieces
        self.cls_id, self.sep_id, self.unk_id = tokenizer.cls_token_id, tokenizer.sep_token_id, tokenizer.unk_token_id
        if None in (self.cls_id, self.sep_id, self.unk_id):
            raise ValueError("tokenizer needs [CLS], [SEP] and [UNK] tokens (a BERT-family tokenizer)")
        self.question_ids: list[int] = self._pieces([question])[0] if question else []
        specials = 3 if question else 2
        self.budget = max_seq - len(self.question_ids) - specials  # sub-tokens left for tweet words
        if self.budget < 8:
            raise ValueError(f"max_seq {max_seq} leaves {self.budget} sub-tokens for the tweet after the "
                             f"{len(self.question_ids)}-token question; raise max_seq or shorten him.question")
        self.max_word_pieces = max(1, min(max_word_pieces, self.budget))

    @classmethod
    def for_model(cls, tokenizer: Any, config: Any) -> "WindowTokenizer":
        """Encoder matching a ModelConfig: him.question, text.max_seq, text.window_stride, text.split_camel; char ids
        if text.char_dim."""
        text = config.text
        return cls(tokenizer, config.him.question, text.max_seq, text.window_stride,
                   max_chars=text.char_max_bytes if text.char_dim > 0 else 0, split_camel=text.split_camel)

    def _pieces(self, words: Sequence[str]) -> list[list[int]]:
        """Sub-token ids of each word (batched in the Rust tokenizer); a word with none gets [UNK]."""
        if not words:
            return []
        ids = self.tokenizer(list(words), add_special_tokens=False)["input_ids"]
        if self.split_camel:
            parts = {i: split for i, w in enumerate(words) if (split := split_camel_case(w)) != w}
            if parts:
                split_ids = self.tokenizer(list(parts.values()), add_special_tokens=False)["input_ids"]
                for i, p in zip(parts, split_ids):
                    ids[i] = p if 0 < len(p) <= len(ids[i]) else ids[i]  # `_` alone stays `_`, not nothing
        return [p[: self.max_word_pieces] if p else [self.unk_id] for p in ids]

    def _fit(self, pieces: list[list[int]], start: int) -> int:
        """End (exclusive) of the longest run of words from `start` that fits the budget (at least one word)."""
        used, end = 0, start
        while end < len(pieces) and used + len(pieces[end]) <= self.budget:
            used += len(pieces[end])
            end += 1
        return max(end, start + 1) if start < len(pieces) else start

    def _window(self, words: Sequence[str], pieces: list[list[int]], start: int, end: int) -> EncodedWindow:
        q = self.question_ids
        head = [self.cls_id] + (q + [self.sep_id] if q else [])
        ids, word_index = list(head), []
        for p in pieces[start:end]:
            word_index.append(len(ids))
            ids.extend(p)
        ids.append(self.sep_id)
        types = [0] * len(head) + [1 if q else 0] * (len(ids) - len(head))
        shapes = [word_shape_id(w) for w in words[start:end]]
        chars = [word_char_ids(w, self.max_chars) for w in words[start:end]] if self.max_chars > 0 else None
        return EncodedWindow(ids, types, len(q), word_index, shapes, start, end - start, chars)

    def encode_train(self, words: Sequence[str]) -> tuple[EncodedWindow, int]:
        """The first window of the tweet (truncated to max_seq) and how many words were cut off."""
        pieces = self._pieces(words)
        end = self._fit(pieces, 0)
        return self._window(words, pieces, 0, end), len(words) - end

    def encode_predict(self, words: Sequence[str]) -> list[EncodedWindow]:
        """Overlapping windows covering every word (one window when the tweet fits); [] for no words."""
        pieces = self._pieces(words)
        windows, start = [], 0
        while start < len(words):
            end = self._fit(pieces, start)
            windows.append(self._window(words, pieces, start, end))
            if end >= len(words):
                break
            overlap = self.stride if self.stride > 0 else (end - start) // 4
            start = max(start + 1, end - overlap)
        return windows

    def collate(self, windows: Sequence[EncodedWindow], labels: Sequence[Sequence[int]] | None = None) -> TextBatch:
        """Pad windows into a `TextBatch`; `labels[i]` are the label ids of window i's whole tweet (sliced here)."""
        b = len(windows)
        t = max(len(w.input_ids) for w in windows)
        n = max(max(w.n_words for w in windows), 1)
        input_ids = torch.full((b, t), self.tokenizer.pad_token_id or 0, dtype=torch.long)
        attention = torch.zeros((b, t), dtype=torch.long)
        types = torch.zeros((b, t), dtype=torch.long)
        question = torch.zeros((b, t), dtype=torch.bool)
        word_index = torch.zeros((b, n), dtype=torch.long)
        word_mask = torch.zeros((b, n), dtype=torch.bool)
        shape_ids = torch.zeros((b, n), dtype=torch.long)
        tags = torch.zeros((b, n), dtype=torch.long) if labels is not None else None
        for i, w in enumerate(windows):
            input_ids[i, : len(w.input_ids)] = torch.tensor(w.input_ids)
            attention[i, : len(w.input_ids)] = 1
            types[i, : len(w.input_ids)] = torch.tensor(w.token_type_ids)
            question[i, 1 : 1 + w.question_len] = True
            if w.n_words:
                word_index[i, : w.n_words] = torch.tensor(w.word_index)
                word_mask[i, : w.n_words] = True
                shape_ids[i, : w.n_words] = torch.tensor(w.shape_ids)
            if tags is not None:
                row = list(labels[i])[w.word_start : w.word_start + w.n_words]
                if len(row) != w.n_words:
                    raise ValueError(f"labels of window {i} cover {len(row)} words, expected {w.n_words}")
                tags[i, : w.n_words] = torch.tensor(row, dtype=torch.long)
        chars = None
        if self.max_chars > 0:
            if any(w.char_ids is None for w in windows):
                raise ValueError("this encoder adds char ids (max_chars > 0) but a window was encoded without them")
            # shape: (B, W, C)
            chars = pad_char_ids([w.char_ids for w in windows], n)
        return TextBatch(input_ids, attention, types, question, word_index, word_mask, shape_ids, tags, chars)


def merge_windows(n_words: int, windows: Sequence[EncodedWindow], per_window_outputs: Sequence[Sequence[Any]]) -> list[Any]:
    """Per-word outputs of a tweet: each word takes the output of the window where it is most central.

    `per_window_outputs[j][k]` is the output for word `windows[j].word_start + k`.
    """
    best: list[Any] = [None] * n_words
    score = [-1] * n_words
    for window, outputs in zip(windows, per_window_outputs):
        for k in range(window.n_words):
            i = window.word_start + k
            centrality = min(k, window.n_words - 1 - k)
            if centrality > score[i]:
                best[i], score[i] = outputs[k], centrality
    missing = [i for i in range(n_words) if score[i] < 0]
    if missing:
        raise ValueError(f"windows do not cover words {missing[:5]} of a {n_words}-word tweet")
    return best

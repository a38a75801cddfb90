"""Tweet-aware tokenizer that keeps character offsets, split the way the Twitter-2015 CoNLL data was.

URLs, @mentions, #hashtags, emoji sequences (ZWJ, skin tones, flags, keycaps) and numbers stay whole;
each other punctuation mark is its own token (`Cruz's` -> `Cruz ' s`, `...` -> `. . .`, `RT @u :`).
"""
from __future__ import annotations

from dataclasses import dataclass

try:  # the `regex` module knows Extended_Pictographic; `re` gets explicit code-point ranges instead
    import regex as _re

    _PICT = r"\p{Extended_Pictographic}"
    _EMOD = r"\p{Emoji_Modifier}"
except ImportError:  # pragma: no cover - regex ships in the venv
    import re as _re

    _PICT = ("[\u00a9\u00ae\u203c\u2049\u2122\u2139\u2194-\u21aa\u231a-\u23ff\u24c2\u25aa-\u25fe"
             "\u2600-\u27bf\u2934\u2935\u2b05-\u2b55\u3030\u303d\u3297\u3299\U0001F000-\U0001FAFF]")
    _EMOD = "[\U0001F3FB-\U0001F3FF]"

__all__ = ["Token", "tokenize", "token_texts"]

_VS = "\ufe0e\ufe0f"  # text / emoji presentation selectors
_ZWJ = "\u200d"
_EMOJI_UNIT = rf"{_PICT}(?:[{_VS}]|{_EMOD})*"
_PATTERNS = [
    ("url", r"(?:https?://|www\.)\S+"),
    ("mention", r"@\w+"),
    ("hashtag", r"#\w+"),
    ("entity", r"&(?:amp|lt|gt|quot|apos|#\d+);?"),
    ("flag", "[\U0001F1E6-\U0001F1FF]{2}"),
    ("keycap", rf"[0-9#*][{_VS}]?\u20e3"),
    ("emoji", rf"{_EMOJI_UNIT}(?:{_ZWJ}{_EMOJI_UNIT})*"),
    ("number", r"\d+(?:[.,:]\d+)+(?:[^\W\d_]+)?"),
    ("word", r"\w+(?:[-/]\w+)*"),
    ("other", r"\S"),
]
_TOKEN_RE = _re.compile("|".join(f"(?P<{name}>{pat})" for name, pat in _PATTERNS))
# a URL ends before trailing sentence punctuation and closing brackets/quotes
_URL_TRAIL = ".,;:!?)]}\"'”’»"


@dataclass(frozen=True)
class Token:
    """One token: `text == tweet[start:end]`; `kind` is url|mention|hashtag|emoji|number|word|... ."""

    text: str
    start: int  # first character (Python str index)
    end: int  # one past the last character
    kind: str


def tokenize(text: str) -> list[Token]:
    """Split a raw tweet into tokens with character offsets; whitespace (incl. stray ZWJ/VS) is dropped."""
    if not isinstance(text, str):
        raise ValueError(f"expected str, got {type(text).__name__}")
    tokens: list[Token] = []
    for m in _TOKEN_RE.finditer(text):
        kind, start, end = m.lastgroup, m.start(), m.end()
        if kind == "url":
            while end - start > 1 and text[end - 1] in _URL_TRAIL:
                end -= 1
            tokens.append(Token(text[start:end], start, end, kind))
            tokens.extend(Token(text[i], i, i + 1, "other") for i in range(end, m.end()))
            continue
        if kind in ("flag", "keycap"):
            kind = "emoji"
        piece = text[start:end]
        if kind == "other" and piece in (_ZWJ, _VS[0], _VS[1]):
            continue  # invisible joiners on their own carry no content
        tokens.append(Token(piece, start, end, kind))
    return tokens


def token_texts(text: str) -> list[str]:
    """Just the token strings (what the model sees as words)."""
    return [t.text for t in tokenize(text)]

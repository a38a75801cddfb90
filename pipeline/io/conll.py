"""Reader and writer of the UMT/DeepKE CoNLL form: `IMGID:<id>` line, `token<TAB>label` lines, blank between tweets.

Strict by default (InputError "file:line: what; how to fix"); `lenient=True` warns, repairs and counts instead.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

from cache.durable import atomic_write_text
from exit_codes import InputError
from rpihmif.labels import LABEL2ID, normalize_label, repair_bio

__all__ = ["Tweet", "ReadReport", "read_conll", "read_conll_report", "write_conll"]

log = logging.getLogger(__name__)

_IMGID = "IMGID:"
_MAX_LOGGED = 20  # lenient mode logs the first problems one by one, then only the summary
_BLANK = " \t\r\n\f\v"  # only ASCII whitespace makes a line blank or a token empty (U+00A0 is a real token)


@dataclass
class Tweet:
    """One tweet: its image id ("" when the IMGID was missing and repaired), words, BIO labels (OTHER read as MISC).

    `line` is the 1-based line of the tweet's `IMGID:` line (of its first token when there was none); `dataset` names
    the dataset folder it was read from ("" for a bare file), which keys its image in the feature cache.
    """

    image_id: str
    words: list[str]
    labels: list[str]
    line: int
    dataset: str = ""


@dataclass
class ReadReport:
    """What `read_conll_report` read and, in lenient mode, what it repaired or skipped (counts)."""

    path: str
    lenient: bool
    tweets: int = 0
    tokens: int = 0
    entities: int = 0
    bio_repaired: int = 0  # dangling I-X turned into B-X
    unknown_labels: int = 0  # replaced by O
    lines_without_tab: int = 0  # skipped
    empty_tokens: int = 0  # skipped
    invalid_utf8_lines: int = 0  # bad bytes replaced by U+FFFD
    missing_imgid: int = 0  # tweets given image_id ""
    empty_tweets: int = 0  # IMGID lines without tokens, dropped
    warnings: list[str] = field(default_factory=list)  # every problem, "file:line: what"

    @property
    def problems(self) -> int:
        """Total number of repaired or skipped things (0 for a clean file)."""
        return (self.bio_repaired + self.unknown_labels + self.lines_without_tab + self.empty_tokens
                + self.invalid_utf8_lines + self.missing_imgid + self.empty_tweets)

    def counts(self) -> dict[str, int]:
        """The counters as a JSON-able dict (for logs and summaries)."""
        keys = ("tweets", "tokens", "entities", "bio_repaired", "unknown_labels", "lines_without_tab",
                "empty_tokens", "invalid_utf8_lines", "missing_imgid", "empty_tweets")
        return {k: getattr(self, k) for k in keys}


class _Reader:
    """State of one pass over a file; `_problem` raises (strict) or records a warning (lenient)."""

    def __init__(self, path: Path, lenient: bool, fix_bio: bool):
        self.path, self.lenient, self.fix_bio = path, lenient, fix_bio
        self.report = ReadReport(path=str(path), lenient=lenient)
        self.tweets: list[Tweet] = []
        self._id: str | None = None  # image id of the open tweet; None = no tweet open
        self._line = 0  # line the open tweet starts at
        self._words: list[str] = []
        self._labels: list[str] = []

    def _problem(self, lineno: int, what: str, fix: str, counter: str) -> None:
        msg = f"{self.path}:{lineno}: {what}"
        if not self.lenient:
            raise InputError(f"{msg}; {fix} (or read with --lenient to repair/skip)")
        setattr(self.report, counter, getattr(self.report, counter) + 1)
        self.report.warnings.append(msg)
        if len(self.report.warnings) <= _MAX_LOGGED:
            log.warning("%s (lenient: %s)", msg, _LENIENT_ACTION[counter])

    def run(self, data: bytes) -> None:
        lines = data.split(b"\n")
        if lines and lines[-1] == b"":
            lines.pop()
        for lineno, raw in enumerate(lines, start=1):
            self._line_in(lineno, self._decode(lineno, raw))
        self._close()

    def _decode(self, lineno: int, raw: bytes) -> str:
        if lineno == 1 and raw.startswith(b"\xef\xbb\xbf"):  # UTF-8 byte-order mark
            raw = raw[3:]
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            self._problem(lineno, f"invalid UTF-8 at byte {e.start} of the line ({raw[e.start:e.start + 4]!r})",
                          "re-encode the file as UTF-8 (e.g. iconv -f latin1 -t utf-8)", "invalid_utf8_lines")
            text = raw.decode("utf-8", errors="replace")
        return text[:-1] if text.endswith("\r") else text

    def _line_in(self, lineno: int, line: str) -> None:
        if line.strip(_BLANK) == "":
            self._close()
            return
        if line.startswith(_IMGID):
            self._close()
            image_id = line[len(_IMGID):].strip(_BLANK)
            if not image_id:
                self._problem(lineno, "empty image id in 'IMGID:'", "write IMGID:<image id>", "missing_imgid")
            self._id, self._line = image_id, lineno
            return
        if "\t" not in line:
            self._problem(lineno, f"no tab in {line[:40]!r}", "write token<TAB>label", "lines_without_tab")
            return
        token, label = line.split("\t", 1)
        label = label.strip(_BLANK)
        if token.strip(_BLANK) == "":
            self._problem(lineno, f"empty token (label {label!r})", "remove the line or put the token before the tab",
                          "empty_tokens")
            return
        if self._id is None:
            self._problem(lineno, "token before any IMGID line (missing IMGID)",
                          "start every tweet with an IMGID:<image id> line after a blank line", "missing_imgid")
            self._id, self._line = "", lineno
        try:
            label = normalize_label(label)  # a second tab stays in the label and makes it unknown
        except ValueError:
            self._problem(lineno, f"unknown label {label!r}", "use O or B-/I- of PER, LOC, ORG, MISC (OTHER)",
                          "unknown_labels")
            label = "O"
        if label.startswith("I-"):
            prev = self._labels[-1] if self._labels else "O"
            if prev[2:] != label[2:] and self.fix_bio:
                self.report.bio_repaired += 1  # conlleval/seqeval reading: a dangling I-X starts an entity
            elif prev[2:] != label[2:]:
                self._problem(lineno, f"{label} follows {prev} (an I- must continue a B-/I- of its type)",
                              f"use B-{label[2:]} here", "bio_repaired")
        self._words.append(token)
        self._labels.append(label)

    def _close(self) -> None:
        if self._id is None:
            return
        if not self._words:
            self._problem(self._line, f"IMGID:{self._id} has no token lines",
                          "add its token<TAB>label lines or remove the IMGID line", "empty_tweets")
        else:
            labels, fixed = repair_bio(self._labels)
            assert fixed == 0 or self.lenient or self.fix_bio  # strict mode raised on the first dangling I-
            self.tweets.append(Tweet(self._id, self._words, labels, self._line))
            self.report.tokens += len(self._words)
            self.report.entities += sum(1 for x in labels if x.startswith("B-"))
        self._id, self._words, self._labels = None, [], []


_LENIENT_ACTION = {
    "bio_repaired": "read as B-",
    "unknown_labels": "read as O",
    "lines_without_tab": "line skipped",
    "empty_tokens": "line skipped",
    "invalid_utf8_lines": "bad bytes replaced by U+FFFD",
    "missing_imgid": "tweet kept without an image",
    "empty_tweets": "tweet dropped",
}


def read_conll_report(path: str | os.PathLike, lenient: bool = False,
                      fix_bio: bool = False) -> tuple[list[Tweet], ReadReport]:
    """Read a CoNLL split; return the tweets and a `ReadReport` of counts and repairs.

    Blank-line runs, CRLF endings, a UTF-8 BOM and a missing final blank line are fine. Strict mode raises
    InputError naming file and line for: a line without a tab, an empty token, an unknown label, an I- that
    follows O or another type, invalid UTF-8, tokens without an IMGID line, an empty IMGID or an IMGID without
    tokens. Lenient mode logs a warning for each, repairs (I- -> B-, unknown label -> O, bad bytes -> U+FFFD,
    missing IMGID -> image_id "") or skips (line without tab, empty token, tweet without tokens), and counts.
    `fix_bio=True` repairs only dangling I- (I-X after O or another type -> B-X, the conlleval/seqeval reading,
    same entities) without a warning per line, keeping every other check strict: the published Twitter-2015
    splits have such tags (train 186, valid 53), Twitter-2017 has none.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise InputError(f"{path}: file not found; check the path (split files are train.txt, valid.txt, test.txt)")
    except OSError as e:
        raise InputError(f"{path}: cannot read ({e.strerror}); check the path and its permissions")
    reader = _Reader(path, lenient, fix_bio)
    reader.run(data)
    report = reader.report
    report.tweets = len(reader.tweets)
    if fix_bio and report.bio_repaired and not lenient:
        log.info("%s: %d dangling I- tag(s) read as B- (fix_bio)", path, report.bio_repaired)
    if report.problems and lenient:
        log.warning("%s: lenient read repaired or skipped %d problem(s): %s", path, report.problems,
                    {k: v for k, v in report.counts().items() if v and k not in ("tweets", "tokens", "entities")})
    return reader.tweets, report


def read_conll(path: str | os.PathLike, lenient: bool = False, fix_bio: bool = False) -> list[Tweet]:
    """Read a CoNLL split into tweets (see `read_conll_report` for what is checked and repaired)."""
    return read_conll_report(path, lenient, fix_bio)[0]


def write_conll(path: str | os.PathLike, tweets: Sequence[Tweet],
                labels_per_tweet: Iterable[Sequence[str]] | None = None) -> Path:
    """Write tweets in the CoNLL form (atomically: temp file + rename); return the path.

    `labels_per_tweet` (e.g. predictions) replaces each tweet's own labels; it must have one label per word.
    Labels are written as given (MISC stays MISC; the reader reads OTHER and MISC alike).
    """
    path = Path(path)
    label_lists = [t.labels for t in tweets] if labels_per_tweet is None else [list(x) for x in labels_per_tweet]
    if len(label_lists) != len(tweets):
        raise ValueError(f"expected {len(tweets)} label lists, got {len(label_lists)}")
    chunks: list[str] = []
    for i, (tweet, labels) in enumerate(zip(tweets, label_lists)):
        if len(labels) != len(tweet.words):
            raise ValueError(f"tweet {i} (IMGID:{tweet.image_id}): expected {len(tweet.words)} labels, "
                             f"got {len(labels)}")
        if any(c in tweet.image_id for c in "\r\n"):
            raise ValueError(f"tweet {i}: image id {tweet.image_id!r} contains a line break")
        lines = [f"{_IMGID}{tweet.image_id}"]
        for word, label in zip(tweet.words, labels):
            if not word.strip(_BLANK) or any(c in word for c in "\t\r\n"):
                raise ValueError(f"tweet {i} (IMGID:{tweet.image_id}): word {word!r} is empty or has a tab/line break")
            if label not in LABEL2ID:
                raise ValueError(f"tweet {i} (IMGID:{tweet.image_id}): unknown label {label!r}")
            lines.append(f"{word}\t{label}")
        chunks.append("\n".join(lines) + "\n\n")
    atomic_write_text(path, "".join(chunks))
    return path

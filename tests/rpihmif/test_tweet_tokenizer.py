"""Tweet tokenizer: character offsets round-trip, and the splits follow the Twitter-2015 CoNLL data."""
from __future__ import annotations

import random

import pytest

from rpihmif.tweet_tokenizer import token_texts, tokenize

ROUND_TRIP = [
    "RT @JayKenMinaj_: Me outside of where George Zimmerman got shot at. http://t.co/Z3neVBQ7vF",
    "Family 👨‍👩‍👧‍👦 at 🇫🇷 Paris 👍🏽👍🏿 ❤️ 1️⃣ #Paris2024 https://t.co/aBc?x=1&y=2.",
    "Suárez naïve Zoë e\u0301cole 日本語テキスト 東京タワー ➡ Ελλάδα Москва 🏳️‍🌈 done",
    "  leading and trailing spaces\t\n and\u00a0nbsp  ",
    "AT&amp;T &gt; Verizon?! ...wow!!! (really) \"quoted\" ‘single’ — dash 3.5% $125K 80,000 1st",
    "𝓯𝓪𝓷𝓬𝔂 𝕋𝕖𝕩𝕥 \U0001F9D1\u200d\U0001F4BB w/o same-sex",
]


@pytest.mark.parametrize("text", ROUND_TRIP)
def test_offsets_round_trip(text):
    tokens = tokenize(text)
    assert tokens, text
    last = 0
    for tok in tokens:
        assert text[tok.start:tok.end] == tok.text
        assert tok.start >= last and tok.end > tok.start
        assert not tok.text.isspace()
        last = tok.end


def test_round_trip_random_unicode():
    rng = random.Random(0)
    alphabet = "ab Z9 .,!?@#'’\u200d\ufe0f👍🏽🇫🇷é日😂\n\t/:-_&;" + "http://t.co/x "
    for _ in range(300):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 60)))
        toks = tokenize(text)
        assert all(text[t.start:t.end] == t.text for t in toks)
        # everything but whitespace and lone joiners is covered by some token
        covered = {i for t in toks for i in range(t.start, t.end)}
        for i, ch in enumerate(text):
            if i not in covered:
                assert ch.isspace() or ch in "\u200d\ufe0f\ufe0e", (text, i, ch)


def test_conll_style_splits():
    assert token_texts("RT @washingtonpost: Two maps in Baltimore http://t.co/FssPdKxglv") == [
        "RT", "@washingtonpost", ":", "Two", "maps", "in", "Baltimore", "http://t.co/FssPdKxglv"]
    assert token_texts("Ted Cruz's announcement... can't!!") == [
        "Ted", "Cruz", "'", "s", "announcement", ".", ".", ".", "can", "'", "t", "!", "!"]
    assert token_texts("#NWM7 Melee (Tower) 3.5 80,000 1st w/o t-shirt") == [
        "#NWM7", "Melee", "(", "Tower", ")", "3.5", "80,000", "1st", "w/o", "t-shirt"]


def test_urls_drop_trailing_punctuation():
    assert token_texts("see http://t.co/abc.") == ["see", "http://t.co/abc", "."]
    assert token_texts("(www.example.com/x)") == ["(", "www.example.com/x", ")"]


def test_emoji_sequences_are_one_token():
    family, skin, flag, rainbow = "👨\u200d👩\u200d👧\u200d👦", "👍🏽", "🇫🇷", "🏳️\u200d🌈"
    assert token_texts(f"{family}{skin}{flag}{rainbow}😂😂") == [family, skin, flag, rainbow, "😂", "😂"]
    toks = tokenize(f"a {family} b")
    assert [t.kind for t in toks] == ["word", "emoji", "word"]
    assert toks[1].end - toks[1].start == len(family)


def test_rejects_non_string():
    with pytest.raises(ValueError, match="expected str"):
        tokenize(b"bytes")  # type: ignore[arg-type]

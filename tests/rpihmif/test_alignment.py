"""Word/sub-word alignment: first-sub-token positions, question segment, truncation count, windows and merge."""
from __future__ import annotations

import pytest

from rpihmif.alignment import NUM_SHAPES, WindowTokenizer, merge_windows, word_shape_id
from rpihmif.text_encoder import load_text_encoder


@pytest.fixture(scope="module")
def tokenizer(tiny_bert_dir):
    return load_text_encoder(tiny_bert_dir)[1]


def test_word_shapes_distinguish_twitter_forms():
    ids = {w: word_shape_id(w) for w in ["john", "John", "JOHN", "iPhone", "2015", "r2d2", "@john", "#nba",
                                         "http://t.co/x", "!!", "😀"]}
    assert len(set(ids.values())) == len(ids)
    assert word_shape_id("www.x.com") == word_shape_id("http://t.co/x")
    assert all(0 < i < NUM_SHAPES for i in ids.values())


def test_first_subtoken_alignment_and_question_segment(tokenizer):
    enc = WindowTokenizer(tokenizer, "which entities ?", max_seq=48)
    words = ["John", "smithers", "in", "NYC", "\u200b", "😀"]
    w, cut = enc.encode_train(words)
    assert cut == 0 and w.n_words == len(words) and w.word_start == 0
    q = tokenizer("which entities ?", add_special_tokens=False)["input_ids"]
    assert w.input_ids[: len(q) + 2] == [tokenizer.cls_token_id] + q + [tokenizer.sep_token_id]
    assert w.input_ids[-1] == tokenizer.sep_token_id and w.question_len == len(q)
    assert w.token_type_ids == [0] * (len(q) + 2) + [1] * (len(w.input_ids) - len(q) - 2)
    for k, word in enumerate(words):
        pieces = tokenizer(word, add_special_tokens=False)["input_ids"] or [tokenizer.unk_token_id]
        assert w.input_ids[w.word_index[k]] == pieces[0]  # labels sit on the first sub-token
        assert w.word_index[k] > len(q) + 1  # only tweet words are labelled
    assert w.input_ids[w.word_index[4]] == tokenizer.unk_token_id  # zero sub-words -> [UNK], still a position
    assert w.word_index == sorted(set(w.word_index))


def test_no_question_is_cls_tweet_sep(tokenizer):
    enc = WindowTokenizer(tokenizer, "", max_seq=32)
    w, _ = enc.encode_train(["new", "york"])
    assert w.input_ids[0] == tokenizer.cls_token_id and w.input_ids[-1] == tokenizer.sep_token_id
    assert w.question_len == 0 and w.word_index[0] == 1 and set(w.token_type_ids) == {0}
    batch = enc.collate([w], [[1, 2]])
    assert not batch.question_mask.any()


def test_collate_pads_and_slices_labels(tokenizer):
    enc = WindowTokenizer(tokenizer, "which entities ?", max_seq=48)
    a, _ = enc.encode_train(["john", "smith", "in", "london"])
    b, _ = enc.encode_train(["nba"])
    batch = enc.collate([a, b], [[1, 2, 0, 3], [7]])
    assert batch.word_mask.tolist() == [[True] * 4, [True, False, False, False]]
    assert batch.labels.tolist() == [[1, 2, 0, 3], [7, 0, 0, 0]]
    assert batch.question_mask.sum(1).tolist() == [a.question_len, b.question_len]
    assert batch.attention_mask.sum(1).tolist() == [len(a.input_ids), len(b.input_ids)]
    with pytest.raises(ValueError):
        enc.collate([a], [[1, 2]])


def test_truncation_counts_cut_words(tokenizer):
    enc = WindowTokenizer(tokenizer, "which entities ?", max_seq=32)
    words = ["love"] * 100
    w, cut = enc.encode_train(words)
    assert len(w.input_ids) <= 32 and cut == 100 - w.n_words and cut > 0


def test_300_word_tweet_gets_every_word_labelled(tokenizer):
    enc = WindowTokenizer(tokenizer, "which entities ?", max_seq=32)
    words = [f"w{i}" for i in range(300)]
    windows = enc.encode_predict(words)
    assert len(windows) > 1 and all(len(w.input_ids) <= 32 for w in windows)
    covered = set()
    for prev, nxt in zip(windows, windows[1:]):
        assert nxt.word_start < prev.word_start + prev.n_words  # windows overlap
    for w in windows:
        covered.update(range(w.word_start, w.word_start + w.n_words))
    assert covered == set(range(300))
    outs = [[(j, w.word_start + k) for k in range(w.n_words)] for j, w in enumerate(windows)]
    merged = merge_windows(300, windows, outs)
    assert [m[1] for m in merged] == list(range(300))  # every word, in order, from a window that holds it
    # an overlapped word comes from the window where it is most central
    w0, w1 = windows[0], windows[1]
    last_of_w0 = w0.word_start + w0.n_words - 1
    assert merged[last_of_w0][0] == 1
    assert enc.encode_predict([]) == []


def test_budget_too_small_for_question(tokenizer):
    with pytest.raises(ValueError, match="max_seq"):
        WindowTokenizer(tokenizer, "which entities ? " * 5, max_seq=16)

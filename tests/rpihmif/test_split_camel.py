"""camelCase words into the uncased encoder as their parts (text.split_camel): `TheEconomist` -> `the economist`.

Only the sub-words change: each word keeps one label on its first sub-token, windows still cover every word, a whole
`@mention`/`#hashtag` stays one word, and a split that takes more sub-words than the word whole (`YouTube`: `youtube`
is one word piece) is not taken.
"""
from __future__ import annotations

import dataclasses
import json

import pandas as pd
import pytest
import torch
from helpers import tag_config, tiny_dataset, tiny_model_config, tiny_overrides, train_tiny_checkpoint, write_dump
from transformers import BertTokenizerFast

from exit_codes import UsageError
from pipeline.stage_config import stage_config
from pipeline.tag.manifest import data_folder
from pipeline.tag.stage import run_tag
from pipeline.train.trainer import Trainer
from rpihmif.alignment import WindowTokenizer, merge_windows, split_camel_case
from rpihmif.checkpoint import load_checkpoint, save_checkpoint
from rpihmif.config import ModelConfig
from rpihmif.model import build_model
from rpihmif.predictor import Tagger


@pytest.mark.parametrize("word, parts", [
    ("KristapsPorzingis", "Kristaps Porzingis"),
    ("GameOfThrones", "Game Of Thrones"),
    ("TheEconomist", "The Economist"),
    ("#GameOfThrones", "#GameOfThrones"), ("@TheEconomist", "@TheEconomist"),  # a whole mention or hashtag: one word
    ("XMenApocalypse", "X Men Apocalypse"),  # a capital run ends where the next word starts
    ("NBAFinals", "NBA Finals"),
    ("NordoffRobbins1", "Nordoff Robbins 1"),
    ("MyFest2015", "My Fest 2015"),
    ("4ever", "4 ever"),
    ("new_york", "new york"),
    ("ÉcoleNormale", "École Normale"),
    ("NBA", "NBA"), ("lebron", "lebron"), ("London", "London"), ("2015", "2015"), ("@a", "@a"), ("", ""),
    ("http://t.co/15beLF6Ajw", "http://t.co/15beLF6Ajw"), ("www.FooBar.com/XyZ", "www.FooBar.com/XyZ"),
])
def test_split_camel_case(word, parts):
    assert split_camel_case(word) == parts


@pytest.fixture(scope="module")
def tokenizer():
    """Lower-case character pieces plus a few whole words: `youtube` is one piece, `you` and `tube` are not."""
    chars = [*"abcdefghijklmnopqrstuvwxyz0123456789#@_"]
    words = ["game", "of", "thrones", "the", "economist", "youtube", "new", "york"]
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *chars, *("##" + c for c in chars), *words]
    return BertTokenizerFast(vocab={w: i for i, w in enumerate(vocab)}, do_lower_case=True)


def pieces(tok, window):
    """The sub-word strings of each word of a window."""
    ends = window.word_index[1:] + [len(window.input_ids) - 1]
    return [tok.convert_ids_to_tokens(window.input_ids[a:b]) for a, b in zip(window.word_index, ends)]


def test_a_camel_word_is_tokenized_as_its_parts_only_when_that_is_no_longer(tokenizer):
    words = ["GameOfThrones", "YouTube", "TheEconomist", "NewYork", "love", "_", "a__", "#NewYork"]
    whole = WindowTokenizer(tokenizer, "", 64).encode_train(words)[0]
    split = WindowTokenizer(tokenizer, "", 64, split_camel=True).encode_train(words)[0]
    assert pieces(tokenizer, split) == [["game", "of", "thrones"], ["youtube"], ["the", "economist"],
                                        ["new", "york"], ["l", "##o", "##v", "##e"], ["_"], ["a"],
                                        ["#", "new", "##y", "##o", "##r", "##k"]]
    assert pieces(tokenizer, whole)[5:] == [["_"], ["a", "_", "_"], pieces(tokenizer, split)[7]]  # `_` kept
    assert pieces(tokenizer, whole)[1:3] == [["youtube"], ["the", *("##" + c for c in "economist")]]
    # one entry per word either way: the word's label sits on its first sub-token, shapes come from the cased word
    assert (split.n_words, split.shape_ids, split.word_start) == (whole.n_words, whole.shape_ids, 0)
    assert len(split.input_ids) < len(whole.input_ids)


def test_windows_of_a_long_tweet_cover_every_word_with_split_words(tokenizer):
    words = ["GameOfThrones", "TheEconomist", "x", "NewYork", "y"] * 6
    enc = WindowTokenizer(tokenizer, "", 16, split_camel=True)
    windows = enc.encode_predict(words)
    assert len(windows) > 1 and all(len(w.input_ids) <= 16 for w in windows)
    merged = merge_windows(len(words), windows, [list(range(w.word_start, w.word_start + w.n_words)) for w in windows])
    assert merged == list(range(len(words)))
    labels = [[i % 3 for i in range(len(words))]] * len(windows)
    batch = enc.collate(windows, labels)
    for row, w in enumerate(windows):  # each window's labels are its own words' labels, one per word
        assert batch.labels[row, : w.n_words].tolist() == labels[0][w.word_start : w.word_start + w.n_words]
        assert int(batch.word_mask[row].sum()) == w.n_words


def test_the_checkpoint_carries_it_and_old_configs_read_it_as_off(tiny_model_config, tmp_path):
    old = tiny_model_config.to_dict()
    old["text"].pop("split_camel")
    assert ModelConfig.from_dict(old).text.split_camel is False
    config = dataclasses.replace(tiny_model_config, text_only=True,
                                 text=dataclasses.replace(tiny_model_config.text, split_camel=True))
    torch.manual_seed(0)
    model, tok = build_model(config)
    with torch.no_grad():  # a CRF that prefers entities, so every prediction carries scores to compare
        model.crf.crf.start_transitions[model.model_config.labels.index("O")] = -5.0
    save_checkpoint(tmp_path / "ckpt", model.eval(), tok)
    loaded, tok2, config2 = load_checkpoint(tmp_path / "ckpt")
    assert WindowTokenizer.for_model(tok2, config2).split_camel
    # the tagger splits as training did: predictions from the checkpoint match the model it was saved from
    words = [["@", "NewYork", "loves", "GameOfThrones"], ["AppleGoogle", "obama2015"]]
    got = [Tagger(loaded, tok2, device="cpu").predict(words),
           Tagger(model, tok, device="cpu").predict(words),
           Tagger(model, tok, dataclasses.replace(config, text=tiny_model_config.text), device="cpu").predict(words)]
    scores = [[(e.start, e.end, round(e.score, 6)) for p in preds for e in p.entities] for preds in got]
    assert scores[0] and scores[0] == scores[1] and [len(p.labels) for p in got[0]] == [4, 2]
    assert scores[2] != scores[0]  # the same weights fed whole words: the flag is what changed the inputs
    assert json.loads((tmp_path / "ckpt" / "config.json").read_text())["rpihmif"]["text"]["split_camel"] is True


def test_train_config_reaches_the_model_and_is_checked(tiny_bert_dir, tmp_path):
    data = tiny_dataset(tmp_path)
    assert stage_config("train").text.split_camel is False
    cfg = stage_config("train", overrides=tiny_overrides(tiny_bert_dir, data, tmp_path / "run", split_camel="true"))
    trainer = Trainer(cfg)
    assert trainer.model_config.text.split_camel and trainer.window_tokenizer.split_camel
    with pytest.raises(UsageError, match="split_camel"):
        stage_config("train", overrides=tiny_overrides(tiny_bert_dir, data, tmp_path / "bad", split_camel="maybe"))


def test_tag_corpus_tags_with_a_split_camel_and_style_model_as_the_tagger_does(tiny_bert_dir, tmp_path):
    """tag-corpus runs the checkpoint's own text settings: its rows are what `Tagger.predict` gives for the tokens."""
    base = tiny_model_config(tiny_bert_dir)
    config = dataclasses.replace(base, text_only=True, text=dataclasses.replace(
        base.text, split_camel=True, lstm_dim=8, dataset_dim=4, datasets=["twitter2015", "twitter2017"],
        dataset="twitter2017"))
    ckpt = train_tiny_checkpoint(config, tmp_path / "ckpt", steps=60)
    texts = ["rt @ JohnSmith is at the # NewYork game today", "love GoogleApple and the NBA_Finals",
             "obama in NewYork today2015", "the game of paris is new"]
    dump = write_dump(tmp_path / "dumps" / "camel.jsonl", [{"id": f"c{i}", "text": t} for i, t in enumerate(texts)])
    env = {"ckpt": ckpt, "cache": tmp_path / "cache"}
    summary = run_tag([dump], tag_config(env, tmp_path / "out", precision="fp32"))  # as the fp32 Tagger below
    assert (summary["rows"], summary["rejects"]) == (4, 0)
    df = pd.read_parquet(data_folder(tmp_path / "out")).sort_values("line")
    tagger = Tagger.from_pretrained(ckpt)
    assert tagger.window_tokenizer.split_camel and tagger.config.text.dataset == "twitter2017"
    preds = tagger.predict([list(tokens) for tokens in df["tokens"]])
    for row, pred in zip(df.itertuples(), preds):
        got = [(e["start_token"], e["end_token"], e["type"], round(e["score"], 5)) for e in row.entities]
        assert got == [(e.start, e.end, e.type, round(e.score, 5)) for e in pred.entities]
    assert sum(len(p.entities) for p in preds) >= 4

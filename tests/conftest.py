"""Shared fixtures: a tiny BERT (hidden 32, 2 layers, 2 heads) saved with save_pretrained, its ModelConfig, a tiny CLIP.

Builders live in tests/helpers.py; test modules use these fixtures and helpers, never each other.
"""
from __future__ import annotations

import string

import helpers
import pytest

TINY_WORDS = ["which", "entities", "?", "rt", "the", "in", "at", "to", "of", "and", "a", "is", "new", "york",
              "john", "smith", "london", "paris", "apple", "google", "obama", "nba", "today", "love", "game"]


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory):
    """Folder with a tiny BertModel + BertTokenizerFast (lower-case word pieces over a-z, 0-9, punctuation)."""
    import torch
    from transformers import BertConfig, BertModel, BertTokenizerFast

    folder = tmp_path_factory.mktemp("tiny_bert")
    chars = list(string.ascii_lowercase + string.digits + string.punctuation)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + chars + ["##" + c for c in chars] + TINY_WORDS
    vocab = list(dict.fromkeys(vocab))
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    tokenizer = BertTokenizerFast(vocab={w: i for i, w in enumerate(vocab)}, do_lower_case=True)
    tokenizer.save_pretrained(str(folder))
    config = BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=128, type_vocab_size=2)
    torch.manual_seed(0)
    BertModel(config).save_pretrained(str(folder))
    return str(folder)


@pytest.fixture
def tiny_model_config(tiny_bert_dir):
    """A small ModelConfig over the tiny BERT, with a tiny visual layout (Dv 8, Lo 5, Lg 3, Lr 2, K 2); fresh each test."""
    return helpers.tiny_model_config(tiny_bert_dir)


@pytest.fixture
def two_datasets(tmp_path):
    """data/ with tiny twitter2015 (train 16, valid 8), twitter2017 (train 20, valid 8) and other (train 8, valid 4)."""
    data = tmp_path / "data"
    for i, name in enumerate(("twitter2015", "twitter2017")):
        (data / name).mkdir(parents=True)
        helpers.write_split(data / name / "train.txt", 16 + 4 * i, seed=10 + i)
        helpers.write_split(data / name / "valid.txt", 8, seed=20 + i)
    (data / "other").mkdir()
    helpers.write_split(data / "other" / "train.txt", 8, seed=30)
    helpers.write_split(data / "other" / "valid.txt", 4, seed=31)
    return data


@pytest.fixture(scope="session")
def tiny_clip_dir(tmp_path_factory):
    """A tiny CLIPVisionModel folder (hidden 32, 2 layers, patch 32), shared read-only by the whole session."""
    return helpers.make_tiny_clip(tmp_path_factory.mktemp("tiny_clip"))


@pytest.fixture(scope="session")
def tag_env(tmp_path_factory, tiny_bert_dir):
    """A trained tiny checkpoint, a dump folder with images (2 of 3 cached) and the feature cache (tag-corpus tests)."""
    root = tmp_path_factory.mktemp("tagworld")
    cfg = helpers.tiny_model_config(tiny_bert_dir)
    ckpt = helpers.train_tiny_checkpoint(cfg, root / "ckpt")
    images = helpers.draw_images(root / "dumps", 3)
    helpers.make_feature_cache(root / "cache", cfg.visual.spec(), images[:2])
    return {"root": root, "ckpt": ckpt, "cache": root / "cache", "images": images}


@pytest.fixture(autouse=True, scope="session")
def _isolated_user_cache(tmp_path_factory):
    """The default feature-cache root of every test run is a temp folder, never the user's ~/.cache."""
    import os

    os.environ["RPIHMIF_CACHE"] = str(tmp_path_factory.mktemp("user_cache"))
    yield

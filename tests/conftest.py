"""Shared tiny fixtures: a tiny BERT (hidden 32, 2 layers, 2 heads) saved with save_pretrained, and its ModelConfig.

Other test files reuse `tiny_bert_dir` (session-scoped folder) and `tiny_model_config` (fresh ModelConfig).
"""
from __future__ import annotations

import string

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
    """A small ModelConfig over the tiny BERT, with a tiny visual layout (Dv 8, Lo 5, Lg 3, Lr 2, K 2)."""
    from rpihmif.config import HIMConfig, IFFEConfig, ModelConfig, TextEncoderConfig, VisualConfig

    return ModelConfig(
        text=TextEncoderConfig(bert_name=tiny_bert_dir, max_seq=48, shape_dim=8, dropout=0.0),
        him=HIMConfig(question="which entities ?", num_capsules=4, hidden=16, heads=2),
        iffe=IFFEConfig(iterations=3),
        visual=VisualConfig(dim=8, orig_tokens=5, grounding_tokens=3, rcnn_tokens=2, max_crops=2),
    )


@pytest.fixture(autouse=True, scope="session")
def _isolated_user_cache(tmp_path_factory):
    """The default feature-cache root of every test run is a temp folder, never the user's ~/.cache."""
    import os

    os.environ["RPIHMIF_CACHE"] = str(tmp_path_factory.mktemp("user_cache"))
    yield

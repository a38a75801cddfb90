"""Character features (text.char_dim): byte ids of the cased word, (B, W, C) padding, the char CNN in the model
(text-only, multimodal, bf16), checkpoints with and without chars, windowed prediction, tag-corpus and the train CLI."""
from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import helpers
import numpy as np
import pytest
import torch

from rpihmif.precision import resolve_precision
from pipeline.tag.stage import run_tag
from rpihmif.alignment import WindowTokenizer
from rpihmif.chars import CHAR_BOW, CHAR_EOW, CHAR_PAD, CharCNN, word_char_ids
from rpihmif.checkpoint import load_checkpoint, save_checkpoint
from rpihmif.errors import ModelError
from rpihmif.labels import LABEL2ID, LABELS
from rpihmif.model import build_model
from rpihmif.predictor import Tagger
from rpihmif.visual import collate_visual

ROOT = helpers.ROOT
CASED = [["John", "Smith", "in", "London"], ["RT", "@Obama", "at", "the", "#NBA", "game"]]
LOWER = [[w.lower() for w in ws] for ws in CASED]
TAGS = [["B-PER", "I-PER", "O", "B-LOC"], ["O", "B-PER", "O", "O", "B-ORG", "O"]]


def char_config(config, char_dim=8, **text):
    return dataclasses.replace(config, text=dataclasses.replace(config.text, char_dim=char_dim, **text))


def make(config, seed=0):
    torch.manual_seed(seed)
    model, tokenizer = build_model(config)
    return model.eval(), tokenizer, WindowTokenizer.for_model(tokenizer, config)


def batch(enc, words, labels=True):
    return enc.collate([enc.encode_train(w)[0] for w in words],
                       [[LABEL2ID[t] for t in ts] for ts in TAGS] if labels else None)


def feats(spec, seed):
    rng = np.random.default_rng(seed)
    k = spec.max_crops
    return {"orig": rng.standard_normal((spec.orig_tokens, spec.dim)), "orig_mask": True,
            "grounding": rng.standard_normal((k, spec.grounding_tokens, spec.dim)), "grounding_mask": np.ones(k, bool),
            "rcnn": rng.standard_normal((k, spec.rcnn_tokens, spec.dim)), "rcnn_mask": np.ones(k, bool)}


def test_char_ids_keep_case_bytes_and_clip_prefix_and_suffix():
    assert word_char_ids("John", 20) == [CHAR_BOW, ord("J") + 1, ord("o") + 1, ord("h") + 1, ord("n") + 1, CHAR_EOW]
    assert word_char_ids("John", 20) != word_char_ids("john", 20)
    assert word_char_ids("#NBA", 20)[1] == ord("#") + 1 and word_char_ids("@x", 20)[1] == ord("@") + 1
    assert word_char_ids("é", 20) == [CHAR_BOW, 0xC3 + 1, 0xA9 + 1, CHAR_EOW]  # UTF-8 bytes: no vocab file
    assert word_char_ids("", 20) == [CHAR_BOW, CHAR_EOW]
    long = "#SuperBowlSunday2015Party"  # 25 bytes -> first 10 and last 10
    assert word_char_ids(long, 20)[1:-1] == [b + 1 for b in b"#SuperBowl" + b"nday2015Party"[-10:]]
    assert len(word_char_ids(long, 7)) == 9 and word_char_ids(long, 1)[1:-1] == [ord("#") + 1]
    assert all(0 < i < 259 for w in ["😀", "ÄÖÜ", "http://t.co/x"] for i in word_char_ids(w, 20))
    with pytest.raises(ValueError, match="max_chars"):
        word_char_ids("x", 0)


def test_collate_pads_char_ids_to_b_w_c(tiny_model_config):
    _, tokenizer, enc = make(char_config(tiny_model_config))
    text = enc.collate([enc.encode_train(["John", "Smithsonian"])[0], enc.encode_train(["nba"])[0]])
    assert text.char_ids.shape == (2, 2, len("Smithsonian") + 2) and text.char_ids.dtype == torch.long
    assert text.char_ids[0, 1].tolist() == word_char_ids("Smithsonian", 20)
    assert text.char_ids[1, 0].tolist()[:5] == word_char_ids("nba", 20) and (text.char_ids[1, 0, 5:] == CHAR_PAD).all()
    assert (text.char_ids[1, 1] == CHAR_PAD).all()  # padding word
    cased, lower = batch(enc, CASED, False), batch(enc, LOWER, False)
    assert torch.equal(cased.input_ids, lower.input_ids)  # the uncased tokenizer cannot see the case ...
    assert not torch.equal(cased.char_ids, lower.char_ids)  # ... the char ids can
    off = WindowTokenizer.for_model(tokenizer, tiny_model_config)
    assert off.max_chars == 0 and batch(off, CASED).char_ids is None
    with pytest.raises(ValueError, match="without them"):
        enc.collate([off.encode_train(["x"])[0]])


def test_char_cnn_masks_padding_characters_and_words():
    torch.manual_seed(0)
    cnn = CharCNN(6, emb_dim=4).eval()
    ids = torch.tensor(word_char_ids("Paris", 20))
    alone = cnn(ids.view(1, 1, -1))
    padded = torch.zeros(1, 2, 12, dtype=torch.long)
    padded[0, 0, : len(ids)] = ids
    out = cnn(padded)
    assert out.shape == (1, 2, 6)
    assert torch.allclose(out[0, 0], alone[0, 0], atol=1e-6) and (out[0, 1] == 0).all()
    with pytest.raises(ValueError, match="odd kernel"):
        CharCNN(6, kernel=2)


@pytest.mark.parametrize("text_only", [True, False])
def test_model_sees_case_and_trains_with_chars(tiny_model_config, text_only):
    config = dataclasses.replace(char_config(tiny_model_config), text_only=text_only)
    model, _, enc = make(config)
    assert model.emission.in_features == 32 + 8 + 8  # encoder + shape + char
    spec = config.visual.spec()
    visual = collate_visual([feats(spec, 1), None], spec)
    no_shape = dataclasses.replace(config, text=dataclasses.replace(config.text, word_shape=False))
    plain, _, plain_enc = make(no_shape)
    with torch.no_grad():  # without the shape embedding, only the chars tell "John" from "john"
        a, b = plain(batch(plain_enc, CASED), visual), plain(batch(plain_enc, LOWER), visual)
    assert not torch.allclose(a.emissions, b.emissions)
    model.train()
    out = model(batch(enc, CASED), visual)
    assert out.emissions.shape == (2, 6, len(LABELS)) and torch.isfinite(out.loss)
    assert (out.routing is None) == text_only
    out.loss.backward()
    grads = [model.chars.conv.weight.grad, model.chars.embed.weight.grad]
    assert all(g is not None and torch.isfinite(g).all() and g.abs().sum() > 0 for g in grads)
    assert model.chars.embed.weight.grad[CHAR_PAD].abs().sum() == 0  # padding id stays zero
    groups = {g["name"]: g["params"] for g in model.param_groups(1e-4, 1e-3, 1e-2, 0.01)}
    assert any(p is model.chars.conv.weight for p in groups["fusion"])
    with pytest.raises(ValueError, match="needs char ids"):
        model(batch(WindowTokenizer.for_model(enc.tokenizer, tiny_model_config), CASED))


def test_bf16_autocast_with_chars(tiny_model_config):
    model, tokenizer, enc = make(char_config(tiny_model_config))
    bf16 = resolve_precision("bf16", "cpu")
    text = batch(enc, CASED)
    with torch.no_grad():
        fp = model(text)
        with bf16.autocast():
            low = model(text)
    assert low.loss.dtype == torch.float32 and torch.isfinite(low.emissions.float()).all()
    assert torch.allclose(low.emissions.float(), fp.emissions, atol=0.1)
    preds = Tagger(model, tokenizer, autocast=bf16.autocast).predict(CASED)
    assert [len(p.labels) for p in preds] == [4, 6]


def test_checkpoint_round_trip_with_chars_is_strict_and_identical(tiny_model_config, tmp_path):
    config = char_config(tiny_model_config, char_dim=6, char_max_bytes=9)
    model, tokenizer, enc = make(config)
    with torch.no_grad():
        model.emission.bias.copy_(torch.linspace(-1, 1, len(LABELS)))
    folder = save_checkpoint(tmp_path / "ckpt", model, tokenizer)
    text_cfg = json.loads((folder / "config.json").read_text())["rpihmif"]["text"]
    assert (text_cfg["char_dim"], text_cfg["char_max_bytes"]) == (6, 9)
    loaded, tok2, cfg2 = load_checkpoint(folder)
    assert cfg2.text == dataclasses.replace(config.text, bert_name=Path(config.text.bert_name).name)
    assert WindowTokenizer.for_model(tok2, cfg2).max_chars == 9
    spec = config.visual.spec()
    visual = collate_visual([feats(spec, 2), None], spec)
    with torch.no_grad():
        assert torch.equal(model(batch(enc, CASED), visual).emissions, loaded(batch(enc, CASED), visual).emissions)
    fs = [feats(spec, 2), None]
    assert Tagger(model, tokenizer, config).predict(CASED, fs) == Tagger.from_pretrained(folder).predict(CASED, fs)
    # a config.json that lost its char keys describes a char-less model: the char weights no longer fit (strict)
    data = json.loads((folder / "config.json").read_text())
    for key in ("char_dim", "char_emb_dim", "char_max_bytes"):
        del data["rpihmif"]["text"][key]
    (folder / "config.json").write_text(json.dumps(data))
    with pytest.raises(ModelError, match="does not match"):
        load_checkpoint(folder)


def test_old_checkpoint_without_char_keys_loads_as_char_dim_0(tiny_model_config, tmp_path):
    model, tokenizer, enc = make(tiny_model_config)
    folder = save_checkpoint(tmp_path / "old", model, tokenizer)
    data = json.loads((folder / "config.json").read_text())
    for key in ("char_dim", "char_emb_dim", "char_max_bytes"):
        del data["rpihmif"]["text"][key]  # as written before char features existed
    (folder / "config.json").write_text(json.dumps(data))
    loaded, _, config = load_checkpoint(folder)
    assert config.text.char_dim == 0 and loaded.chars is None
    text = batch(enc, CASED)
    assert text.char_ids is None
    with torch.no_grad():
        assert torch.equal(model(text).emissions, loaded(text).emissions)
    assert Tagger.from_pretrained(folder).predict(CASED) == Tagger(model, tokenizer).predict(CASED)


def test_windowed_long_tweet_with_chars(tiny_model_config):
    config = char_config(tiny_model_config)
    model, tokenizer, enc = make(config)
    words = ["The", "game"] * 30 + ["Obama", "in", "London", "#Today"]
    windows = enc.encode_predict(words)
    assert len(windows) > 1
    for w in windows:
        assert w.char_ids == [word_char_ids(x, 20) for x in words[w.word_start : w.word_start + w.n_words]]
    (pred,) = Tagger(model, tokenizer, config).predict([words], batch_size=2)
    assert len(pred.labels) == len(words) and all(0 <= e.start < e.end <= len(words) for e in pred.entities)
    (again,) = Tagger(model, tokenizer, config).predict([words], batch_size=64)  # other batches, other padding
    assert again == pred


def test_tag_corpus_with_a_char_checkpoint(tiny_model_config, tmp_path):
    ckpt = helpers.train_tiny_checkpoint(char_config(tiny_model_config), tmp_path / "ckpt", steps=10)
    recs = [{"id": "a", "text": "John Smith in London today"}, {"id": "long", "text": "the game " * 40 + "Obama"}]
    dump = helpers.write_dump(tmp_path / "d.jsonl", recs)
    env = {"ckpt": ckpt, "cache": tmp_path / "no-cache"}
    summary = run_tag([dump], helpers.tag_config(env, tmp_path / "out"))
    assert (summary["rows"], summary["rejects"]) == (2, 0)
    rows = helpers.tag_rows(tmp_path / "out").set_index("id")
    tagger = Tagger.from_pretrained(ckpt)
    for rid in ("a", "long"):
        tokens = list(rows.loc[rid, "tokens"])
        expected = tagger.predict([tokens])[0]
        assert [(e["start_token"], e["end_token"]) for e in rows.loc[rid, "entities"]] == \
            [(e.start, e.end) for e in expected.entities]


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "cli.py"), *args], check=False, capture_output=True, text=True,
                          timeout=300, cwd=ROOT, env={**os.environ, "CI": "true"})


@pytest.mark.slow
def test_train_cli_with_char_dim(tiny_bert_dir, tmp_path):
    data = helpers.tiny_dataset(tmp_path)
    run = tmp_path / "run"
    sets = helpers.tiny_overrides(tiny_bert_dir, data, run, num_epochs=1, char_dim=8, char_max_bytes=12)
    args = [a for s in sets for a in ("--set", s)]
    res = cli("train", *args)
    assert res.returncode == 0, res.stderr[-2000:]
    text_cfg = json.loads((run / "best" / "config.json").read_text())["rpihmif"]["text"]
    assert (text_cfg["char_dim"], text_cfg["char_max_bytes"]) == (8, 12)
    assert Tagger.from_pretrained(run / "best").model.chars.char_dim == 8
    out = tmp_path / "m.json"  # evaluate checks the folder (weights header vs the rebuilt model) and tags with chars
    res = cli("evaluate", str(run / "best"), str(data / "valid.txt"), "--out", str(out),
              "--set", f"cache_dir={tmp_path / 'none'}")
    assert res.returncode == 0, res.stderr[-2000:]
    assert json.loads(out.read_text())["tweets"] == 6
    bad = cli("train", *args, "--set", "char_dim=-1")
    assert bad.returncode == 2 and "char_dim" in bad.stderr

"""Casing into the encoder input (text.case_input) and the BiLSTM over words (text.lstm_dim): the zero start, what the
encoder sees, padding invariance, bf16, optimizer groups, strict checkpoints and the train CLI."""
from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

import helpers
import numpy as np
import pytest
import torch

from rpihmif.alignment import WindowTokenizer
from rpihmif.checkpoint import load_checkpoint, save_checkpoint
from rpihmif.labels import LABEL2ID, LABELS
from rpihmif.model import build_model
from rpihmif.visual import collate_visual

CASED = [["John", "Smith", "visits", "NEW", "York"], ["rt", "@bob", "apple", "#NBA"]]
TAGS = [["B-PER", "I-PER", "O", "B-LOC", "I-LOC"], ["O", "O", "B-ORG", "B-ORG"]]


def with_text(config, **text):
    return dataclasses.replace(config, text_only=True, text=dataclasses.replace(config.text, **text))


def make(config, seed=0):
    torch.manual_seed(seed)
    model, tokenizer = build_model(config)
    return model.eval(), WindowTokenizer.for_model(tokenizer, config)


def batch(enc, words, labels=True):
    tags = [[LABEL2ID[t] for t in ts] for ts in TAGS[: len(words)]] if labels else None
    return enc.collate([enc.encode_train(w)[0] for w in words], tags)


def test_case_input_starts_as_the_pretrained_encoder(tiny_model_config):
    plain, enc = make(with_text(tiny_model_config))
    cased, _ = make(with_text(tiny_model_config, case_input=True))
    assert cased.case_input.weight.abs().sum() == 0
    b = batch(enc, CASED)
    with torch.no_grad():
        assert torch.equal(plain(b).loss, cased(b).loss)
    # the new table draws no random numbers: every other layer initialises as before
    assert torch.equal(plain.emission.weight, cased.emission.weight)


def test_case_input_lets_the_encoder_tell_casing_apart(tiny_model_config):
    """The tiny tokenizer lower-cases: only the case input can make `NEW YORK` and `new york` differ in the encoder."""
    lower = [[w.lower() for w in ws] for ws in CASED]
    for case_input, differs in ((False, False), (True, True)):
        model, enc = make(with_text(tiny_model_config, case_input=case_input, word_shape=False))
        if case_input:
            torch.nn.init.normal_(model.case_input.weight)  # as after training
            with torch.no_grad():
                model.case_input.weight[0] = 0
        a, b = batch(enc, CASED), batch(enc, lower)
        assert torch.equal(a.input_ids, b.input_ids) and not torch.equal(a.shape_ids, b.shape_ids)
        with torch.no_grad():
            states_a, _ = model._word_features(a)
            states_b, _ = model._word_features(b)
        assert (not torch.allclose(states_a, states_b)) is differs


def test_case_input_marks_each_words_first_sub_token_only(tiny_model_config):
    model, enc = make(with_text(tiny_model_config, case_input=True))
    seen = {}
    model.encoder.register_forward_pre_hook(lambda m, args, kw: seen.update(kw), with_kwargs=True)
    with torch.no_grad():
        torch.nn.init.normal_(model.case_input.weight)
        model.case_input.weight[0] = 0
        b = batch(enc, CASED)
        model(b)
    plain = model.encoder.get_input_embeddings()(b.input_ids)
    changed = (seen["inputs_embeds"] - plain).abs().sum(-1) > 0  # (B, T)
    expected = torch.zeros_like(changed)
    for row in range(b.word_index.size(0)):
        expected[row, b.word_index[row][b.word_mask[row]]] = True
    assert torch.equal(changed, expected)


def test_case_input_trains_at_the_encoder_rate(tiny_model_config):
    model, _ = make(with_text(tiny_model_config, case_input=True, lstm_dim=4))
    groups = {g["name"]: g for g in model.param_groups(1e-5, 1e-3, 1e-2, 0.01)}
    case = model.case_input.weight
    assert any(p is case for p in groups["text"]["params"]) and groups["text"]["lr"] == 1e-5
    lstm = set(map(id, model.context.parameters()))
    assert lstm <= {id(p) for name in ("fusion", "fusion_no_decay") for p in groups[name]["params"]}


@pytest.mark.parametrize("text_only", [True, False])
def test_lstm_output_of_a_tweet_does_not_depend_on_its_batch(tiny_model_config, text_only):
    config = dataclasses.replace(with_text(tiny_model_config, lstm_dim=6), text_only=text_only)
    model, enc = make(config)
    short = CASED[1]
    with torch.no_grad():
        alone = model(batch(enc, [short], labels=False)).emissions[0, : len(short)]
        padded = model(batch(enc, [CASED[0], short], labels=False)).emissions[1, : len(short)]
    assert model.emission.in_features == 12
    torch.testing.assert_close(alone, padded, rtol=1e-5, atol=1e-5)


def test_lstm_feeds_him_and_iffe_with_images(tiny_model_config):
    config = dataclasses.replace(tiny_model_config, text=dataclasses.replace(tiny_model_config.text, lstm_dim=6))
    model, enc = make(config)
    spec = config.visual.spec()
    rng = np.random.default_rng(0)
    k = spec.max_crops
    feat = {"orig": rng.standard_normal((spec.orig_tokens, spec.dim)), "orig_mask": True,
            "grounding": rng.standard_normal((k, spec.grounding_tokens, spec.dim)), "grounding_mask": np.ones(k, bool),
            "rcnn": rng.standard_normal((k, spec.rcnn_tokens, spec.dim)), "rcnn_mask": np.ones(k, bool)}
    model.train()
    out = model(batch(enc, CASED), collate_visual([feat, None], spec))
    assert out.emissions.shape == (2, 5, len(LABELS)) and out.routing.shape == (2, 5, 3)
    torch.testing.assert_close(out.routing[0, :5].sum(-1), torch.ones(5))
    out.loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.context.parameters())


def test_both_options_train_under_bf16_autocast(tiny_model_config):
    model, enc = make(with_text(tiny_model_config, case_input=True, lstm_dim=6))
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    b = batch(enc, CASED)
    losses = []
    for _ in range(15):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(b)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        losses.append(out.loss.item())
    assert torch.isfinite(torch.tensor(losses)).all() and losses[-1] < 0.5 * losses[0]
    assert model.case_input.weight.abs().sum() > 0 and model.case_input.weight[0].abs().sum() == 0  # padding row


def test_checkpoint_round_trip_with_case_input_and_lstm(tiny_model_config, tmp_path):
    config = with_text(tiny_model_config, case_input=True, lstm_dim=5)
    model, enc = make(config)
    with torch.no_grad():
        torch.nn.init.normal_(model.case_input.weight)
    save_checkpoint(tmp_path / "ck", model, enc.tokenizer)
    loaded, _, loaded_config = load_checkpoint(tmp_path / "ck")
    assert loaded_config.text.case_input and loaded_config.text.lstm_dim == 5
    b = batch(enc, CASED, labels=False)
    with torch.no_grad():
        torch.testing.assert_close(model(b).emissions, loaded(b).emissions)


def test_checkpoint_without_the_new_keys_loads_with_both_off(tiny_model_config, tmp_path):
    model, enc = make(with_text(tiny_model_config))
    save_checkpoint(tmp_path / "ck", model, enc.tokenizer)
    path = tmp_path / "ck" / "config.json"
    raw = path.read_text()
    assert '"lstm_dim": 0' in raw and '"case_input": false' in raw
    path.write_text(raw.replace('"lstm_dim": 0,', "").replace('"case_input": false,', ""))
    loaded, _, config = load_checkpoint(tmp_path / "ck")
    assert not config.text.case_input and config.text.lstm_dim == 0 and loaded.context is None


def test_train_cli_with_case_input_and_lstm(tiny_bert_dir, tmp_path):
    data = helpers.tiny_dataset(tmp_path)
    run = tmp_path / "run"
    sets = helpers.tiny_overrides(tiny_bert_dir, data, run, num_epochs=1, case_input="true", lstm_dim=4)
    args = [sys.executable, "cli.py", "train", *(a for s in sets for a in ("--set", s))]
    res = subprocess.run(args, cwd=helpers.ROOT, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    text_cfg = json.loads((run / "best" / "config.json").read_text())["rpihmif"]["text"]
    assert (text_cfg["case_input"], text_cfg["lstm_dim"]) == (True, 4)
    bad = subprocess.run([*args, "--set", "lstm_dim=-1"], cwd=helpers.ROOT, capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "lstm_dim" in bad.stderr

"""Precision selection (forced, auto with and without bf16 hardware) and bf16 autocast with an fp32 CRF."""
from __future__ import annotations

import pytest
import torch

from rpihmif import precision as P
from rpihmif.alignment import WindowTokenizer
from rpihmif.errors import ModelError
from rpihmif.model import build_model
from rpihmif.predictor import Tagger

WORDS = [["john", "smith", "in", "london"], ["rt", "@obama", "at", "the", "nba", "game"]]


@pytest.fixture
def cpu_flags(tmp_path, monkeypatch):
    """Point the detector at a fake /proc/cpuinfo holding the given flags, with torch's capability AVX2."""
    def make(*flags: str) -> None:
        path = tmp_path / "cpuinfo"
        path.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx2 " + " ".join(flags) + "\n\n")
        monkeypatch.setattr(P, "CPUINFO", str(path))
        monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX2")
    return make


@pytest.mark.parametrize("name", ["fp32", "bf16"])
def test_forced_precision_wins(cpu_flags, name):
    cpu_flags()
    chosen = P.resolve_precision(name, "cpu")
    assert chosen.name == name and "config" in chosen.reason
    assert chosen.dtype == (torch.bfloat16 if name == "bf16" else torch.float32)


@pytest.mark.parametrize("flags, expected", [(("avx512_bf16",), "bf16"), (("amx_bf16", "amx_tile"), "bf16"),
                                             (("avx512f",), "fp32"), ((), "fp32")])
def test_auto_on_cpu_follows_the_flags(cpu_flags, flags, expected):
    cpu_flags(*flags)
    chosen = P.resolve_precision("auto", "cpu")
    assert chosen.name == expected
    assert (flags[0] if expected == "bf16" else "no amx_bf16") in chosen.reason


def test_auto_uses_torch_capability_without_flags(cpu_flags, monkeypatch):
    cpu_flags()
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AMX")
    assert P.resolve_precision("auto", "cpu").name == "bf16"


@pytest.mark.parametrize("supported", [True, False])
def test_auto_on_cuda_asks_the_gpu(monkeypatch, supported):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: supported)
    assert P.resolve_precision("auto", "cuda").name == ("bf16" if supported else "fp32")


def test_unknown_precision_is_usage_error():
    with pytest.raises(ModelError, match="precision 'fp16'"):
        P.resolve_precision("fp16", "cpu")


def test_bf16_autocast_keeps_crf_fp32_and_predictions_close(tiny_model_config):
    torch.manual_seed(0)
    model, tokenizer = build_model(tiny_model_config)
    model.eval()
    bf16 = P.resolve_precision("bf16", "cpu")
    enc = WindowTokenizer.for_model(tokenizer, model.model_config)
    text = enc.collate([enc.encode_train(w)[0] for w in WORDS], [[1] * len(w) for w in WORDS])
    with torch.no_grad():
        fp = model(text)
        with bf16.autocast():
            low = model(text)
            marg = model.marginals(low)
    assert low.emissions.dtype == torch.bfloat16 and low.loss.dtype == torch.float32
    assert marg.dtype == torch.float32 and model.crf.crf.transitions.dtype == torch.float32
    assert torch.allclose(low.emissions.float(), fp.emissions, atol=0.1)
    a = Tagger(model, tokenizer).predict(WORDS)
    b = Tagger(model, tokenizer, autocast=bf16.autocast).predict(WORDS)
    assert [len(p.labels) for p in b] == [len(w) for w in WORDS]
    assert sum(x == y for p, q in zip(a, b) for x, y in zip(p.labels, q.labels)) >= 9  # of 10 words

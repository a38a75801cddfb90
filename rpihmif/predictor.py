"""Tagger: batched prediction over word lists (+ optional image features) from a checkpoint or an in-memory model.

Long tweets are windowed and merged per word; entities carry a CRF-marginal score and per-source routing mass.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ContextManager, Sequence

import torch

from rpihmif.alignment import EncodedWindow, WindowTokenizer, merge_windows
from rpihmif.checkpoint import open_checkpoint
from rpihmif.config import ModelConfig
from rpihmif.labels import bio_spans, repair_bio
from rpihmif.model import RPIHMIF
from rpihmif.visual import SOURCES, VisualLayout, collate_visual, keep_sources, resolve_sources

__all__ = ["Entity", "Prediction", "Tagger"]

AutocastFactory = Callable[[], ContextManager]
MIN_SCORE = 1e-6  # scores are clamped into [MIN_SCORE, 1] so they stay in (0, 1]


@dataclass
class Entity:
    type: str  # PER, LOC, ORG or MISC
    start: int  # first word index
    end: int  # word index after the last word (exclusive)
    score: float  # mean CRF marginal probability of the entity's predicted tags, in (0, 1]
    routing: dict[str, float] | None = None  # IFFE coupling mass per visual source, averaged over the words; None = no image


@dataclass
class Prediction:
    labels: list[str]  # one BIO tag per input word (valid BIO: a dangling I- is turned into B-)
    entities: list[Entity] = field(default_factory=list)
    image_used: bool = False  # the model saw at least one visual token of a used source


@dataclass
class _WordOut:
    tag: int
    prob: float  # marginal probability of the decoded tag
    routing: list[float] | None  # (3,) per-source mass, None without image


class Tagger:
    """Runs an RPIHMIF model on tweets. Score of an entity = mean over its words of P(decoded tag | tweet) from
    CRF forward-backward marginals (mean rather than product so long entities are not penalised by length)."""

    def __init__(self, model: RPIHMIF, tokenizer: Any, config: ModelConfig | None = None,
                 device: str | torch.device = "cpu", model_id: str = "", autocast: AutocastFactory | None = None):
        """autocast: a no-argument factory of the context the model forward runs in (bf16 autocast from the
        stage's precision); decoding and marginals stay fp32 (the CRF casts up). None = plain fp32."""
        self.device = torch.device(device)
        self.model = model.to(self.device)
        self.tokenizer = tokenizer
        self.config = config or model.model_config
        self.window_tokenizer = WindowTokenizer.for_model(tokenizer, self.config)
        self.model_id = model_id
        self.autocast = autocast or contextlib.nullcontext

    @classmethod
    def from_pretrained(cls, folder: str | Path, device: str | torch.device = "cpu",
                        expected_labels: list[str] | None = None, autocast: AutocastFactory | None = None) -> "Tagger":
        """Open a checkpoint (folder, run folder or hub id) with `rpihmif.checkpoint.open_checkpoint`: every failure
        is a ModelError naming the file."""
        ckpt = open_checkpoint(folder, device=str(device), expected_labels=expected_labels)
        return cls(ckpt.model, ckpt.tokenizer, ckpt.config, device, model_id=ckpt.model_id, autocast=autocast)

    @property
    def visual_spec(self) -> VisualLayout:
        return self.config.visual.spec()

    @property
    def fingerprint(self) -> str:
        """Encoder fingerprint id of the feature cache the model was trained on ("" = unknown / text-only)."""
        return self.config.visual.fingerprint

    @property
    def uses_images(self) -> bool:
        return not self.config.text_only

    def predict(self, words: Sequence[Sequence[str]], features: Sequence[dict | None] | None = None,
                batch_size: int = 64, dataset: str = "", sources: Sequence[str] = (),
                text_only: bool = False) -> list[Prediction]:
        """One Prediction per tweet; features[i] is tweet i's cached feature dict or None (no image).

        dataset: whose annotation style to follow, for a model trained with `dataset_dim` on several datasets
        ("" = the model's own dataset); ValueError for a dataset it was not trained on.

        sources / text_only: the visual sources to use (empty = all the model was trained with; a source it was not
        trained with is a ValueError), or none; the rest are masked as a missing crop is (`rpihmif.visual.keep_sources`).

        Runs in eval mode and restores the model's train/eval mode afterwards (safe inside a training loop).
        """
        if isinstance(words, str):
            raise TypeError("Tagger.predict takes a list of tweets, each a list of words (e.g. [['Donald', 'Trump']]),"
                            " got a string; for raw text use rpihmif.load(model)(text), which tokenizes it")
        bad = next((i for i, w in enumerate(words) if isinstance(w, str) or not isinstance(w, Sequence)), None)
        if bad is not None:
            raise TypeError(f"Tagger.predict: tweet {bad} is a {type(words[bad]).__name__}, expected a list of words; "
                            "split it into words first, or use rpihmif.load(model)(texts) for raw text")
        style = self.model.dataset_ids([dataset])  # (1,) or None; an unknown dataset fails before any work
        keep = resolve_sources(self.config.visual.sources, sources, text_only)
        if features is None:
            features = [None] * len(words)
        if len(features) != len(words):
            raise ValueError(f"expected {len(words)} feature entries (one per tweet), got {len(features)}")
        jobs: list[tuple[int, EncodedWindow]] = [(i, w) for i, ws in enumerate(words) for w in self.window_tokenizer.encode_predict(ws)]
        order = sorted(range(len(jobs)), key=lambda j: len(jobs[j][1].input_ids))  # less padding per batch
        outputs: list[list[_WordOut]] = [[] for _ in jobs]
        was_training, step = self.model.training, max(1, batch_size)
        self.model.eval()
        try:
            for s in range(0, len(order), step):
                chunk = order[s : s + step]
                rows = self._run([jobs[j][1] for j in chunk], [features[jobs[j][0]] for j in chunk], style, keep)
                for j, row in zip(chunk, rows):
                    outputs[j] = row
        finally:
            self.model.train(was_training)
        per_tweet: list[list[int]] = [[] for _ in words]
        for j, (i, _) in enumerate(jobs):
            per_tweet[i].append(j)
        return [self._prediction(len(ws), [jobs[j][1] for j in per_tweet[i]], [outputs[j] for j in per_tweet[i]])
                for i, ws in enumerate(words)]

    @torch.inference_mode()
    def _run(self, windows: list[EncodedWindow], feats: list[dict | None],
             style: torch.Tensor | None, keep: Sequence[str] = SOURCES) -> list[list[_WordOut]]:
        text = self.window_tokenizer.collate(windows)
        text.dataset_ids = None if style is None else style.expand(len(windows))
        text = text.to(self.device)
        visual = None
        if self.uses_images and any(f is not None for f in feats):
            visual = collate_visual(list(feats), self.visual_spec).to(self.device)
            if set(keep) != set(self.config.visual.sources):
                visual = keep_sources(visual, keep)
        with self.autocast():
            out = self.model(text, visual)
        paths = self.model.decode(out)
        # shape: (B, W, L)
        marg = self.model.marginals(out).float().cpu()
        routing = out.routing.float().cpu() if out.routing is not None else None
        present = out.present.cpu().tolist() if out.present is not None else [False] * len(windows)
        rows = []
        for r, path in enumerate(paths):
            probs = marg[r, torch.arange(len(path)), torch.tensor(path, dtype=torch.long)].tolist() if path else []
            route = routing[r, : len(path)].tolist() if routing is not None and present[r] else [None] * len(path)
            rows.append([_WordOut(t, p, v) for t, p, v in zip(path, probs, route)])
        return rows

    def _prediction(self, n_words: int, windows: list[EncodedWindow], outputs: list[list[_WordOut]]) -> Prediction:
        if n_words == 0:
            return Prediction(labels=[])
        merged: list[_WordOut] = merge_windows(n_words, windows, outputs)
        labels, _ = repair_bio([self.config.labels[w.tag] for w in merged])
        entities = []
        for etype, start, end in bio_spans(labels):
            span = merged[start:end]
            score = min(1.0, max(MIN_SCORE, sum(w.prob for w in span) / len(span)))
            routing = None
            if all(w.routing is not None for w in span):
                routing = {src: sum(w.routing[k] for w in span) / len(span) for k, src in enumerate(SOURCES)}
            entities.append(Entity(etype, start, end, score, routing))
        return Prediction(labels=labels, entities=entities, image_used=any(w.routing is not None for w in merged))

"""Visual features of benchmark tweets for training and evaluation: cached CLIP features looked up by image id.

A tweet without an image, or whose image is not cached, gets None (the model sees masks, never a made-up image).
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from pipeline.io.conll import Tweet
from pipeline.io.dataset import BenchmarkDataset
from pipeline.stage_config import TrainConfig
from rpihmif.config import ModelConfig, VisualConfig
from rpihmif.visual import VisualBatch, collate_visual

__all__ = ["TweetFeatures"]

log = logging.getLogger("rpihmif.features")


class TweetFeatures:
    """Maps tweets to per-image feature dicts through the cache alias `(dataset, "<IMGID>.jpg")`."""

    def __init__(self, cache: Any | None, source: str, text_only: bool = False, vision: Any = None):
        self.cache, self.source, self.text_only = cache, source, text_only
        self.vision = vision  # the train config's vision section (what config.json records when the cache does not)
        self.found = 0
        self.missing = 0

    @classmethod
    def for_training(cls, cfg: TrainConfig, dataset: BenchmarkDataset) -> "TweetFeatures":
        """The cache of `cfg.cache_dir` (None when absent or `text_only`); finding it writes nothing into the cache."""
        if cfg.text_only:
            return cls(None, dataset.name, text_only=True)
        from cache import find_cache
        fingerprint = None
        if cfg.vision.vit_name:  # pick the cache folder of exactly this encoder and vision section
            from cache import FingerprintMemo, resolve_fingerprint

            def fingerprint() -> str:  # the encoder's fingerprint as extract's memo knows it, never saved from here
                memo = FingerprintMemo(cfg.cache_dir, read_only=True)
                return resolve_fingerprint(cfg.vision, Path(cfg.cache_dir), memo)["id"]
        cache = find_cache(cfg.cache_dir, fingerprint)
        if cache is None:
            log.warning("no feature cache under %s: every tweet is trained with its image masked "
                        "(run extract-features first for the multimodal model)", cfg.cache_dir)
        return cls(cache, dataset.name, vision=cfg.vision)

    @classmethod
    def for_model(cls, cache_dir: str | Path, dataset: BenchmarkDataset, config: ModelConfig) -> "TweetFeatures":
        """The cache folder of the encoder the model was trained with; another encoder's cache is a UsageError."""
        if config.text_only or not config.visual.fingerprint:
            return cls(None, dataset.name, text_only=True)
        from cache import find_cache
        return cls(find_cache(cache_dir, config.visual.fingerprint), dataset.name)

    @property
    def uses_images(self) -> bool:
        """Whether tweets can get features at all (a cache or an online encoder)."""
        return self.cache is not None

    def visual_config(self) -> VisualConfig | None:
        """Visual token layout and encoder fingerprint of the cache, for the model config."""
        if self.cache is None:
            return None
        spec = self.cache.spec
        return VisualConfig(dim=spec.dim, orig_tokens=spec.orig_tokens, grounding_tokens=spec.grounding_tokens,
                            rcnn_tokens=spec.rcnn_tokens, max_crops=spec.max_crops,
                            fingerprint=self.cache.fingerprint_id, encoder=self._vision_record())

    def _vision_record(self) -> dict:
        """The cache's own record of its encoder, else the train config's vision section when its sizes are the
        cache's (a cache written before fingerprints carried the record); {} when neither is known."""
        from rpihmif.vision_encoder import vision_record

        record = self.cache.fingerprint.get("info", {}).get("vision")
        if isinstance(record, dict):
            return dict(record)
        hashed = self.cache.fingerprint.get("hashed", {})
        if self.vision is None:
            return {}
        settings = self.vision
        same = all(hashed.get(k) == getattr(settings, k) for k in ("image_size", "aux_size", "rcnn_size", "max_crops",
                                                                      "dtype"))
        if not same or bool(hashed.get("random_init")) != (not settings.vit_name):
            return {}
        return vision_record(settings, str(hashed.get("weights_sha256", "")))

    def describe(self) -> str:
        if self.text_only:
            return "text only"
        if self.cache is None:
            return "no cache (all masked)"
        return f"cache {self.cache.fingerprint_id}"

    def lookup(self, tweets: list[Tweet]) -> list[dict | None]:
        """One feature dict (or None) per tweet; counts what was found."""
        if self.cache is None:
            self.missing += len(tweets)
            return [None] * len(tweets)
        items = self.cache.lookup([(t.dataset or self.source, f"{t.image_id}.jpg") for t in tweets])
        hit = sum(item is not None for item in items)
        self.found, self.missing = self.found + hit, self.missing + len(items) - hit
        return items

    def batch(self, tweets: list[Tweet], config: ModelConfig, device: torch.device) -> VisualBatch | None:
        """Padded `VisualBatch` on `device`, or None when the model is text-only or nothing is cached."""
        if config.text_only or not self.uses_images:
            return None
        return collate_visual(self.lookup(tweets), config.visual.spec()).to(device)


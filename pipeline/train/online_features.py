"""`features: online` training: the frozen CLIP encoder runs inside the training loop, as DeepKE does.

Same features as the cache would hold (same encoder settings, same stored dtype), computed per batch; for parity checks
and for the cached-vs-online speed comparison.
"""
from __future__ import annotations

import logging
from typing import Any

from exit_codes import InputError, UsageError
from rpihmif.vision_encoder import VisionSettings
from pipeline.io.conll import Tweet
from pipeline.io.dataset import BenchmarkDataset
from pipeline.stage_config import TrainConfig
from pipeline.train.cached_features import TweetFeatures
from rpihmif.config import VisualConfig

__all__ = ["OnlineFeatures"]

log = logging.getLogger("rpihmif.features")


class OnlineFeatures(TweetFeatures):
    """Computes each tweet's features from its image and crops with an in-process `ClipFeaturizer`."""

    def __init__(self, featurizer: Any, dataset: BenchmarkDataset, fingerprint_id: str):
        super().__init__(None, dataset.name)
        self.featurizer, self.dataset, self.fingerprint_id = featurizer, dataset, fingerprint_id

    @classmethod
    def from_config(cls, cfg: TrainConfig, dataset: BenchmarkDataset) -> "OnlineFeatures":
        from cache import fingerprint_folders
        from pipeline.extract.featurizer import ClipFeaturizer

        try:
            featurizer = ClipFeaturizer(cfg.vision, device="cpu", precision=cfg.precision)
        except (FileNotFoundError, OSError) as exc:
            raise UsageError(f"vision.vit_name {cfg.vision.vit_name!r}: cannot load a CLIP vision encoder: {exc}") from exc
        fp = featurizer.fingerprint["id"]
        cached = [p.name for p in fingerprint_folders(cfg.cache_dir)]
        if cached and fp not in cached:
            log.warning("online encoder %s differs from the cached encoder(s) %s: features will not match the cache",
                        fp, ", ".join(cached))
        log.info("features: online, encoder %s (%s)", fp, featurizer.fingerprint["info"]["encoder"])
        return cls(featurizer, dataset, fp)

    def visual_config(self) -> VisualConfig:
        spec = self.featurizer.spec
        return VisualConfig(dim=spec.dim, orig_tokens=spec.orig_tokens, grounding_tokens=spec.grounding_tokens,
                            rcnn_tokens=spec.rcnn_tokens, max_crops=spec.max_crops, fingerprint=self.fingerprint_id,
                            encoder=dict(self.featurizer.fingerprint["info"]["vision"]))

    def describe(self) -> str:
        return f"online encoder {self.fingerprint_id}"

    @property
    def uses_images(self) -> bool:
        return True

    def lookup(self, tweets: list[Tweet]) -> list[dict | None]:
        from pipeline.extract.featurizer import featurize_images

        items: list[dict | None] = []
        for tweet in tweets:
            item = None
            try:
                path = self.dataset.image_path(tweet.image_id)
                if path is not None:
                    item = featurize_images(self.featurizer, path, self.dataset.grounding_crops(None, tweet.image_id),
                                            self.dataset.rcnn_crops(tweet.image_id), self.dataset.root)
            except InputError as exc:
                log.warning("%s: image of tweet %s skipped: %s", self.dataset.root, tweet.image_id, exc)
            items.append(item)
        hit = sum(item is not None for item in items)
        self.found, self.missing = self.found + hit, self.missing + len(items) - hit
        return items

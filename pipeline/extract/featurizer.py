"""The model step of extract-features: the frozen CLIP vision encoder as a callable class, and its fingerprint.

`ClipFeaturizer` runs as a Ray actor or in-process (`featurize_images`); `cache.resolve_fingerprint` names the encoder.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from cache.format import FEATURE_NAMES, feature_shapes
from exit_codes import InputError, UsageError
from pipeline.io.images import DEFAULT_MAX_PIXELS, sha256_bytes
from pipeline.io.safe_paths import safe_resolve
from rpihmif.precision import resolve_precision
from rpihmif.vision_encoder import Preprocessor, VisionSettings, encoder_fingerprint, load_vision_encoder
from rpihmif.vision_features import ImageFeaturizer, read_bytes

__all__ = ["ClipFeaturizer", "featurize_images", "pad_crops"]


def pad_crops(paths: list[str], k: int) -> list[str]:
    """`paths` cut or padded with "" (no crop) to exactly `k` entries."""
    return (list(paths) + [""] * k)[:k]


class ClipFeaturizer:
    """Frozen CLIP encoder + CLIP preprocessing; loads once in `__init__`, featurizes a batch of paths in `__call__`.

    Works as a Ray actor and in-process (`features: online` training, `workers: 0`).
    """

    def __init__(self, settings: dict[str, Any] | VisionSettings, max_image_pixels: int = DEFAULT_MAX_PIXELS,
                 device: str = "cpu", threads: int | None = None, expected_fingerprint: str | None = None,
                 precision: str = "fp32"):
        self.settings = settings if isinstance(settings, VisionSettings) else VisionSettings(**settings)
        if threads:
            torch.set_num_threads(threads)
        self.max_image_pixels = max_image_pixels
        self.device = torch.device(device)
        # bf16 autocast of the forward only: stored features are rounded to settings.dtype as before, and the
        # fingerprint ignores precision (it names the encoder, sizes and stored dtype)
        self.precision = resolve_precision(precision, self.device)
        self.core = ImageFeaturizer(self.settings, self.device, self.precision.autocast, max_image_pixels)
        self.model, self.preprocess, self.spec = self.core.model, self.core.preprocess, self.core.spec
        self.np_dtype = self.core.np_dtype
        if expected_fingerprint is not None:
            fp = encoder_fingerprint(self.model, self.settings, self.preprocess)
            if fp["id"] != expected_fingerprint:
                raise RuntimeError(f"worker encoder fingerprint {fp['id']} != driver's {expected_fingerprint}: the "
                                   "encoder differs between machines (vit_name folder or torch version); fix that first")

    @property
    def forwards(self) -> int:
        """Images (originals + crops) run through the encoder, for tests and benchmarks."""
        return self.core.forwards

    @property
    def fingerprint(self) -> dict[str, Any]:
        return encoder_fingerprint(self.model, self.settings, self.preprocess)

    def _load(self, path: str, key: str, size: int) -> tuple[torch.Tensor | None, str | None]:
        """Read, verify the content key (when given), decode, preprocess -> (3, size, size) or (None, reason)."""
        data, reason = read_bytes(path)
        if data is None:
            return None, reason
        if key and sha256_bytes(data) != key:
            return None, "changed"
        return self.core.pixels(data, size)

    def _forward(self, pixels: list[torch.Tensor]) -> np.ndarray | None:
        return self.core.forward(pixels)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """batch: "key" (B,) sha256 hex or "", "path" (B,) resolved image paths, "grounding"/"rcnn" (B, K) resolved
        crop paths ("" = none). Returns "key", the FEATURE_NAMES arrays (B, ...), "reason" (B,) ("" = ok) and
        "grounding_reason"/"rcnn_reason" (B, K) per crop ("" = ok or none)."""
        keys = [str(k) for k in batch["key"]]
        b, k = len(keys), self.spec.max_crops
        out: dict[str, np.ndarray] = {
            "key": np.array(keys, dtype=object),
            **{name: np.zeros((b,) + shape, bool if name.endswith("_mask") else self.np_dtype)
               for name, shape in feature_shapes(self.spec).items()},
            "reason": np.full(b, "", dtype=object),
            "grounding_reason": np.full((b, k), "", dtype=object), "rcnn_reason": np.full((b, k), "", dtype=object),
        }
        with torch.inference_mode():
            orig, rows = [], []
            for i, (key, path) in enumerate(zip(keys, batch["path"])):
                x, reason = self._load(str(path), key, self.settings.image_size)
                if x is None:
                    out["reason"][i] = reason
                else:
                    orig.append(x)
                    rows.append(i)
            feats = self._forward(orig)
            if feats is not None:
                out["orig"][rows] = feats
                out["orig_mask"][rows] = True
            for kind, size in (("grounding", self.settings.aux_size), ("rcnn", self.settings.rcnn_size)):
                crops, slots = [], []
                paths = np.asarray(batch[kind], dtype=object).reshape(b, -1)
                for i in rows:  # crops only for images that are kept
                    slot = 0
                    for path in paths[i][:k]:
                        if not path:
                            continue
                        x, reason = self._load(str(path), "", size)
                        if x is None:
                            out[f"{kind}_reason"][i, slot] = f"{reason}\t{path}"
                            continue
                        crops.append(x)
                        slots.append((i, slot))
                        slot += 1
                feats = self._forward(crops)
                for j, (i, slot) in enumerate(slots):
                    out[kind][i, slot] = feats[j]
                    out[f"{kind}_mask"][i, slot] = True
        return out


def featurize_images(featurizer: ClipFeaturizer, orig_path: str | Path, grounding_paths: list[str | Path],
                     rcnn_paths: list[str | Path], root: str | Path) -> dict[str, np.ndarray] | None:
    """Features of one image and its crops, in-process (no Ray, no cache): None when the original is unusable.

    Paths are resolved inside `root`; an escaping, missing or bad crop is left out (its mask is False).
    """
    def safe(p: str | Path) -> str:
        try:
            return str(safe_resolve(root, p))
        except InputError:
            return ""

    path = safe(orig_path)
    if not path:
        return None
    k = featurizer.spec.max_crops
    out = featurizer({"key": np.array([""]), "path": np.array([path], dtype=object),
                      "grounding": np.array([pad_crops([safe(p) for p in grounding_paths], k)], dtype=object),
                      "rcnn": np.array([pad_crops([safe(p) for p in rcnn_paths], k)], dtype=object)})
    if out["reason"][0]:
        return None
    return {name: out[name][0] for name in FEATURE_NAMES}

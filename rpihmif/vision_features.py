"""Features of images in-process, exactly as extract-features stores them: decode (JPEG draft at the target size),
the encoder's own CLIPImageProcessor, the frozen CLIP forward, rounding to the stored dtype.

`ImageFeaturizer` is the model step; extract's Ray actor (`pipeline.extract.featurizer.ClipFeaturizer`) wraps it.
"""
from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, Callable, ContextManager, Sequence

import numpy as np
import torch
from PIL import Image

from rpihmif.image_decode import DEFAULT_MAX_PIXELS, decode_image
from rpihmif.vision_encoder import (
    Preprocessor,
    VisionSettings,
    encode,
    encoder_fingerprint,
    load_vision_encoder,
    visual_spec,
)

__all__ = ["ImageFeaturizer", "ImageInput", "read_bytes"]

ImageInput = Any  # None | str | os.PathLike | PIL.Image.Image | bytes


def read_bytes(path: str | Path) -> tuple[bytes | None, str | None]:
    """(the file's bytes, None) or (None, reason: missing | not_a_file | unreadable)."""
    try:
        return Path(path).read_bytes(), None
    except FileNotFoundError:
        return None, "missing"
    except IsADirectoryError:
        return None, "not_a_file"
    except OSError:
        return None, "unreadable"


class ImageFeaturizer:
    """Frozen CLIP encoder + CLIP preprocessing of one vision section; `features` turns originals and crops into the
    per-image feature dicts the model reads (`orig` (Lo, Dv), `grounding` (K, Lg, Dv), `rcnn` (K, Lr, Dv) + masks)."""

    def __init__(self, settings: VisionSettings, device: str | torch.device = "cpu",
                 autocast: Callable[[], ContextManager] | None = None, max_image_pixels: int = DEFAULT_MAX_PIXELS,
                 offline: bool = False):
        self.settings = settings
        self.device = torch.device(device)
        self.model = load_vision_encoder(settings, offline).to(self.device)
        self.preprocess = Preprocessor.for_encoder(settings.vit_name, offline)
        self.spec = visual_spec(self.model.config, settings)
        self.np_dtype = np.dtype(settings.dtype)
        self.autocast = autocast or contextlib.nullcontext
        self.max_image_pixels = max_image_pixels
        self.forwards = 0  # images (originals + crops) run through the encoder, for tests and benchmarks

    @property
    def fingerprint(self) -> dict[str, Any]:
        return encoder_fingerprint(self.model, self.settings, self.preprocess)

    def pixels(self, image: ImageInput, size: int) -> tuple[torch.Tensor | None, str | None]:
        """(3, size, size) pixels of an image given as bytes, a path or a PIL image; (None, reason) when unusable."""
        if isinstance(image, Image.Image):
            rgb = image if image.mode == "RGB" else image.convert("RGB")
            return self.preprocess(rgb, size), None
        if isinstance(image, (str, Path)):
            image, reason = read_bytes(image)
            if image is None:
                return None, reason
        decoded, reason = decode_image(image, self.max_image_pixels, draft_size=size)
        if decoded is None:
            return None, reason
        return self.preprocess(decoded, size), None

    def forward(self, pixels: list[torch.Tensor]) -> np.ndarray | None:
        """(N, 3, S, S) pixels -> (N, L, Dv) features in the stored dtype; None for no pixels."""
        if not pixels:
            return None
        # shape: (N, 3, S, S) -> (N, L, Dv)
        x = torch.stack(pixels).to(self.device)
        self.forwards += len(pixels)
        with torch.inference_mode(), self.autocast():
            feats = encode(self.model, x)
        return feats.float().cpu().numpy().astype(self.np_dtype)

    def features(self, originals: Sequence[ImageInput], crops: Sequence[Sequence[ImageInput]] = (),
                 rcnn_crops: Sequence[Sequence[ImageInput]] = ()) -> list[dict[str, np.ndarray] | None]:
        """One feature dict per original (None when it is absent or unusable: the model then sees a mask); crops of
        an unusable original are not read, a bad crop leaves its slot masked and the next crop moves up."""
        n, k = len(originals), self.spec.max_crops
        out: list[dict[str, np.ndarray] | None] = [None] * n
        pix, rows = [], []
        for i, image in enumerate(originals):
            x = self.pixels(image, self.settings.image_size)[0] if image is not None else None
            if x is not None:
                pix.append(x)
                rows.append(i)
        feats = self.forward(pix)
        for j, i in enumerate(rows):
            out[i] = {"orig": feats[j], "orig_mask": np.array(True)}
        for kind, size, tokens, lists in (("grounding", self.settings.aux_size, self.spec.grounding_tokens, crops),
                                          ("rcnn", self.settings.rcnn_size, self.spec.rcnn_tokens, rcnn_crops)):
            pix, slots = [], []
            for i in rows:
                slot = 0
                for crop in (list(lists[i]) if i < len(lists) and lists[i] else [])[:k]:
                    x = self.pixels(crop, size)[0] if crop else None
                    if x is None:
                        continue
                    pix.append(x)
                    slots.append((i, slot))
                    slot += 1
            feats = self.forward(pix)
            for i in rows:
                out[i][kind] = np.zeros((k, tokens, self.spec.dim), self.np_dtype)
                out[i][f"{kind}_mask"] = np.zeros(k, bool)
            for j, (i, slot) in enumerate(slots):
                out[i][kind][slot] = feats[j]
                out[i][f"{kind}_mask"][slot] = True
        return out

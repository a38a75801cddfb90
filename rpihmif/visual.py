"""Visual inputs of the model: CLIP tokens of the original image, grounding crops and RCNN crops.

`VisualBatch` is what HIM reads; `collate_visual` pads per-tweet cached features (or None = no image) into it.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

__all__ = ["SOURCES", "VisualSpec", "VisualBatch", "collate_visual"]

SOURCES: tuple[str, ...] = ("orig", "grounding", "rcnn")


@dataclass(frozen=True)
class VisualSpec:
    """Token layout of one image's features, fixed by the vision encoder and crop sizes."""

    dim: int = 768  # Dv: vision hidden size
    orig_tokens: int = 50  # CLS + patches of the original at 224 px (ViT-B/32: 1 + 7*7)
    grounding_tokens: int = 17  # CLS + patches of a grounding crop at aux_size (128 px / 32 = 4*4 + 1)
    rcnn_tokens: int = 5  # CLS + patches of an RCNN crop at rcnn_size (64 px / 32 = 2*2 + 1)
    max_crops: int = 3  # crops of each kind, as in DeepKE


@dataclass
class VisualBatch:
    """Padded visual features of a batch; masks say what is real (False = absent, never a made-up image)."""

    orig: torch.Tensor  # (B, Lo, Dv)
    orig_mask: torch.Tensor  # (B,) bool
    grounding: torch.Tensor  # (B, K, Lg, Dv)
    grounding_mask: torch.Tensor  # (B, K) bool
    rcnn: torch.Tensor  # (B, K, Lr, Dv)
    rcnn_mask: torch.Tensor  # (B, K) bool

    def to(self, device: torch.device | str, dtype: torch.dtype = torch.float32) -> "VisualBatch":
        return VisualBatch(
            orig=self.orig.to(device, dtype), orig_mask=self.orig_mask.to(device),
            grounding=self.grounding.to(device, dtype), grounding_mask=self.grounding_mask.to(device),
            rcnn=self.rcnn.to(device, dtype), rcnn_mask=self.rcnn_mask.to(device),
        )

    def any_image(self) -> torch.Tensor:
        """(B,) bool: the tweet has at least one visual token."""
        return self.orig_mask | self.grounding_mask.any(-1) | self.rcnn_mask.any(-1)


def collate_visual(items: list[dict | None], spec: VisualSpec) -> VisualBatch:
    """Stack per-tweet feature dicts into a `VisualBatch`; a None item is a tweet without an image.

    Each dict holds numpy arrays as stored by the feature cache: `orig` (Lo, Dv), `orig_mask` () bool,
    `grounding` (K, Lg, Dv), `grounding_mask` (K,), `rcnn` (K, Lr, Dv), `rcnn_mask` (K,).
    """
    b, k = len(items), spec.max_crops
    orig = np.zeros((b, spec.orig_tokens, spec.dim), np.float32)
    grounding = np.zeros((b, k, spec.grounding_tokens, spec.dim), np.float32)
    rcnn = np.zeros((b, k, spec.rcnn_tokens, spec.dim), np.float32)
    orig_mask = np.zeros((b,), bool)
    grounding_mask = np.zeros((b, k), bool)
    rcnn_mask = np.zeros((b, k), bool)
    for i, item in enumerate(items):
        if item is None:
            continue
        for name, arr, mask in (("orig", orig, orig_mask), ("grounding", grounding, grounding_mask), ("rcnn", rcnn, rcnn_mask)):
            feats = np.asarray(item[name])
            if feats.shape[-2:] != arr.shape[-2:]:
                raise ValueError(f"{name} features {tuple(feats.shape)} do not match the model's {arr.shape[1:]}")
            arr[i, ...] = feats
            mask[i, ...] = np.asarray(item[f"{name}_mask"], bool)
    t = torch.from_numpy
    return VisualBatch(t(orig), t(orig_mask), t(grounding), t(grounding_mask), t(rcnn), t(rcnn_mask))

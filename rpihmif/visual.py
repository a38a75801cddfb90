"""Visual inputs of the model: CLIP tokens of the original image, grounding crops and RCNN crops.

`VisualBatch` is what HIM reads; `collate_visual` pads per-tweet cached features (or None = no image) into it;
`keep_sources` masks sources at prediction time and `drop_sources` hides them at random in training.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

__all__ = ["SOURCES", "VisualLayout", "VisualBatch", "collate_visual", "resolve_sources", "keep_sources", "drop_sources"]

SOURCES: tuple[str, ...] = ("orig", "grounding", "rcnn")


@dataclass(frozen=True)
class VisualLayout:
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


def collate_visual(items: list[dict | None], spec: VisualLayout) -> VisualBatch:
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


def resolve_sources(trained: Sequence[str], wanted: Sequence[str] = (), text_only: bool = False) -> tuple[str, ...]:
    """The sources a prediction may use, in SOURCES order: `wanted` (empty = every source the model was `trained`
    with), none when `text_only`. ValueError naming the allowed ones for a source the model was not trained with."""
    unknown = [s for s in wanted if s not in trained]
    if unknown:
        raise ValueError(f"visual.sources {list(wanted)}: the model was not trained with {unknown}; "
                         f"use a subset of {[s for s in SOURCES if s in trained]}")
    if text_only:
        return ()
    chosen = set(wanted) or set(trained)
    return tuple(s for s in SOURCES if s in chosen)


def _masked(batch: VisualBatch, rows: dict[str, torch.Tensor]) -> VisualBatch:
    """A copy where rows[source] (B,) bool marks the tweets whose `source` is hidden: features 0, mask False,
    exactly what `collate_visual` builds for a missing image or crop."""
    parts = {}
    for s in SOURCES:
        feats, mask = getattr(batch, s), getattr(batch, f"{s}_mask")
        hide = rows.get(s)
        if hide is not None and bool(hide.any()):
            # shape: hide (B,) -> (B, 1, ..., 1) against feats (B, [K,] L, Dv) and mask (B,[K])
            feats = feats.masked_fill(hide.view(-1, *[1] * (feats.dim() - 1)), 0)
            mask = mask & ~hide.view(-1, *[1] * (mask.dim() - 1))
        parts[s], parts[f"{s}_mask"] = feats, mask
    return VisualBatch(**parts)


def keep_sources(batch: VisualBatch, sources: Sequence[str]) -> VisualBatch:
    """`batch` with every source outside `sources` masked for all rows (empty = no image at all)."""
    unknown = set(sources) - set(SOURCES)
    if unknown:
        raise ValueError(f"expected sources among {list(SOURCES)}, got {sorted(unknown)}")
    b = batch.orig_mask.size(0)
    return _masked(batch, {s: torch.ones(b, dtype=torch.bool, device=batch.orig_mask.device)
                           for s in SOURCES if s not in sources})


def drop_sources(batch: VisualBatch, source_p: float, image_p: float, generator: torch.Generator) -> VisualBatch:
    """Training-time source dropout: per tweet, mask the whole image with probability `image_p`, else each source
    with probability `source_p`. Draws from `generator` (CPU) only when a probability is > 0: p = 0 returns `batch`."""
    if not 0 <= source_p < 1 or not 0 <= image_p < 1:
        raise ValueError(f"expected dropout probabilities in [0, 1), got source {source_p}, image {image_p}")
    if source_p == 0 and image_p == 0:
        return batch
    b = batch.orig_mask.size(0)
    # shape: (B,) image dropped, (B, 3) each source dropped
    image = torch.rand(b, generator=generator) < image_p
    each = torch.rand(b, len(SOURCES), generator=generator) < source_p
    device = batch.orig_mask.device
    return _masked(batch, {s: (image | each[:, k]).to(device) for k, s in enumerate(SOURCES)})

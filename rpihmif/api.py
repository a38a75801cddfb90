"""The notebook API: `rpihmif.load(model)` opens a checkpoint and returns a `TweetTagger` that tags raw tweet text
(tokenized as tag-corpus does) and, for a multimodal model, their images featurized in-process by its own encoder.

Entities are dicts shaped like the Parquet `entities` struct of tag-corpus, so both give the same rows.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Sequence

from rpihmif.checkpoint import open_checkpoint
from rpihmif.checkpoint_config import vision_record_of
from rpihmif.errors import ModelError, bounded
from rpihmif.predictor import Prediction, Tagger
from rpihmif.tweet_tokenizer import Token, tokenize

__all__ = ["load", "TweetTagger", "entity_dicts", "ROUTING_FIELDS"]

ROUTING_FIELDS = ("routing_orig", "routing_grounding", "routing_rcnn")
IMAGE_FIELDS = ("image", "crops", "rcnn_crops")  # a dict image input uses the dump's default field names


def entity_dicts(text: str, tokens: list[Token], prediction: Prediction, has_features: bool) -> list[dict[str, Any]]:
    """The entities of one tweet as tag-corpus writes them (character offsets into `text`, token span, score and
    routing share per source; routing None without image features)."""
    out = []
    for ent in prediction.entities:
        s, e = tokens[ent.start].start, tokens[ent.end - 1].end
        r = ent.routing if has_features and ent.routing else {}
        out.append({"text": text[s:e], "type": ent.type, "start_char": s, "end_char": e,
                    "start_token": int(ent.start), "end_token": int(ent.end), "score": float(ent.score),
                    **{k: r.get(k.split("_", 1)[1]) for k in ROUTING_FIELDS}})
    return out


class TweetTagger:
    """`tagger(text)` -> the entities of one tweet; `tagger(texts, images=None, batch_size=32)` -> one dict per tweet
    (`text`, `tokens`, `entities`, `image_used`). Built by `rpihmif.load`."""

    def __init__(self, tagger: Tagger, folder: Path, vit_name: str = "", offline: bool = False):
        self.tagger = tagger
        self.folder = folder
        self.model_id = tagger.model_id
        self._vit_name, self._offline = vit_name, offline
        self._featurizer: Any = None

    @property
    def uses_images(self) -> bool:
        """Whether the model reads image features (a text-only model ignores `images`)."""
        return self.tagger.uses_images and bool(self.tagger.fingerprint)

    def __repr__(self) -> str:
        return f"TweetTagger({self.folder}, model_id={self.model_id}, uses_images={self.uses_images})"

    def __call__(self, texts: str | Sequence[str], images: Any = None, batch_size: int = 32,
                 dataset: str = "", sources: Sequence[str] = (), text_only: bool = False) -> Any:
        if isinstance(texts, str):
            one = None if images is None else [images]
            return self.tag([texts], one, batch_size, dataset, sources, text_only)[0]["entities"]
        return self.tag(list(texts), images, batch_size, dataset, sources, text_only)

    def tag(self, texts: Sequence[str], images: Sequence[Any] | None = None, batch_size: int = 32,
            dataset: str = "", sources: Sequence[str] = (), text_only: bool = False) -> list[dict[str, Any]]:
        """One result per tweet. `images[i]`: None, a path, a PIL.Image of the original, or a dict with the dump's
        fields (`image`, `crops`, `rcnn_crops`: paths or images). `sources` / `text_only`: what the model may see of
        the images, as tag-corpus's `visual.sources` / `text_only` (() = every source it was trained with)."""
        bad = next((i for i, t in enumerate(texts) if not isinstance(t, str)), None)
        if bad is not None:
            raise TypeError(f"texts[{bad}] is a {type(texts[bad]).__name__}, expected the raw text of a tweet (str)")
        if images is not None and len(images) != len(texts):
            raise ValueError(f"expected {len(texts)} images (one per text, None for none), got {len(images)}")
        tokens = [tokenize(t) for t in texts]
        keep = [i for i, toks in enumerate(tokens) if toks]  # a text of only whitespace has no words
        feats = self._features([images[i] for i in keep], batch_size) \
            if images is not None and self.uses_images and not text_only else [None] * len(keep)
        preds = self.tagger.predict([[t.text for t in tokens[i]] for i in keep], feats, batch_size=batch_size,
                                    dataset=dataset, sources=sources, text_only=text_only)
        results = [{"text": t, "tokens": [x.text for x in tokens[i]], "entities": [], "image_used": False}
                   for i, t in enumerate(texts)]
        for i, pred, feat in zip(keep, preds, feats):
            results[i]["entities"] = entity_dicts(texts[i], tokens[i], pred, feat is not None)
            results[i]["image_used"] = bool(pred.image_used)
        return results

    # -- images ----------------------------------------------------------------------------------------------------
    def _features(self, images: list[Any], batch_size: int) -> list[dict | None]:
        parts = [_image_parts(img) for img in images]
        if not any(p[0] is not None for p in parts):
            return [None] * len(images)
        featurizer = self.featurizer()
        out: list[dict | None] = []
        for s in range(0, len(parts), max(1, batch_size)):
            chunk = parts[s:s + batch_size]
            out += featurizer.features([p[0] for p in chunk], [p[1] for p in chunk], [p[2] for p in chunk])
        return out

    def featurizer(self) -> Any:
        """The checkpoint's own vision encoder (loaded once, on first use), checked against the model's fingerprint."""
        if self._featurizer is None:
            from rpihmif.vision_encoder import settings_from_record
            from rpihmif.vision_features import ImageFeaturizer

            record = vision_record_of(self.folder, self.tagger.config)
            if not record:
                raise ModelError(f"{self.folder / 'config.json'}: the checkpoint does not record its vision encoder "
                                 "(nor does its metrics.json); tag its images through a feature cache (tag-corpus)")
            if record.get("source") == "folder" and not self._vit_name:
                raise ModelError(f"{self.folder}: the model's vision encoder is a local folder named "
                                 f"{bounded(record.get('vit_name'))!r}; pass rpihmif.load(..., vit_name=FOLDER)")
            try:
                settings = settings_from_record(record, self._vit_name)
            except ValueError as exc:
                raise ModelError(f"{self.folder / 'config.json'}: {bounded(exc)}") from exc
            if self._vit_name and record.get("source") != "folder":
                settings = dataclasses.replace(settings, vit_name=self._vit_name)
            featurizer = ImageFeaturizer(settings, self.tagger.device, self.tagger.autocast, offline=self._offline)
            found = featurizer.fingerprint["id"]
            if found != self.tagger.fingerprint:
                raise ModelError(f"{self.folder}: the vision encoder {bounded(settings.vit_name or 'random-init')!r} "
                                 f"gives features of encoder {found}, the model was trained on {self.tagger.fingerprint}"
                                 "; pass vit_name= the encoder it was trained with")
            self._featurizer = featurizer
        return self._featurizer


def _image_parts(image: Any) -> tuple[Any, list, list]:
    """(original, grounding crops, RCNN crops) of one `images[i]` entry."""
    if isinstance(image, dict):
        unknown = sorted(set(image) - set(IMAGE_FIELDS))
        if unknown:
            raise ValueError(f"image dict keys {unknown}: expected {', '.join(IMAGE_FIELDS)}")
        return image.get("image"), list(image.get("crops") or []), list(image.get("rcnn_crops") or [])
    return image, [], []


def load(model: str | Path, device: str = "auto", precision: str = "auto", vit_name: str = "",
         offline: bool = False) -> TweetTagger:
    """Open `model` (a checkpoint folder, a run folder or a Hugging Face Hub id; offline as HF_HUB_OFFLINE says) on
    `device` (auto = CUDA when present) at `precision` (auto | fp32 | bf16, as the stages resolve it).

    vit_name: where the model's vision encoder is when config.json names a local folder (checked by fingerprint).
    """
    import torch

    from rpihmif.precision import resolve_precision

    dev = torch.device("cuda" if device == "auto" and torch.cuda.is_available() else "cpu" if device == "auto"
                       else device)
    autocast = resolve_precision(precision, dev, log_it=False).autocast
    ckpt = open_checkpoint(model, device=str(dev), offline=offline)
    tagger = Tagger(ckpt.model, ckpt.tokenizer, ckpt.config, dev, model_id=ckpt.model_id, autocast=autocast)
    return TweetTagger(tagger, ckpt.folder, vit_name=vit_name, offline=offline)

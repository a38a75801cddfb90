"""Which fingerprint folder an encoder's features live in: the encoder fingerprint, remembered in the cache root's
stamp memo by what identifies its weights, so a rerun (or train's read-only lookup) loads and hashes no encoder.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from cache.durable import ensure_dir
from cache.memo import StampMemo
from exit_codes import UsageError
from rpihmif.hub import local_folder
from rpihmif.vision_encoder import (Preprocessor, VisionSettings, encoder_fingerprint, fingerprint_id,
                                    load_vision_encoder)

__all__ = ["FingerprintMemo", "resolve_fingerprint"]


class FingerprintMemo(StampMemo):
    """The stamp memo of one cache root whose remembered fingerprints are checked against `fingerprint_id`."""

    def fingerprint_ok(self, fingerprint: dict[str, Any]) -> bool:
        return super().fingerprint_ok(fingerprint) and fingerprint.get("id") == fingerprint_id(fingerprint["hashed"])


def _source_signature(settings: VisionSettings) -> dict[str, Any]:
    """What identifies the encoder's weights without loading them: folder files (size, mtime) or random-init seed."""
    sig: dict[str, Any] = {"settings": settings.__dict__, "torch": torch.__version__}
    if settings.vit_name:
        folder = local_folder(settings.vit_name)  # a hub id: its snapshot in the Hugging Face cache, when there
        sig["folder"] = str(folder.resolve()) if folder else settings.vit_name
        sig["files"] = sorted((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in folder.iterdir() if p.is_file()) \
            if folder else None
    else:
        import transformers
        sig["transformers"] = transformers.__version__
    return sig


def resolve_fingerprint(settings: VisionSettings, cache_dir: Path, memo: FingerprintMemo | None = None) -> dict[str, Any]:
    """The encoder fingerprint, remembered in the cache root's `FingerprintMemo` by `_source_signature` (saved here when no
    `memo` is given; the caller saves its own)."""
    ensure_dir(cache_dir, "cache_dir")
    if local_folder(settings.vit_name or ".") is None:  # a hub id not fetched yet: its files are known next time
        return _fingerprint(settings)
    own = memo is None
    memo = memo or FingerprintMemo(cache_dir)
    fp = memo.fingerprint(json.dumps(_source_signature(settings), sort_keys=True), lambda: _fingerprint(settings))
    if own:
        memo.save()
    return fp


def _fingerprint(settings: VisionSettings) -> dict[str, Any]:
    """Load the encoder and fingerprint it (seconds for a ViT-B: the weights are hashed)."""
    try:
        model = load_vision_encoder(settings)
    except (OSError, ValueError) as exc:  # ModelError is a ValueError
        raise UsageError(f"vit_name {settings.vit_name!r}: cannot load a CLIP vision encoder ({exc}); give a local "
                         "folder saved with save_pretrained or a Hugging Face Hub id, or leave vit_name empty for the "
                         "random-init encoder") from exc
    try:
        return encoder_fingerprint(model, settings, Preprocessor.for_encoder(settings.vit_name))
    except ValueError as exc:
        raise UsageError(str(exc)) from exc

"""Planning a tag-corpus run on the driver: the model and feature cache it uses, and per input which chunks are
already done and still valid (same model, encoder and cache state) and which must be (re-)tagged.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any, Callable

from pipeline.io.checkpoint_folder import checkpoint_info
from pipeline.io.dumps import _lines, _open
from pipeline.stage_config import TagConfig
from pipeline.tag.chunks import Identity, identify
from pipeline.tag.manifest import Manifest
from rpihmif.errors import UsageError
from rpihmif.visual import resolve_sources

__all__ = ["ModelSpec", "Freshness", "InputPlan", "resolve_model_path", "model_spec", "plan_input",
           "check_image_cache", "cache_state"]

log = logging.getLogger("rpihmif.tag")


@dataclass
class ModelSpec:
    """What the workers load (`factory(load_path, device, threads)`, None = the checkpoint's Tagger) and what
    identifies its output: model id, whether it uses images, its encoder fingerprint and label set."""

    model_id: str
    load_path: str
    uses_images: bool
    fingerprint: str
    labels: list[str]
    factory: Callable[..., Any] | None = None


@dataclass(frozen=True)
class Freshness:
    """What a committed chunk must match to be kept: model, encoder fingerprint, and (for chunks that missed
    images) the cache state it saw; `force` keeps none."""

    model_id: str
    encoder: str
    cache_state: str
    force: bool = False

    def keeps(self, entry: dict[str, Any]) -> bool:
        return not self.force and entry["model_id"] == self.model_id and entry["encoder"] == self.encoder and (
            not entry["images_missing"] or entry["cache_state"] == self.cache_state)


@dataclass
class InputPlan:
    """One input: its content identity, the family of inputs it extends, done chunks to step over
    ({first_line: (last_line, byte_end, ends_newline)}) and how many committed chunks it re-tags."""

    path: Path
    source: str
    ident: Identity
    family: set[str]
    done: dict[int, tuple[int, int | None, bool]] = field(default_factory=dict)
    stale: int = 0
    skip: bool = False


def resolve_model_path(config: TagConfig) -> Path:
    """The checkpoint folder of `load_path` (DeepKE name; --model); a file inside it is accepted too."""
    raw = config.load_path
    if not raw:
        raise UsageError("no model: pass --model CHECKPOINT (or --set load_path=CHECKPOINT)")
    path = Path(raw)
    return path.parent if path.is_file() else path  # checkpoint_info() validates the folder


def model_spec(config: TagConfig) -> ModelSpec:
    load_path = resolve_model_path(config)
    mid, mc = checkpoint_info(load_path)
    try:  # visual.sources: a source the model was not trained with is bad usage (exit 2)
        resolve_sources(mc.visual.sources, config.visual.sources)
    except ValueError as exc:
        raise UsageError(f"{load_path}: {exc}") from exc
    uses = not mc.text_only and bool(mc.visual.fingerprint)
    return ModelSpec(mid, str(load_path.resolve()), uses, mc.visual.fingerprint if uses else "", list(mc.labels))


def cache_state(cache: Any) -> str:
    """Changes whenever extract-features adds shards or aliases to the cache folder ("" = no cache)."""
    if cache is None:
        return ""
    index = cache.index
    return f"{len(index.shards)}:{len(index.aliases)}"


def plan_input(path: Path, manifest: Manifest, fresh: Freshness) -> InputPlan:
    """Hash `path`, find the known inputs it extends, and split its committed chunks into kept and stale."""
    source = str(path.resolve())
    ident = identify(path, manifest.sizes())
    family = manifest.family(ident.sha256, ident.prefixes)
    plan = InputPlan(path, source, ident, family)
    for first, (_, e) in manifest.chunks_of(family, ident.sha256).items():
        if fresh.keeps(e):
            plan.done[first] = (int(e["last_line"]), e["byte_end"], bool(e["ends_newline"]))
        else:
            plan.stale += 1
    entry = manifest.inputs.get(ident.sha256)
    plan.skip = bool(entry and entry["complete"] and not plan.stale)
    return plan


def _has_images(path: Path, field_name: str, max_lines: int = 1000) -> bool:
    """Whether one of the first `max_lines` records has a non-empty image field (a cheap sniff of the dump)."""
    try:
        with _open(path) as fh:
            for raw, _ in islice(_lines(fh, 1 << 20), max_lines):
                if raw and field_name.encode() in raw:
                    try:
                        if json.loads(raw).get(field_name):
                            return True
                    except (ValueError, AttributeError):
                        continue
    except (OSError, EOFError):
        return False
    return False


def check_image_cache(spec: ModelSpec, cache: Any, plans: list[InputPlan], config: TagConfig) -> None:
    """A model that uses images, dumps that have images, and no cache of its encoder: exit 2 saying what to run."""
    if not spec.uses_images or cache is not None:
        return
    with_images = [p.source for p in plans if not p.skip and _has_images(p.path, config.image_field)]
    if not with_images:
        return
    msg = (f"the model uses images (encoder {spec.fingerprint}) but the feature cache {config.cache_dir} has no "
           f"features of that encoder, and {with_images[0]} has image fields. Run `python cli.py extract-features "
           f"--dump {with_images[0]} --set cache_dir={config.cache_dir}` (same encoder as the model), or point "
           f"--set cache_dir= / $RPIHMIF_CACHE at the cache the model was trained with, or pass "
           f"--allow-missing-images to tag text-only")
    if not config.allow_missing_images:
        raise UsageError(msg)
    log.warning("--allow-missing-images: %s", msg.split(". Run")[0] + "; every image is masked")

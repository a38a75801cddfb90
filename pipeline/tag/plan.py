"""Planning a tag-corpus run on the driver: the model and feature cache it uses, and per input which chunks are
already done and still valid (same model, encoder and cache state) and which must be (re-)tagged.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import stat
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any, Callable

from exit_codes import InputError, UsageError
from pipeline.io.checkpoint_folder import checkpoint_info
from pipeline.io.dumps import GZIP_ERRORS, open_dump, read_lines
from pipeline.stage_config import TagConfig
from pipeline.tag.chunks import Identity, identify
from pipeline.tag.manifest import Manifest, data_folder
from rpihmif.visual import resolve_sources

__all__ = ["ModelSpec", "Freshness", "InputPlan", "resolve_model_path", "model_spec", "plan_input",
           "check_image_cache", "cache_state", "part_ok"]

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
        """Whether a committed chunk (its entry in the commit log) was made by this model, encoder and cache state."""
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
    family_id: str
    done: dict[int, tuple[int, int | None, bool]] = field(default_factory=dict)
    stale: int = 0
    skip: bool = False


def resolve_model_path(config: TagConfig) -> Path:
    """The checkpoint folder of `load_path` (DeepKE name; --model): a checkpoint folder, a file inside it, a run
    folder (its best/) or a Hugging Face Hub id (`rpihmif.checkpoint.resolve_checkpoint`)."""
    from rpihmif.checkpoint import resolve_checkpoint

    raw = config.load_path
    if not raw:
        raise UsageError("no model: pass --model CHECKPOINT (or --set load_path=CHECKPOINT)")
    return resolve_checkpoint(raw)  # checkpoint_info() validates the folder


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


def part_ok(state: Manifest, entry: dict[str, Any]) -> bool:
    """Whether a committed chunk's part is what was recorded: the stat first, the sha256 when the stat changed (a
    part that is only touched is re-stamped). A link at the part's path is an InputError."""
    if entry["output"] is None:
        return True  # a chunk without good records has no part
    path = data_folder(state.out) / entry["output"]
    try:
        st = os.lstat(path)
    except OSError:
        return False
    if stat.S_ISLNK(st.st_mode) or not stat.S_ISREG(st.st_mode):
        raise InputError(f"{path}: a committed part is {'a link' if stat.S_ISLNK(st.st_mode) else 'not a file'}; "
                         "remove it and rerun to re-tag its chunk")
    if (st.st_size, st.st_mtime_ns) == (entry["part_size"], entry["part_mtime_ns"]):
        return True
    if st.st_size != entry["part_size"] or not entry["part_digest"]:
        return False
    with open(path, "rb") as fh:
        if hashlib.file_digest(fh, "sha256").hexdigest() != entry["part_digest"]:
            return False
    state.update_stamp(entry["key"], st.st_size, st.st_mtime_ns)
    return True


def plan_input(path: Path, state: Manifest, fresh: Freshness) -> InputPlan:
    """Identify `path` (by its memo when unchanged), find the known inputs it extends, and split its committed chunks
    into kept and stale (another model, encoder or cache state, or a part that is missing or not what was recorded)."""
    source = str(path.resolve())
    ident = identify(path, state.sizes(), state)
    family = state.family(ident.sha256, ident.prefixes)
    plan = InputPlan(path, source, ident, family, state.family_id(family, ident.sha256))
    damaged = 0
    for first, e in state.chunks_of(family, ident.sha256).items():
        if not fresh.keeps(e):
            plan.stale += 1
        elif not part_ok(state, e):
            damaged += 1
        else:
            plan.done[first] = (int(e["last_line"]), e["byte_end"], bool(e["ends_newline"]))
    if damaged:
        log.warning("%s: %d committed part(s) missing or changed since their commit; their chunks are re-tagged",
                    source, damaged)
    plan.stale += damaged
    entry = state.input(ident.sha256)
    plan.skip = bool(entry and entry["complete"] and not plan.stale)
    return plan


def _has_images(path: Path, field_name: str, max_lines: int = 1000) -> bool:
    """Whether one of the first `max_lines` records has a non-empty image field (a cheap sniff of the dump)."""
    try:
        with open_dump(path) as fh:
            for raw, _ in islice(read_lines(fh, 1 << 20), max_lines):
                if raw and field_name.encode() in raw:
                    try:
                        if json.loads(raw).get(field_name):
                            return True
                    except (ValueError, AttributeError):
                        continue
    except (OSError, *GZIP_ERRORS):
        return False
    return False


def check_image_cache(spec: ModelSpec, cache: Any, plans: list[InputPlan], config: TagConfig) -> None:
    """A model that uses images, dumps that have images, and no cache of its encoder: exit 2 saying what to run."""
    if not spec.uses_images or cache is not None:
        return
    with_images = [p.source for p in plans if not p.skip and _has_images(p.path, config.dump.image_field)]
    if not with_images:
        return
    from pipeline.extract.from_checkpoint import extract_hint

    msg = (f"the model uses images (encoder {spec.fingerprint}) but the feature cache {config.cache_dir} has no "
           f"features of that encoder, and {with_images[0]} has image fields. Run: "
           f"{extract_hint(spec.load_path, with_images, config.cache_dir, config)} -- then rerun this command; or point "
           f"--set cache_dir= / $RPIHMIF_CACHE at the cache the model was trained with, or pass "
           f"--allow-missing-images to tag text-only")
    if not config.allow_missing_images:
        raise UsageError(msg)
    log.warning("--allow-missing-images: %s", msg.split(". Run:")[0] + "; every image is masked")

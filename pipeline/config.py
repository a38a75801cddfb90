"""Stage configuration: a yaml file of every knob plus `--set key=value` overrides (dotted keys for nested).

The yaml's own keys and value types are the schema: an unknown key or a value of the wrong type is a UsageError.
"""
from __future__ import annotations

import copy
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from cache.location import resolve_cache_dir
from exit_codes import UsageError
from rpihmif.config import check_value

__all__ = ["load_config", "parse_override", "apply_overrides"]

CONF_DIR = Path(str(resources.files("conf")))  # the default yamls, shipped as package data (top-level `conf/`)
_MAX_DEPTH = 8  # the stage yamls are 2 levels deep


def parse_override(text: str) -> tuple[str, Any]:
    """`'iffe.iterations=0'` -> `('iffe.iterations', 0)`; the value is read as yaml, with a string fallback."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise UsageError(f"--set {text!r}: expected key=value, e.g. --set num_epochs=3")
    try:
        events = list(yaml.parse(raw)) if raw.strip() else []
    except (yaml.YAMLError, RecursionError):
        events = None  # not yaml: the text itself (below)
    for event in events or []:
        if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None) or getattr(event, "tag", None):
            raise UsageError(f"--set {text!r}: yaml tags (!!python/..., !name) and anchors/aliases are not allowed "
                             "in values; quote the value if you mean the literal text")
    try:
        value = yaml.safe_load(raw) if events else ("" if events == [] else raw)
    except (yaml.YAMLError, RecursionError):
        value = raw
    if not _plain(value):  # dates, bytes, sets...: the text as written
        value = raw
    if isinstance(value, str):
        try:  # yaml 1.1 reads 1e-3 as a string; users mean a number
            value = float(value) if any(c in value.lower() for c in ".e") else int(value)
        except ValueError:
            pass
    return key.strip(), value


def _plain(value: Any, depth: int = 0) -> bool:
    """Whether `value` is made only of what a config holds: str, int, float, bool, None, lists and str-keyed maps."""
    if depth > _MAX_DEPTH:
        return False
    if isinstance(value, list):
        return all(_plain(v, depth + 1) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _plain(v, depth + 1) for k, v in value.items())
    return value is None or isinstance(value, (str, int, float, bool))


def _too_deep(value: Any, depth: int = 0) -> bool:
    if depth > _MAX_DEPTH:
        return True
    children = value.values() if isinstance(value, dict) else value if isinstance(value, list) else ()
    return any(_too_deep(v, depth + 1) for v in children)


def _coerce(key: str, value: Any, default: Any, source: str) -> Any:
    """`value` read as the type of the yaml default (text where a string belongs, `a,b` where a list does), then
    checked by the one type rule of every config (`rpihmif.config.check_value`); a section's keys one by one."""
    if default is None or value is None:
        return value
    if isinstance(default, dict):
        if not isinstance(value, dict):
            raise UsageError(f"{source}: {key} is a section; set one of its keys: {', '.join(default)}")
        unknown = sorted(set(value) - set(default))
        if unknown:
            raise UsageError(f"{source}: unknown key(s) {unknown} in {key}; known keys here: {', '.join(default)}")
        return {**default, **{k: _coerce(f"{key}.{k}", v, default[k], source) for k, v in value.items()}}
    if isinstance(default, str) and isinstance(value, (int, float, bool)):
        value = str(value)  # `--set dataset=2015` names a folder
    elif isinstance(default, list) and isinstance(value, str):
        value = [v.strip() for v in value.split(",") if v.strip()]
    hint = list[str] if isinstance(default, list) else type(default)
    try:
        return check_value(key, value, hint)
    except ValueError as exc:
        raise UsageError(f"{source}: {exc}") from None


# sections whose keys also answer to their flat names (DeepKE's `bert_name`, `max_seq`, `vit_name`; tag's `id_field`)
FLAT_SECTIONS = ("text", "vision", "dump")
# older flat names of keys now in a section under another name
ALIASES = {"vit_seed": "vision.seed", "feature_dtype": "vision.dtype"}


def _alias(config: dict[str, Any], dotted: str) -> str:
    """A flat key that is not at the top level -> the one FLAT_SECTIONS section holding it (`vit_name` ->
    `vision.vit_name`, `max_seq` -> `text.max_seq`), or its ALIASES entry; anything else as given."""
    if "." in dotted or dotted in config:
        return dotted
    holders = [name for name in FLAT_SECTIONS if isinstance(config.get(name), dict) and dotted in config[name]]
    if len(holders) == 1:
        return f"{holders[0]}.{dotted}"
    alias = ALIASES.get(dotted, "")
    return alias if alias and alias.split(".")[0] in config else dotted


def apply_overrides(config: dict[str, Any], overrides: dict[str, Any], source: str = "--set") -> dict[str, Any]:
    """Return a copy of `config` with dotted-key overrides applied; unknown keys raise UsageError."""
    config = copy.deepcopy(config)
    for dotted, value in overrides.items():
        dotted = _alias(config, dotted)
        node, parts = config, dotted.split(".")
        for depth, part in enumerate(parts):
            if not isinstance(node, dict) or part not in node:
                known = ", ".join(sorted(node)) if isinstance(node, dict) else "(none)"
                raise UsageError(f"{source}: unknown key {dotted!r}; known keys here: {known}")
            if depth == len(parts) - 1:
                if isinstance(node[part], dict) and not isinstance(value, dict):
                    raise UsageError(f"{source}: {dotted} is a section; set one of its keys: {', '.join(node[part])}")
                node[part] = _coerce(dotted, value, node[part], source)
            node = node[part]
    return config


def load_config(stage: str, path: str | Path | None = None, overrides: list[str] | None = None,
                named: dict[str, Any] | None = None) -> dict[str, Any]:
    """Load `conf/<stage>.yaml` (or `path`), then named CLI options (None = unset), then `--set` overrides.

    A user yaml may hold a subset of the keys; every key it holds must exist in the stage's default yaml.
    """
    default_path = CONF_DIR / f"{stage}.yaml"
    config = _read_yaml(default_path)
    if path is not None and Path(path).resolve() != default_path:
        config = apply_overrides(config, _flatten(_read_yaml(Path(path))), source=str(path))
    if named:
        config = apply_overrides(config, {k: v for k, v in named.items() if v is not None}, source="option")
    if overrides:
        config = apply_overrides(config, dict(parse_override(o) for o in overrides))
    if "cache_dir" in config:  # absolute, and never relative to the working folder by default
        config["cache_dir"] = str(resolve_cache_dir(config["cache_dir"]))
    return config


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise UsageError(f"config file {path} not found; pass --config with an existing yaml")
    try:
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=_ConfigLoader) or {}
    except yaml.YAMLError as exc:
        raise UsageError(f"{path}: invalid yaml: {exc}") from exc
    except _AliasFound as exc:
        raise UsageError(f"{path}:{exc.args[0]}: yaml aliases (*name) are not allowed in config files (one alias "
                         "can expand to an exponential size); write the values out") from None
    except UnicodeDecodeError as exc:
        raise UsageError(f"{path}: not UTF-8 text (byte {exc.start}); save the config as UTF-8") from exc
    except RecursionError as exc:
        raise UsageError(f"{path}: yaml nested too deeply; a config is at most {_MAX_DEPTH} levels deep") from exc
    if not isinstance(data, dict):
        raise UsageError(f"{path}: expected a mapping of keys to values at the top level")
    if _too_deep(data):
        raise UsageError(f"{path}: values nested more than {_MAX_DEPTH} levels deep; a stage config is 2 levels deep")
    return data


class _AliasFound(Exception):
    """Raised by `_ConfigLoader` at the line of the first alias."""


class _ConfigLoader(yaml.SafeLoader):
    """safe_load without aliases: `*name` can make a small file expand exponentially (an alias bomb)."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            raise _AliasFound(self.peek_event().start_mark.line + 1)
        return super().compose_node(parent, index)


def _flatten(data: dict[str, Any], prefix: str = "", depth: int = 0) -> dict[str, Any]:
    if depth > _MAX_DEPTH:
        raise UsageError(f"config key {prefix.rstrip('.')!r} is nested more than {_MAX_DEPTH} levels deep")
    flat: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict) and value:
            flat.update(_flatten(value, f"{prefix}{key}.", depth + 1))
        else:
            flat[f"{prefix}{key}"] = value
    return flat

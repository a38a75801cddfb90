"""Stage configuration: a yaml file of every knob plus `--set key=value` overrides (dotted keys for nested).

The yaml's own keys and value types are the schema: an unknown key or a value of the wrong type is a UsageError.
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

from cache.location import resolve_cache_dir
from rpihmif.errors import UsageError

__all__ = ["load_config", "parse_override", "apply_overrides"]

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"


def parse_override(text: str) -> tuple[str, Any]:
    """`'iffe.iterations=0'` -> `('iffe.iterations', 0)`; the value is read as yaml, with a string fallback."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise UsageError(f"--set {text!r}: expected key=value, e.g. --set num_epochs=3")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    if isinstance(value, str):
        try:  # yaml 1.1 reads 1e-3 as a string; users mean a number
            value = float(value) if any(c in value.lower() for c in ".e") else int(value)
        except ValueError:
            pass
    return key.strip(), value


def _coerce(key: str, value: Any, default: Any, source: str) -> Any:
    """Check `value` against the type of the yaml default; ints are accepted where floats are expected."""
    if default is None or value is None:
        return value
    if isinstance(default, bool):
        if isinstance(value, bool):
            return value
    elif isinstance(default, float):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif isinstance(default, int):
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif isinstance(default, str):
        return value if isinstance(value, str) else str(value)
    elif isinstance(default, list):
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if isinstance(value, list):
            return value
    elif isinstance(default, dict) and isinstance(value, dict):
        return value
    raise UsageError(f"{source}: {key} must be {type(default).__name__}, got {value!r}")


def apply_overrides(config: dict[str, Any], overrides: dict[str, Any], source: str = "--set") -> dict[str, Any]:
    """Return a copy of `config` with dotted-key overrides applied; unknown keys raise UsageError."""
    config = copy.deepcopy(config)
    for dotted, value in overrides.items():
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
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise UsageError(f"{path}: invalid yaml: {exc}") from exc
    if not isinstance(data, dict):
        raise UsageError(f"{path}: expected a mapping of keys to values at the top level")
    return data


def _flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict) and value:
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat

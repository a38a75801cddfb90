"""`python cli.py config STAGE`: a typed stage config printed as yaml, each key with its comment from its stage yaml.

The output reads back unchanged (`--config`), like spaCy's `debug config`.
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import yaml

from pipeline.config import CONF_DIR

__all__ = ["render_yaml", "yaml_comments"]

_KEY_LINE = re.compile(r"^(?P<indent> *)(?P<key>[A-Za-z_]\w*):(?P<rest>.*)$")


def yaml_comments(path: Path) -> dict[str, str]:
    """Dotted key -> its trailing `# comment` in a stage yaml ("" when the line has none)."""
    comments: dict[str, str] = {}
    stack: list[tuple[int, str]] = []
    for line in path.read_text(encoding="utf-8").splitlines():
        match = _KEY_LINE.match(line)
        if not match:
            continue
        indent = len(match["indent"])
        while stack and stack[-1][0] >= indent:
            stack.pop()
        dotted = ".".join([k for _, k in stack] + [match["key"]])
        comments[dotted] = match["rest"].partition(" #")[2].strip()
        stack.append((indent, match["key"]))
    return comments


def _flow(value: Any) -> str:
    """One value as a yaml flow scalar or list that reads back to the same Python value."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        text = repr(value)
        mantissa, e, exp = text.partition("e")
        return f"{mantissa}.0e{exp}" if e and "." not in mantissa else text  # PyYAML needs the dot in 5.0e-05
    if isinstance(value, list):
        return "[" + ", ".join(_flow(v) for v in value) + "]"
    if isinstance(value, str):
        plain = value and value == value.strip() and not re.search(r"[#:{}\[\],&*!|>'\"%@`]", value)
        return value if plain and yaml.safe_load(value) == value else json.dumps(value, ensure_ascii=False)
    return str(value)


def render_yaml(cfg: Any) -> str:
    """The effective config as yaml, with each key's comment from the stage's default yaml; reads back unchanged."""
    stage = cfg.stage
    comments = yaml_comments(CONF_DIR / f"{stage}.yaml")
    lines = [f"# effective {stage} config (python cli.py config {stage}); usable as --config"]

    order = {key: i for i, key in enumerate(comments)}  # the yaml's key order, not the class's

    def emit(data: dict[str, Any], prefix: str, indent: int) -> None:
        for key, value in sorted(data.items(), key=lambda kv: order.get(prefix + kv[0], len(order))):
            note = comments.get(prefix + key, "")
            text = " " * indent + f"{key}:" + ("" if isinstance(value, dict) else f" {_flow(value)}")
            lines.append(f"{text:<30} # {note}" if note else text)
            if isinstance(value, dict):
                emit(value, f"{prefix}{key}.", indent + 2)

    emit(cfg.to_dict(), "", 0)
    return "\n".join(lines) + "\n"

"""Exceptions of the model library: plain Python exceptions whose messages name the file or argument and the fix.

`ModelError` (a ValueError) is a checkpoint, model folder, config or argument the library cannot use; the CLI
reports it as bad usage (exit 2). `bounded` keeps messages built from file content short.
"""
from __future__ import annotations

__all__ = ["ModelError", "bounded"]

MESSAGE_PART = 200  # characters of file content (a value, a path, a library error) one message quotes at most


def bounded(value: object, limit: int = MESSAGE_PART) -> str:
    """`str(value)` cut to `limit` characters (with the length it had), for messages built from file content."""
    text = value if isinstance(value, str) else str(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


class ModelError(ValueError):
    """A checkpoint, model folder, config or argument the model library cannot use; the message names it."""

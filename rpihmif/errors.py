"""Errors that map to the pipeline's exit codes: 2 bad usage or config, 3 another run holds the lock.

Any other exception is a failed run (exit 1); the CLI prints the message, never a bare traceback for these.
"""
from __future__ import annotations

__all__ = ["PipelineError", "UsageError", "LockHeldError", "InputError", "DamagedCacheError", "bounded"]

MESSAGE_PART = 200  # characters of file content (a value, a path, a library error) one message quotes at most


def bounded(value: object, limit: int = MESSAGE_PART) -> str:
    """`str(value)` cut to `limit` characters (with the length it had), for messages built from file content."""
    text = value if isinstance(value, str) else str(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


class PipelineError(Exception):
    """Base class; `exit_code` is what the CLI exits with."""

    exit_code = 1


class UsageError(PipelineError):
    """Bad option, config key or value, missing model folder, mismatched cache or checkpoint (exit 2)."""

    exit_code = 2


class InputError(PipelineError):
    """Malformed input data: the message names the file and line or record (exit 1)."""

    exit_code = 1


class LockHeldError(PipelineError):
    """Another run holds the output's lock (exit 3)."""

    exit_code = 3


class DamagedCacheError(UsageError):
    """A feature-cache file fails its checksum or cannot be read (exit 2): rerun extract-features to repair it."""

    def __init__(self, path: object, reason: object):
        self.path, self.reason = path, str(reason)[:300]
        super().__init__(f"{path}: damaged feature-cache file ({self.reason}); rerun extract-features with "
                         "the same settings: it verifies the cache, sets damaged shards aside and recomputes "
                         "their images")

    def __reduce__(self) -> tuple:  # pickled as its arguments: crosses Ray's process boundary whole
        return type(self), (self.path, self.reason)

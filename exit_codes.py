"""Errors that map to the pipeline's exit codes: 2 bad usage or config, 3 another run holds the lock, 1 a failed run.

The bottom of the stack: `cache` and `pipeline` raise these, the CLI turns them into one line and the exit code;
the model library (`rpihmif`) raises plain exceptions instead (its `ModelError` is bad usage too).
"""
from __future__ import annotations

__all__ = ["PipelineError", "UsageError", "LockHeldError", "InputError", "DamagedCacheError"]


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

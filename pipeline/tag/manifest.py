"""`_manifest.json` of a tag-corpus output: inputs known by content (sha256, size, paths seen) and committed chunks.

A chunk entry names its Parquet part in `data/` and what produced it (model, encoder, cache state); the file is
rewritten atomically after each commit, so a killed run leaves the last committed state.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from cache.durable import atomic_write_text
from rpihmif.errors import InputError

__all__ = ["Manifest", "MANIFEST_NAME", "REJECTS_NAME", "DATA_DIR", "REJECTS_DIR", "data_folder", "chunk_key"]

MANIFEST_NAME = "_manifest.json"
DATA_DIR = "data"  # OUT/data/ holds only Parquet parts; manifest, rejects, report and lock sit beside it in OUT/
REJECTS_NAME = "_rejects.jsonl"  # every committed chunk's rejects, rebuilt at the end of each run
REJECTS_DIR = "_rejects.d"  # one rejects file per committed chunk (the exactly-once source of _rejects.jsonl)
_VERSION = 2


def data_folder(out: str | Path) -> Path:
    """The folder of an output that holds only Parquet parts: what pandas/pyarrow/DuckDB/polars read as one table."""
    return Path(out) / DATA_DIR


def chunk_key(input_sha: str, first_line: int) -> str:
    return f"{input_sha[:16]}:{first_line}"


class Manifest:
    """`inputs`: sha256 -> {size, paths, lines, ends_newline, complete}; `entries`: chunk key -> chunk entry
    ({input, source, first_line, last_line, byte_end, ends_newline, output, rows, rejects, images_*, model_id,
    encoder, cache_state, tagged_at})."""

    def __init__(self, out_dir: Path):
        self.path = Path(out_dir) / MANIFEST_NAME
        self.inputs: dict[str, dict[str, Any]] = {}
        self.entries: dict[str, dict[str, Any]] = {}
        if self.path.exists():
            try:
                data = json.loads(self.path.read_text(encoding="utf-8"))
                if data.get("version") != _VERSION:
                    raise ValueError(f"version {data.get('version')}, expected {_VERSION}; tag into a new folder")
                self.inputs, self.entries = dict(data["inputs"]), dict(data["chunks"])
            except (ValueError, KeyError, TypeError, AttributeError) as exc:
                raise InputError(f"{self.path}: unreadable manifest ({exc}); move the output folder away to re-tag "
                                 f"every input") from exc

    def sizes(self) -> set[int]:
        """Sizes of the known inputs: the prefixes a new file is hashed at to find what it extends."""
        return {int(e["size"]) for e in self.inputs.values()}

    def family(self, sha256: str, prefixes: dict[int, str]) -> set[str]:
        """The input itself plus every known input that is a byte prefix of it (it grew by appending)."""
        fam = {sha256}
        for sha, entry in self.inputs.items():
            if prefixes.get(int(entry["size"])) == sha:
                fam.add(sha)
        return fam

    def chunks_of(self, family: set[str], sha256: str) -> dict[int, tuple[str, dict[str, Any]]]:
        """Committed chunks of input `sha256` whose lines are its bytes: first_line -> (key, entry).

        A chunk read from a shorter member of its `family` counts only if its last line was complete (had a newline).
        """
        found: dict[int, tuple[str, dict[str, Any]]] = {}
        for key, e in self.entries.items():
            if e["input"] == sha256 or e["input"] in family and e["ends_newline"]:
                found[int(e["first_line"])] = (key, e)
        return found

    def see_input(self, sha256: str, size: int, path: str) -> dict[str, Any]:
        """The entry of input `sha256` (created if new), with `path` added to the paths it was seen under."""
        entry = self.inputs.setdefault(sha256, {"sha256": sha256, "size": size, "paths": [], "lines": None,
                                                "ends_newline": None, "complete": False,
                                                "first_seen": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
        if path not in entry["paths"]:
            entry["paths"].append(path)
        return entry

    def outputs(self) -> set[str]:
        return {e["output"] for e in self.entries.values()}

    def save(self) -> None:
        body = {"version": _VERSION, "inputs": dict(sorted(self.inputs.items())),
                "chunks": dict(sorted(self.entries.items(), key=lambda kv: (kv[1]["output"], kv[0])))}
        atomic_write_text(self.path, json.dumps(body, indent=1, ensure_ascii=False) + "\n")

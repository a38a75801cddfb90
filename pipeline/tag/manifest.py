"""`_manifest.json` of the inputs a tag-corpus output folder has finished, for incremental cron reruns.

An input is skipped when its content sha256 and the model id match its entry; the file is rewritten
atomically (temp + fsync + rename), so a killed run leaves the previous manifest intact.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from cache.durable import atomic_write_text
from rpihmif.errors import InputError

__all__ = ["Manifest", "MANIFEST_NAME", "REJECTS_NAME", "DATA_DIR", "data_folder"]

MANIFEST_NAME = "_manifest.json"
DATA_DIR = "data"  # OUT/data/ holds only Parquet parts; manifest, rejects, report and lock sit beside it in OUT/
REJECTS_NAME = "_rejects.jsonl"  # '_' prefix: Parquet readers of the folder skip it, like _manifest.json
_VERSION = 1



def data_folder(out: str | Path) -> Path:
    """The folder of an output that holds only Parquet parts: what pandas/pyarrow/DuckDB/polars read as one table."""
    return Path(out) / DATA_DIR

class Manifest:
    """Finished inputs keyed by absolute path: size, sha256, rows, rejects, model id, output name, time."""

    def __init__(self, out_dir: Path):
        self.path = Path(out_dir) / MANIFEST_NAME
        self.entries: dict[str, dict[str, Any]] = {}
        if self.path.exists():
            try:
                data = json.loads(self.path.read_text(encoding="utf-8"))
                self.entries = dict(data["inputs"])
            except (ValueError, KeyError, TypeError) as exc:
                raise InputError(f"{self.path}: unreadable manifest ({exc}); move it away to re-tag "
                                 f"every input") from exc

    def is_done(self, key: str, sha256: str, model_id: str) -> bool:
        entry = self.entries.get(key)
        return bool(entry) and entry.get("sha256") == sha256 and entry.get("model_id") == model_id

    def output_of(self, key: str) -> str | None:
        entry = self.entries.get(key)
        return entry.get("output") if entry else None

    def outputs(self) -> set[str]:
        return {e["output"] for e in self.entries.values() if e.get("output")}

    def record(self, key: str, **entry: Any) -> None:
        """Add or replace the entry of input `key` and write the manifest atomically."""
        entry.setdefault("finished_at", time.strftime("%Y-%m-%dT%H:%M:%S%z"))
        self.entries[key] = {"path": key, **entry}
        body = {"version": _VERSION, "inputs": dict(sorted(self.entries.items()))}
        atomic_write_text(self.path, json.dumps(body, indent=2, ensure_ascii=False) + "\n")

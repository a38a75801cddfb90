"""Driver-side commits of tag-corpus chunks: rename the worker's temp part into `data/`, record it in the manifest,
then drop what it superseded; at start, remove what a killed run left uncommitted (the lock is held).
"""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

from cache.durable import atomic_file, atomic_write_text, commit_temp, ensure_dir, is_temp_name
from pipeline.tag.manifest import REJECTS_DIR, REJECTS_NAME, Manifest, chunk_key, data_folder

__all__ = ["Committer", "part_name", "STAGING_DIR"]

STAGING_DIR = "_staging"  # temp parts being written; data/ only ever holds committed Parquet

log = logging.getLogger("rpihmif.tag")


def part_name(source: str, sha256: str, first_line: int) -> str:
    """`<dump stem>-<sha256[:12]>-<first line>.parquet`: one name per (input content, chunk start)."""
    stem = Path(source).name
    for suffix in (".gz", ".jsonl", ".ndjson", ".json"):
        stem = stem[: -len(suffix)] if stem.endswith(suffix) else stem
    stem = stem.lstrip("._") or "part"
    return f"{stem}-{sha256[:12]}-{first_line:09d}.parquet"


class Committer:
    """Owns `OUT/data/`, `OUT/_rejects.d/` and the manifest of one locked output folder."""

    def __init__(self, out: Path):
        self.out = out
        self.data = ensure_dir(data_folder(out))
        self.staging = ensure_dir(out / STAGING_DIR)  # workers' temp parts: outside data/, same file system
        self.rejects_dir = out / REJECTS_DIR
        self.manifest = Manifest(out)
        self.changed = False
        self._clean()

    def drop_temps(self) -> None:
        """Remove temp parts of dropped in-flight chunks (end of an interrupted run)."""
        for p in self.staging.iterdir():
            if is_temp_name(p.name):
                p.unlink(missing_ok=True)

    def _clean(self) -> None:
        """Drop temps, parts the manifest does not name (killed between rename and manifest) and their rejects."""
        outputs = self.manifest.outputs()
        stems = {Path(o).stem for o in outputs}
        removed = 0
        for folder, keep in ((self.out, None), (self.staging, None), (self.data, outputs), (self.rejects_dir, stems)):
            if not folder.is_dir():
                continue
            for p in folder.iterdir():
                name = p.name
                stale = is_temp_name(name) or keep is not None and (Path(name).stem if folder is
                                                                    self.rejects_dir else name) not in keep
                if p.is_file() and stale and name != ".lock":
                    p.unlink(missing_ok=True)
                    removed += not is_temp_name(name)
        if removed:
            self.changed = True
            log.info("removed %d file(s) a killed run left uncommitted in %s", removed, self.out)

    def commit(self, plan: Any, chunk: Any, result: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
        """Make one chunk's part visible and recorded; returns its manifest entry."""
        sha, first = plan.ident.sha256, chunk.first_line
        key, name = chunk_key(sha, first), part_name(plan.source, sha, first)
        commit_temp(Path(result["tmp"]), self.data / name)
        rejects = self.rejects_dir / f"{Path(name).stem}.jsonl"
        if result["rejects"]:
            ensure_dir(self.rejects_dir)
            atomic_write_text(rejects, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in result["rejects"]))
        else:
            rejects.unlink(missing_ok=True)
        m = self.manifest
        superseded = [k for k, e in m.entries.items() if k != key and e["input"] in plan.family
                      and e["first_line"] <= chunk.last_line and e["last_line"] >= first]
        old = [m.entries.pop(k)["output"] for k in superseded]
        entry = {"input": sha, "source": plan.source, "first_line": first, "last_line": chunk.last_line,
                 "byte_end": chunk.byte_end, "ends_newline": chunk.ends_newline, "output": name,
                 "rows": result["rows"], "rejects": len(result["rejects"]), "images_used": result["images_used"],
                 "images_missing": result["images_missing"], "no_image": result["no_image"],
                 "tagged_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **extra}
        m.entries[key] = entry
        m.save()
        for output in old:  # recorded as gone first: a kill here leaves orphans the next run removes
            if output != name:
                (self.data / output).unlink(missing_ok=True)
                (self.rejects_dir / f"{Path(output).stem}.jsonl").unlink(missing_ok=True)
        self.changed = True
        return entry

    def complete_input(self, plan: Any, lines: int, ends_newline: bool) -> None:
        entry = self.manifest.see_input(plan.ident.sha256, plan.ident.size, plan.source)
        entry.update(lines=lines, ends_newline=ends_newline, complete=True)
        self.manifest.save()

    def write_rejects(self) -> Path:
        """Rebuild `_rejects.jsonl` from the committed chunks' rejects, in (source, line) order."""
        final = self.out / REJECTS_NAME
        if not self.changed and final.exists():
            return final
        entries = sorted(self.manifest.entries.values(), key=lambda e: (e["source"], e["first_line"]))
        with atomic_file(final, "w", encoding="utf-8") as dst:
            for e in entries:
                src = self.rejects_dir / f"{Path(e['output']).stem}.jsonl"
                if e["rejects"] and src.exists():
                    with open(src, encoding="utf-8") as fh:
                        for line in fh:
                            dst.write(line)
        return final

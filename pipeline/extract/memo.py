"""extract-features' view of the cache's stamp memo (`cache.memo.StampMemo`): it also checks that each remembered
encoder fingerprint hashes to its id, so planning a rerun on a complete cache hashes nothing and loads no encoder.
"""
from __future__ import annotations

from typing import Any

from cache.memo import MEMO_NAME, StampMemo

__all__ = ["MEMO_NAME", "PlanMemo"]


class PlanMemo(StampMemo):
    """The stamp memo of one cache root whose fingerprints are checked against `fingerprint_id`."""

    def fingerprint_ok(self, fingerprint: dict[str, Any]) -> bool:
        from rpihmif.vision_encoder import fingerprint_id

        return super().fingerprint_ok(fingerprint) and fingerprint.get("id") == fingerprint_id(fingerprint["hashed"])

"""The feature store: CLIP features in HDF5 shards keyed by image content hash, one folder per encoder fingerprint.

The stages import from here: `find_cache` (read-only lookup for train/evaluate/tag), `FeatureCache` (lazy checked
reader), `CacheWriter` (the single crash-safe writer), `repair_folder`, the stamp memo, `resolve_fingerprint` (the
folder of an encoder's features) and the `cache` command's `cache_info` / `verify_cache` / `prune_cache`. No Ray,
no pipeline imports.
"""
from cache.fingerprints import FingerprintMemo, resolve_fingerprint
from cache.format import DUMP_SOURCE, FEATURE_NAMES, NO_IMAGE
from cache.index import CacheIndex
from cache.integrity import repair_folder
from cache.location import default_cache_dir, resolve_cache_dir
from cache.manage import cache_info, prune_cache, verify_cache
from cache.memo import StampMemo
from cache.reader import FeatureCache, find_cache, fingerprint_folders, open_cache
from cache.writer import CacheWriter

__all__ = ["CacheWriter", "FeatureCache", "find_cache", "open_cache", "fingerprint_folders", "default_cache_dir",
           "resolve_cache_dir", "repair_folder", "CacheIndex", "StampMemo", "FEATURE_NAMES", "NO_IMAGE", "DUMP_SOURCE",
           "cache_info", "verify_cache", "prune_cache", "resolve_fingerprint", "FingerprintMemo"]

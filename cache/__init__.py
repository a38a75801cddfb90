"""The feature store: CLIP features in HDF5 shards keyed by image content hash, one folder per encoder fingerprint.

`CacheWriter` is the single crash-safe writer, `FeatureCache` the lazy verified reader; `durable` holds the link-safe
file primitives that every stage uses. No Ray, no pipeline imports.
"""
from cache.location import default_cache_dir, resolve_cache_dir
from cache.reader import FeatureCache, fingerprint_folders, open_cache
from cache.writer import CacheWriter

__all__ = ["CacheWriter", "FeatureCache", "open_cache", "fingerprint_folders", "default_cache_dir", "resolve_cache_dir"]

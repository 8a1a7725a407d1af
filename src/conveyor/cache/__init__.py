"""The content-addressed stage cache: keys from code and input fingerprints, values in
checksummed blobs on disk. See :mod:`conveyor.cache._cache` for the key's parts."""

from conveyor.cache._blobs import BlobInfo, BlobStore
from conveyor.cache._cache import CacheEntry, CacheStatistics, CacheWarning, StageCache
from conveyor.cache._fingerprint import (
    FingerprintError,
    explain_value,
    fingerprint_function,
    fingerprint_pipeline,
    fingerprint_value,
)

__all__ = [
    "BlobInfo",
    "BlobStore",
    "CacheEntry",
    "CacheStatistics",
    "CacheWarning",
    "FingerprintError",
    "StageCache",
    "explain_value",
    "fingerprint_function",
    "fingerprint_pipeline",
    "fingerprint_value",
]

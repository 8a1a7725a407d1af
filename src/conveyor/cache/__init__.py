"""The content-addressed stage cache: keys from code and input fingerprints, values in
checksummed blobs on disk. See :mod:`conveyor.cache._cache` for the key's parts."""

from conveyor.cache._blobs import BlobInfo, BlobStore
from conveyor.cache._cache import DEFAULT_ROOT, CacheEntry, CacheStatistics, StageCache
from conveyor.cache._fingerprint import (
    explain_value,
    fingerprint_function,
    fingerprint_pipeline,
    fingerprint_value,
)
from conveyor.errors import CacheWarning, FingerprintError

__all__ = [
    "DEFAULT_ROOT",
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

"""The content-addressed stage cache: keys from code and input fingerprints, values in
checksummed blobs on disk. See :mod:`conveyor.cache._cache` for the key's parts."""

from conveyor.cache._blobs import BlobInfo, BlobStore
from conveyor.cache._cache import (
    DEFAULT_ROOT,
    CacheEntry,
    CacheStatistics,
    StageCache,
    StoredEntry,
    default_cache_root,
)
from conveyor.cache._fingerprint import (
    CodeFingerprint,
    code_fingerprint,
    explain_value,
    fingerprint_function,
    fingerprint_pipeline,
    fingerprint_value,
    register_fingerprint,
)
from conveyor.cache._verify import Finding, VerifyReport, verify_cache
from conveyor.errors import CacheError, CacheWarning, FingerprintError

__all__ = [
    "DEFAULT_ROOT",
    "BlobInfo",
    "BlobStore",
    "CacheEntry",
    "CacheError",
    "CacheStatistics",
    "CacheWarning",
    "CodeFingerprint",
    "Finding",
    "FingerprintError",
    "StageCache",
    "StoredEntry",
    "VerifyReport",
    "code_fingerprint",
    "default_cache_root",
    "explain_value",
    "fingerprint_function",
    "fingerprint_pipeline",
    "fingerprint_value",
    "register_fingerprint",
    "verify_cache",
]

"""Profiles kept on disk, so that the same model is cut the same way on every call.

Timing on a shared machine varies from run to run, and a cut decided by a few
percent of noise would change with it, and the trained weights with the cut. So
a profile is measured once per model and read back afterwards. Its key is what
determines the measurement:

    the model factory's source file (its bytes) and name,
    the built model (each layer's repr, parameter and buffer shapes and dtypes),
    the sample (structure, shapes, dtypes) and the row counts measured,
    repeats and warm-up runs, the torch version, threads, and the device.

Editing the model's file, changing a layer's size or updating torch gives a new
key and a fresh measurement; nothing else expires. Entries live in
``$CONVEYOR_PROFILE_CACHE`` if set, else the user's cache directory
(``~/.cache/conveyor/train-profiles`` on Linux, ``~/Library/Caches`` on macOS,
``%LOCALAPPDATA%`` on Windows), one JSON file per key: delete one to measure again,
or copy it and pin it with ``train(..., profile=path)``.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from conveyor.train._errors import TrainError
from conveyor.train._profile import ModelProfile
from conveyor.train._trees import signature

__all__ = ["default_cache_dir", "load_cached", "profile_key", "store_profile"]

KEY_FORMAT = 1


def default_cache_dir() -> Path:
    """Where profiles are kept unless the caller names a directory (see the module docstring)."""
    env = os.environ.get("CONVEYOR_PROFILE_CACHE")
    if env:
        return Path(env)
    home = Path.home()
    if sys.platform == "win32":
        base = Path(os.environ.get("LOCALAPPDATA") or home / "AppData" / "Local")
        return base / "conveyor" / "Cache" / "train-profiles"
    if sys.platform == "darwin":
        return home / "Library" / "Caches" / "conveyor" / "train-profiles"
    base = Path(os.environ.get("XDG_CACHE_HOME") or home / ".cache")
    return base / "conveyor" / "train-profiles"


def _source_digest(factory: Callable[..., Any]) -> str:
    """SHA-256 of the file that defines ``factory``, or of its source when there is no file."""
    try:
        path = inspect.getsourcefile(factory)
        if path is not None and os.path.exists(path):
            return hashlib.sha256(Path(path).read_bytes()).hexdigest()
        return hashlib.sha256(inspect.getsource(factory).encode()).hexdigest()
    except (OSError, TypeError):
        return "no source"


def _layer_signature(layer: Any) -> list[Any]:
    tensors = [
        *(("param", n, t) for n, t in layer.named_parameters()),
        *(("buffer", n, t) for n, t in layer.named_buffers()),
    ]
    return [
        repr(layer),
        [
            [kind, name, list(t.shape), str(t.dtype), bool(t.requires_grad)]
            for kind, name, t in tensors
        ],
    ]


def profile_key(
    *,
    factory: Callable[..., Any],
    layers: Sequence[Any],
    sample: Any,
    rows: Sequence[int],
    repeats: int,
    warmup: int,
    threads: int,
    device: str,
    torch_version: str,
) -> str:
    """The hex key of a measurement: a digest of everything that determines it."""
    parts = {
        "format": KEY_FORMAT,
        "factory": [getattr(factory, "__qualname__", repr(factory)), _source_digest(factory)],
        "layers": [_layer_signature(layer) for layer in layers],
        "sample": signature(sample),
        "rows": sorted(int(r) for r in rows),
        "repeats": repeats,
        "warmup": warmup,
        "threads": threads,
        "device": device,
        "torch": torch_version,
    }
    text = json.dumps(parts, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def cache_file(root: str | Path, key: str) -> Path:
    return Path(root) / f"profile-{key[:40]}.json"


def load_cached(root: str | Path, key: str) -> ModelProfile | None:
    """The profile stored under ``key``, or None (a missing, damaged or foreign entry is a miss)."""
    path = cache_file(root, key)
    try:
        profile = ModelProfile.load(path)
    except TrainError:
        return None
    return profile if profile.key == key else None


def store_profile(root: str | Path, profile: ModelProfile) -> Path:
    """Write ``profile`` under its own key; atomic, so a reader never sees half a file."""
    if not profile.key:
        raise TrainError("a profile needs its key to be cached")
    path = cache_file(root, profile.key)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(profile.to_dict(), indent=1))
    os.replace(tmp, path)
    return path

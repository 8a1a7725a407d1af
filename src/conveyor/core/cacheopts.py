"""The cache options of a stage, checked when the stage is made.

cache_key       a function of the input returning what identifies it for the
                cache (an id, a path and its mtime), for inputs that cannot be
                fingerprinted or that carry more than the result depends on
cache_version   a version of the stage's code that you declare: it joins the
                key, and values the fingerprint cannot read then count by their
                type; change it whenever what the fingerprint cannot see changes
cache_check     the share of cache hits (0 to 1) recomputed and compared with
                the cached result during runs: a spot check of the fingerprint
cache_required  False: a cache folder that cannot be used (a file, read-only,
                full) makes the stage run uncached with a CacheWarning instead
                of failing the run with CacheError
"""

from __future__ import annotations

import pickle
from typing import TYPE_CHECKING

from conveyor.executors.base import executor_class

if TYPE_CHECKING:
    from conveyor.core.stage import Stage


def cache_rule(s: Stage) -> str | None:
    """The rule ``s``'s cache options break, or None."""
    given = [
        name
        for name, value, default in (
            ("cache_key", s.cache_key, None),
            ("cache_version", s.cache_version, None),
            ("cache_check", s.cache_check, 0.0),
            ("cache_required", s.cache_required, True),
        )
        if value != default
    ]
    if not s.cache:
        if given:
            return f"{given[0]}= only applies to a cached stage; give it cache=True too"
        return None
    if s.cache_key is not None and not callable(s.cache_key):
        return (
            f"cache_key={s.cache_key!r} is not callable; give a function of the input "
            "returning what identifies it, e.g. cache_key=lambda row: row['id']"
        )
    version = s.cache_version
    if version is not None and (isinstance(version, bool) or not isinstance(version, str | int)):
        return f"cache_version={version!r}; give a string or a whole number, e.g. '2'"
    check = s.cache_check
    if isinstance(check, bool) or not isinstance(check, int | float) or not 0 <= check <= 1:
        return f"cache_check={check!r}; give the share of hits to recompute, from 0 to 1 (0.01: 1%)"
    if not isinstance(s.cache_required, bool):
        return f"cache_required={s.cache_required!r}; give True or False"
    if s.cache_key is not None and not executor_class(s.executor).traits.shares_memory:
        try:
            pickle.dumps(s.cache_key)
        except Exception as exc:
            return (
                f"cache_key cannot be sent to a {s.executor!r} worker ({type(exc).__name__}: "
                f"{exc}); define it at the top level of a module, not as a lambda or closure"
            )
    return None

"""The model registry: versions, aliases with history, safe artifacts, in the run store.

::

    import conveyor as cv

    v = cv.models.register("digits", net, metrics={"accuracy": 0.97}, builder=Net)
    cv.models.alias("digits", "champion", v.version, reason="best on holdout")
    net = cv.models.load("digits@champion")

References are ``name`` (the latest version), ``name:3`` or ``name@alias``. The
functions here use the registry of the default run store (``$CONVEYOR_STORE``, else
the nearest ``.conveyor/runs.db`` upwards); :class:`ModelRegistry` opens another.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from conveyor.errors import ModelError, ModelNotFoundError, UnsafeModelError
from conveyor.models._formats import FORMATS
from conveyor.models._records import AliasMove, ModelRef, ModelVersion, parse_ref
from conveyor.models._registry import ModelRegistry

__all__ = [
    "FORMATS",
    "AliasMove",
    "ModelError",
    "ModelNotFoundError",
    "ModelRef",
    "ModelRegistry",
    "ModelVersion",
    "UnsafeModelError",
    "alias",
    "get",
    "history",
    "load",
    "parse_ref",
    "register",
]


def register(name: str, model: Any, **options: Any) -> ModelVersion:
    """Register ``model`` as the next version of ``name`` (:meth:`ModelRegistry.register`)."""
    with ModelRegistry() as registry:
        return registry.register(name, model, **options)


def load(
    ref: str | ModelRef,
    *,
    builder: Callable[[], Any] | None = None,
    trust_pickle: bool = False,
    trusted_types: list[str] | None = None,
) -> Any:
    """The model ``ref`` names (``"digits@champion"``), read from its checked artifact."""
    with ModelRegistry() as registry:
        return registry.load(
            ref, builder=builder, trust_pickle=trust_pickle, trusted_types=trusted_types
        )


def get(ref: str | ModelRef) -> ModelVersion:
    """The version record ``ref`` names now (no artifact is read)."""
    with ModelRegistry() as registry:
        return registry.resolve(ref)


def alias(
    name: str, alias: str, version: int, *, reason: str = "", by: str | None = None
) -> AliasMove:
    """Move ``name@alias`` to ``version`` and record who, when, from what and why."""
    with ModelRegistry() as registry:
        return registry.alias(name, alias, version, reason=reason, by=by)


def history(name: str, alias: str | None = None) -> list[AliasMove]:
    """Every move of ``name``'s aliases (or of one), oldest first."""
    with ModelRegistry() as registry:
        return registry.history(name, alias)

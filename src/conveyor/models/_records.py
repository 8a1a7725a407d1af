"""What the registry returns: frozen records of versions and alias moves."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from conveyor.errors import ModelError

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")


@dataclass(frozen=True)
class ModelVersion:
    """One registered version of a model: its artifact and where it came from."""

    name: str
    version: int
    format: str
    artifact: str  # SHA-256 of the artifact's bytes
    size: int
    metrics: dict[str, float] = field(default_factory=dict)
    run_id: str | None = None
    data_fingerprint: str | None = None
    code_fingerprint: str | None = None
    builder: str | None = None  # "module:attr" that makes the torch module
    signature: dict[str, Any] | None = None  # the declared input, e.g. {"shape": [4]}
    description: str = ""
    created_at: float = 0.0
    created_by: str = ""
    aliases: tuple[str, ...] = ()

    @property
    def ref(self) -> str:
        return f"{self.name}:{self.version}"


@dataclass(frozen=True)
class AliasMove:
    """One move of an alias: ``from_version`` is None for its first placement."""

    name: str
    alias: str
    from_version: int | None
    to_version: int
    moved_at: float
    moved_by: str
    reason: str


@dataclass(frozen=True)
class ModelRef:
    """A parsed reference: ``name`` (the latest version), ``name:3`` or ``name@alias``."""

    name: str
    version: int | None = None
    alias: str | None = None

    def __str__(self) -> str:
        if self.alias is not None:
            return f"{self.name}@{self.alias}"
        return self.name if self.version is None else f"{self.name}:{self.version}"


def check_name(value: str, what: str) -> str:
    if not isinstance(value, str) or not _NAME.match(value):
        raise ModelError(
            f"{what} {value!r} is not valid: use letters, digits, '_', '.' and '-', "
            "starting with a letter or digit"
        )
    return value


def check_alias(alias: str) -> str:
    check_name(alias, "alias")
    if alias.isdigit():
        raise ModelError(f"alias {alias!r} is all digits, which reads as a version; name it")
    return alias


def parse_ref(ref: str | ModelRef) -> ModelRef:
    """``"name"``, ``"name:3"`` or ``"name@alias"`` as a :class:`ModelRef`."""
    if isinstance(ref, ModelRef):
        return ref
    if not isinstance(ref, str) or not ref:
        raise ModelError(f"model reference {ref!r}: write name, name:VERSION or name@ALIAS")
    if "@" in ref:
        name, alias = ref.split("@", 1)
        return ModelRef(check_name(name, "model name"), alias=check_alias(alias))
    if ":" in ref:
        name, version = ref.split(":", 1)
        if not version.isdigit() or int(version) < 1:
            raise ModelError(
                f"model reference {ref!r}: the version after ':' must be a whole number "
                "from 1 (or write name@ALIAS)"
            )
        return ModelRef(check_name(name, "model name"), version=int(version))
    return ModelRef(check_name(ref, "model name"))


def version_from_row(row: tuple[Any, ...], aliases: tuple[str, ...] = ()) -> ModelVersion:
    (name, version, fmt, artifact, size, metrics, run_id, data_fp, code_fp, builder,
     signature, description, created_at, created_by) = row  # fmt: skip
    return ModelVersion(
        name=name,
        version=int(version),
        format=fmt,
        artifact=artifact,
        size=int(size),
        metrics=json.loads(metrics),
        run_id=run_id,
        data_fingerprint=data_fp,
        code_fingerprint=code_fp,
        builder=builder,
        signature=None if signature is None else json.loads(signature),
        description=description,
        created_at=float(created_at),
        created_by=created_by,
        aliases=aliases,
    )


VERSION_COLUMNS = (
    "name, version, format, artifact, size, metrics, run_id, data_fingerprint, "
    "code_fingerprint, builder, signature, description, created_at, created_by"
)

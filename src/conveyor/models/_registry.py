"""ModelRegistry: versions, aliases and their history in the run store's SQLite file.

::

    registry = ModelRegistry()                          # the run store's file
    v = registry.register("digits", net, metrics={"accuracy": 0.97}, alias="challenger")
    registry.alias("digits", "champion", v.version, reason="beat v3 on holdout")
    net = registry.load("digits@champion", builder=Net)

A version is immutable once written; an alias is a pointer that moves by one call,
and every move is kept (:meth:`history`). Artifacts are blobs named by their SHA-256
in ``models/blobs/`` beside the store file (:mod:`conveyor.models._blobs`). The
tables live in the same file as the run history, so a version can name the run
that trained it, and no service is needed.
"""

from __future__ import annotations

import getpass
import importlib
import json
import sqlite3
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from conveyor.errors import ModelError, ModelNotFoundError
from conveyor.models import _blobs, _formats, _tables
from conveyor.models._records import (
    VERSION_COLUMNS,
    AliasMove,
    ModelRef,
    ModelVersion,
    check_alias,
    check_name,
    parse_ref,
    version_from_row,
)
from conveyor.store import default_store_path


def who() -> str:
    try:
        return getpass.getuser()
    except Exception:  # no user name in this environment (a container's uid)
        return "unknown"


def builder_path(builder: Callable[[], Any] | str | None) -> str | None:
    """``"module:attr"`` for a builder given as a class or function (None for a
    closure or lambda, which cannot be found again by name)."""
    if builder is None or isinstance(builder, str):
        return builder
    module, qualname = getattr(builder, "__module__", None), getattr(builder, "__qualname__", "")
    if not module or "<" in qualname or module == "__main__":
        return None
    return f"{module}:{qualname}"


def import_builder(path: str) -> Callable[[], Any]:
    module, _, attr = path.partition(":")
    try:
        obj: Any = importlib.import_module(module)
        for part in attr.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as exc:
        raise ModelError(
            f"the model's builder {path!r} cannot be imported ({exc}); install the code "
            "that defines it, or pass builder= to load()"
        ) from exc
    return obj


class ModelRegistry:
    """The model registry of one run store (default: the one ``conveyor runs`` reads)."""

    def __init__(self, path: str | Path | None = None) -> None:
        from conveyor.store import _db

        self.path = Path(path) if path is not None else default_store_path()
        self._db = _db
        self._conn = _db.connect(self.path, create=True)
        self._lock = threading.Lock()
        self._blobs = _blobs.blob_root(self.path)
        if not _db.read(self._conn, _tables.has_tables, path=self.path):
            self._write(_tables.create_tables)

    # --- transactions -------------------------------------------------------------------

    def _read(self, fn: Callable[[sqlite3.Connection], Any]) -> Any:
        with self._lock:
            return self._db.read(self._conn, fn, path=self.path)

    def _write(self, fn: Callable[[sqlite3.Connection], Any]) -> Any:
        with self._lock:
            return self._db.write(self._conn, fn, path=self.path)

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def __enter__(self) -> ModelRegistry:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- writing ------------------------------------------------------------------------

    def register(
        self,
        name: str,
        model: Any,
        *,
        format: str | None = None,
        metrics: Mapping[str, float] | None = None,
        run_id: str | None = None,
        data_fingerprint: str | None = None,
        code_fingerprint: str | None = None,
        builder: Callable[[], Any] | str | None = None,
        signature: Mapping[str, Any] | None = None,
        description: str = "",
        alias: str | None = None,
        reason: str = "registered",
    ) -> ModelVersion:
        """Store ``model`` as the next version of ``name`` and return that version.

        ``format`` defaults to the safe one for the model's type (safetensors for
        torch, skops for scikit-learn, onnx); ``builder`` (a class or ``"module:attr"``)
        makes the torch module that weights load into; ``signature`` declares the
        input (``{"shape": [4], "dtype": "float32"}``) for the server's schema;
        ``alias`` points an alias at the new version in the same transaction."""
        check_name(name, "model name")
        fmt = format or _formats.guess_format(model)
        if fmt not in _formats.FORMATS:
            raise ModelError(
                f"unknown model format {fmt!r}; the formats are {', '.join(_formats.FORMATS)}"
            )
        if alias is not None:
            check_alias(alias)
        clean_metrics = {str(k): float(v) for k, v in (metrics or {}).items()}
        data = _formats.dump(model, fmt)
        digest = _blobs.put_blob(self._blobs, data)
        if code_fingerprint is None and builder is not None and not isinstance(builder, str):
            code_fingerprint = _code_fingerprint(builder)
        row = {
            "name": name,
            "format": fmt,
            "artifact": digest,
            "size": len(data),
            "metrics": json.dumps(clean_metrics, sort_keys=True),
            "run_id": run_id,
            "data_fingerprint": data_fingerprint,
            "code_fingerprint": code_fingerprint,
            "builder": builder_path(builder),
            "signature": None if signature is None else json.dumps(dict(signature)),
            "description": description,
            "created_at": time.time(),
            "created_by": who(),
        }

        def insert(c: sqlite3.Connection) -> int:
            last = c.execute(
                "SELECT max(version) FROM model_versions WHERE name = ?", (name,)
            ).fetchone()[0]
            version = int(last or 0) + 1
            c.execute(
                f"INSERT INTO model_versions ({VERSION_COLUMNS}) VALUES "
                "(:name, :version, :format, :artifact, :size, :metrics, :run_id, "
                ":data_fingerprint, :code_fingerprint, :builder, :signature, :description, "
                ":created_at, :created_by)",
                {**row, "version": version},
            )
            if alias is not None:
                _move(c, name, alias, version, str(row["created_by"]), reason)
            return version

        version = self._write(insert)
        return self.get(f"{name}:{version}")

    def alias(
        self, name: str, alias: str, version: int, *, reason: str = "", by: str | None = None
    ) -> AliasMove:
        """Point ``name@alias`` at ``version`` (creating the alias or moving it) and
        record the move: who (``by``, default the user), when, from which version, why."""
        check_name(name, "model name")
        check_alias(alias)

        def move(c: sqlite3.Connection) -> AliasMove:
            exists = c.execute(
                "SELECT 1 FROM model_versions WHERE name = ? AND version = ?", (name, version)
            ).fetchone()
            if exists is None:
                raise ModelNotFoundError(
                    f"model {name!r} has no version {version}; {_known_versions(c, name)}"
                )
            return _move(c, name, alias, int(version), by or who(), reason)

        result: AliasMove = self._write(move)
        return result

    # --- reading ------------------------------------------------------------------------

    def resolve(self, ref: str | ModelRef) -> ModelVersion:
        """The version ``ref`` names now (``name``: the latest; ``name:3``; ``name@alias``)."""
        parsed = parse_ref(ref)

        def find(c: sqlite3.Connection) -> ModelVersion:
            version = parsed.version
            if parsed.alias is not None:
                row = c.execute(
                    "SELECT version FROM model_aliases WHERE name = ? AND alias = ?",
                    (parsed.name, parsed.alias),
                ).fetchone()
                if row is None:
                    raise ModelNotFoundError(
                        f"model {parsed.name!r} has no alias {parsed.alias!r}; "
                        f"{_known_aliases(c, parsed.name)}"
                    )
                version = int(row[0])
            if version is None:
                row = c.execute(
                    "SELECT max(version) FROM model_versions WHERE name = ?", (parsed.name,)
                ).fetchone()
                version = row[0]
            found = c.execute(
                f"SELECT {VERSION_COLUMNS} FROM model_versions WHERE name = ? AND version = ?",
                (parsed.name, version),
            ).fetchone()
            if found is None:
                raise ModelNotFoundError(
                    f"no model {str(parsed)!r} in the registry of {self.path}; "
                    f"{_known_versions(c, parsed.name)}"
                )
            return version_from_row(found, _aliases_of(c, parsed.name, int(found[1])))

        result: ModelVersion = self._read(find)
        return result

    get = resolve

    def load(
        self,
        ref: str | ModelRef | ModelVersion,
        *,
        builder: Callable[[], Any] | None = None,
        trust_pickle: bool = False,
        trusted_types: list[str] | None = None,
    ) -> Any:
        """The model that ``ref`` names, read from its checked artifact (see
        :mod:`conveyor.models._formats` for what each format gives back). A pickle
        needs ``trust_pickle=True``; torch weights go into ``builder()`` (default: the
        builder recorded at registration, if any)."""
        version = ref if isinstance(ref, ModelVersion) else self.resolve(ref)
        data = _blobs.get_blob(self._blobs, version.artifact, what=f"model {version.ref}")
        if builder is None and version.builder is not None:
            builder = import_builder(version.builder)
        return _formats.load_bytes(
            data,
            version.format,
            what=f"model {version.ref}",
            builder=builder,
            trust_pickle=trust_pickle,
            trusted_types=trusted_types,
        )

    def versions(self, name: str) -> list[ModelVersion]:
        """Every version of ``name``, oldest first."""

        def query(c: sqlite3.Connection) -> list[ModelVersion]:
            rows = c.execute(
                f"SELECT {VERSION_COLUMNS} FROM model_versions WHERE name = ? ORDER BY version",
                (name,),
            ).fetchall()
            return [version_from_row(r, _aliases_of(c, name, int(r[1]))) for r in rows]

        result: list[ModelVersion] = self._read(query)
        return result

    def models(self) -> list[ModelVersion]:
        """The latest version of every model, by name."""

        def query(c: sqlite3.Connection) -> list[ModelVersion]:
            rows = c.execute(
                f"SELECT {VERSION_COLUMNS} FROM model_versions AS v WHERE version = "
                "(SELECT max(version) FROM model_versions WHERE name = v.name) ORDER BY name"
            ).fetchall()
            return [version_from_row(r, _aliases_of(c, r[0], int(r[1]))) for r in rows]

        result: list[ModelVersion] = self._read(query)
        return result

    def aliases(self, name: str) -> dict[str, int]:
        """Where each alias of ``name`` points now."""
        rows = self._read(
            lambda c: c.execute(
                "SELECT alias, version FROM model_aliases WHERE name = ? ORDER BY alias", (name,)
            ).fetchall()
        )
        return {str(a): int(v) for a, v in rows}

    def history(self, name: str, alias: str | None = None) -> list[AliasMove]:
        """Every move of ``name``'s aliases (or of one alias), oldest first."""
        sql = (
            "SELECT name, alias, from_version, to_version, moved_at, moved_by, reason "
            "FROM alias_moves WHERE name = ?"
        )
        params: tuple[Any, ...] = (name,)
        if alias is not None:
            sql, params = sql + " AND alias = ?", (name, alias)
        rows = self._read(lambda c: c.execute(sql + " ORDER BY id", params).fetchall())
        return [
            AliasMove(
                r[0], r[1], None if r[2] is None else int(r[2]), int(r[3]), float(r[4]), r[5], r[6]
            )
            for r in rows
        ]

    def __repr__(self) -> str:
        return f"<ModelRegistry {self.path}>"


def _move(
    c: sqlite3.Connection, name: str, alias: str, version: int, by: str, reason: str
) -> AliasMove:
    row = c.execute(
        "SELECT version FROM model_aliases WHERE name = ? AND alias = ?", (name, alias)
    ).fetchone()
    before = None if row is None else int(row[0])
    now = time.time()
    c.execute(
        "INSERT INTO model_aliases (name, alias, version, moved_at) VALUES (?, ?, ?, ?) "
        "ON CONFLICT (name, alias) DO UPDATE SET version = excluded.version, "
        "moved_at = excluded.moved_at",
        (name, alias, version, now),
    )
    c.execute(
        "INSERT INTO alias_moves (name, alias, from_version, to_version, moved_at, moved_by, "
        "reason) VALUES (?, ?, ?, ?, ?, ?, ?)",
        (name, alias, before, version, now, by, reason),
    )
    return AliasMove(name, alias, before, version, now, by, reason)


def _aliases_of(c: sqlite3.Connection, name: str, version: int) -> tuple[str, ...]:
    rows = c.execute(
        "SELECT alias FROM model_aliases WHERE name = ? AND version = ? ORDER BY alias",
        (name, version),
    ).fetchall()
    return tuple(r[0] for r in rows)


def _known_versions(c: sqlite3.Connection, name: str) -> str:
    rows = c.execute(
        "SELECT version FROM model_versions WHERE name = ? ORDER BY version", (name,)
    ).fetchall()
    if rows:
        return f"its versions are {', '.join(str(r[0]) for r in rows)}"
    names = [r[0] for r in c.execute("SELECT DISTINCT name FROM model_versions ORDER BY name")]
    return (
        f"the models registered are {', '.join(names)}"
        if names
        else "no model is registered (conveyor.models.register)"
    )


def _known_aliases(c: sqlite3.Connection, name: str) -> str:
    rows = c.execute(
        "SELECT alias, version FROM model_aliases WHERE name = ? ORDER BY alias", (name,)
    ).fetchall()
    if rows:
        return "its aliases are " + ", ".join(f"{a} (version {v})" for a, v in rows)
    return _known_versions(c, name) + "; it has no alias yet (conveyor models alias)"


def _code_fingerprint(builder: Callable[[], Any]) -> str | None:
    import hashlib
    import inspect

    try:
        source = inspect.getsource(builder)
    except (OSError, TypeError):
        return None
    return hashlib.sha256(source.encode()).hexdigest()

"""The model registry: each format round trip, aliases and their history, safety."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import conveyor as cv
from conveyor.cli import cli
from conveyor.models import ModelError, ModelNotFoundError, ModelRegistry, UnsafeModelError
from modelfns import Evil, Tiny

torch = pytest.importorskip("torch")


@pytest.fixture
def registry(tmp_path: Path):  # type: ignore[no-untyped-def]
    with ModelRegistry(tmp_path / "runs.db") as r:
        yield r


def _same_weights(a, b) -> bool:  # type: ignore[no-untyped-def]
    return all(torch.equal(a.state_dict()[k], b.state_dict()[k]) for k in a.state_dict())


@pytest.mark.parametrize("fmt", ["safetensors", "torch"])
def test_torch_weights_round_trip_into_the_recorded_builder(registry, fmt: str) -> None:
    net = Tiny()
    v = registry.register("tiny", net, format=fmt, builder=Tiny, metrics={"loss": 0.25})
    assert (v.version, v.format, v.builder, v.metrics) == (1, fmt, "modelfns:Tiny", {"loss": 0.25})
    assert v.code_fingerprint and len(v.artifact) == 64
    loaded = registry.load("tiny:1")
    assert isinstance(loaded, torch.nn.Linear) and _same_weights(net, loaded)
    assert not loaded.training  # eval mode, ready to serve
    state = registry.load("tiny:1", builder=None) if v.builder is None else None
    assert state is None


def test_torch_format_loads_with_weights_only(registry, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    seen = {}
    real = torch.load

    def spy(*args, **kwargs):  # type: ignore[no-untyped-def]
        seen.update(kwargs)
        return real(*args, **kwargs)

    registry.register("tiny", Tiny(), format="torch")
    monkeypatch.setattr(torch, "load", spy)
    state = registry.load("tiny")
    assert seen["weights_only"] is True and set(state) == {"weight", "bias"}


def test_a_torch_file_holding_code_is_refused_by_weights_only(registry, tmp_path: Path) -> None:
    import io

    from conveyor.models import _blobs

    buffer = io.BytesIO()
    torch.save({"weight": Evil()}, buffer)
    v = registry.register("tiny", Tiny(), format="torch")
    # Swap in a crafted artifact under the same name: a file that runs code on load.
    path = _blobs.blob_path(_blobs.blob_root(registry.path), v.artifact)
    path.write_bytes(buffer.getvalue())
    with pytest.raises(ModelError, match="damaged"):
        registry.load("tiny")  # the checksum catches it before torch ever reads it


def test_scikit_learn_round_trips_through_skops(registry) -> None:
    from sklearn.linear_model import LogisticRegression

    x = np.random.default_rng(0).normal(size=(40, 4))
    est = LogisticRegression().fit(x, (x[:, 0] > 0).astype(int))
    registry.register("clf", est, signature={"shape": [4], "dtype": "float32"})
    loaded = registry.load("clf")
    assert registry.get("clf").format == "skops"
    assert (loaded.predict(x) == est.predict(x)).all()


def test_onnx_round_trips_to_a_session(registry) -> None:
    from onnx import TensorProto, helper

    w = helper.make_tensor("w", TensorProto.FLOAT, [4, 2], [1.0] * 8)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 2])],
        [w],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    registry.register("mm", model)
    session = registry.load("mm")
    (y,) = session.run(None, {"x": np.ones((3, 4), dtype=np.float32)})
    assert y.tolist() == [[4.0, 4.0]] * 3


def test_a_pickle_is_refused_unless_trusted_and_never_runs_before(
    registry, tmp_path, monkeypatch
) -> None:  # type: ignore[no-untyped-def]
    mark = tmp_path / "evil-ran"
    monkeypatch.setenv("EVIL_MARK", str(mark))
    registry.register("evil", Evil(), format="pickle")
    with pytest.raises(UnsafeModelError, match="trust_pickle=True"):
        registry.load("evil")
    assert not mark.exists()
    registry.load("evil", trust_pickle=True)  # the caller said so: it runs
    assert mark.exists()


def test_an_object_with_no_safe_format_needs_an_explicit_pickle(registry) -> None:
    with pytest.raises(ModelError, match="format='pickle'"):
        registry.register("odd", {"a": 1})


def test_aliases_move_and_keep_their_whole_history(registry) -> None:
    for _ in range(3):
        registry.register("tiny", Tiny())
    registry.alias("tiny", "champion", 1, reason="first", by="ana")
    registry.alias("tiny", "champion", 3, reason="better recall", by="bo")
    registry.alias("tiny", "challenger", 2)
    assert registry.resolve("tiny@champion").version == 3
    assert registry.resolve("tiny").version == 3 and registry.resolve("tiny:2").aliases == (
        "challenger",
    )
    moves = registry.history("tiny", "champion")
    assert [(m.from_version, m.to_version, m.moved_by, m.reason) for m in moves] == [
        (None, 1, "ana", "first"),
        (1, 3, "bo", "better recall"),
    ]
    assert moves[0].moved_at <= moves[1].moved_at
    assert registry.aliases("tiny") == {"challenger": 2, "champion": 3}


@pytest.mark.parametrize(
    ("ref", "message"),
    [
        ("tiny@nope", "no alias 'nope'; its aliases are champion"),
        ("tiny:9", "its versions are 1"),
        ("other", "the models registered are tiny"),
        ("tiny:0", "whole number from 1"),
        ("bad name", "not valid"),
        ("tiny@42", "reads as a version"),
    ],
)
def test_a_bad_reference_names_what_there_is(registry, ref: str, message: str) -> None:
    registry.register("tiny", Tiny(), alias="champion")
    with pytest.raises(ModelError, match=message):
        registry.load(ref)


def test_moving_an_alias_to_a_missing_version_changes_nothing(registry) -> None:
    registry.register("tiny", Tiny(), alias="champion")
    with pytest.raises(ModelNotFoundError, match="no version 5"):
        registry.alias("tiny", "champion", 5)
    assert len(registry.history("tiny")) == 1


def test_a_damaged_or_missing_artifact_is_an_error_naming_it(registry) -> None:
    from conveyor.models import _blobs

    v = registry.register("tiny", Tiny())
    path = _blobs.blob_path(_blobs.blob_root(registry.path), v.artifact)
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ModelError, match="damaged"):
        registry.load("tiny")
    path.unlink()
    with pytest.raises(ModelError, match="missing"):
        registry.load("tiny")


def test_the_same_bytes_are_stored_once(registry) -> None:
    net = Tiny()
    a, b = registry.register("a", net), registry.register("b", net)
    assert a.artifact == b.artifact
    files = list(registry.path.parent.joinpath("models", "blobs").rglob("*"))
    assert len([f for f in files if f.is_file()]) == 1


def test_the_registry_shares_the_run_store_file(tmp_path: Path) -> None:
    with ModelRegistry(tmp_path / "runs.db") as r:
        r.register("tiny", Tiny())
    from conveyor.store import RunStore

    store = RunStore(tmp_path / "runs.db")
    try:
        assert store.check().ok
    finally:
        store.close()


def test_the_module_functions_use_the_default_store(private_store_and_cache: Path) -> None:
    v = cv.models.register("tiny", Tiny(), alias="champion", builder=Tiny)
    assert (private_store_and_cache / "runs.db").exists()
    start = time.perf_counter()
    net = cv.models.load("tiny@champion")
    assert isinstance(net, torch.nn.Linear) and cv.models.get("tiny@champion") == v
    assert time.perf_counter() - start < 5  # generous; the 50 ms figure is a benchmark's
    cv.models.alias("tiny", "champion", 1, reason="again")
    assert [m.reason for m in cv.models.history("tiny")] == ["registered", "again"]


def test_the_cli_lists_shows_moves_and_tells_history(private_store_and_cache: Path) -> None:
    cv.models.register("tiny", Tiny(), metrics={"accuracy": 0.9}, run_id="7f3a", alias="champion")
    cv.models.register("tiny", Tiny())
    runner = CliRunner()
    out = runner.invoke(cli, ["models", "ls"])
    assert out.exit_code == 0 and "tiny" in out.output and "champion→1" in out.output
    out = runner.invoke(cli, ["models", "show", "tiny@champion"])
    assert out.exit_code == 0 and "accuracy=0.9" in out.output and "7f3a" in out.output
    out = runner.invoke(cli, ["models", "alias", "tiny", "champion", "2", "--reason", "newer"])
    assert out.exit_code == 0 and "was 1" in out.output
    out = runner.invoke(cli, ["models", "history", "tiny"])
    assert out.exit_code == 0 and "newer" in out.output and "1 → 2" in out.output
    out = runner.invoke(cli, ["models", "show", "tiny@nope"])
    assert (
        out.exit_code == 2 and "error: " in out.output and "its aliases are champion" in out.output
    )
    out = runner.invoke(cli, ["models", "ls", "--json"])
    assert json.loads(out.output.splitlines()[0])["aliases"] == {"champion": 2}

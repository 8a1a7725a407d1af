"""How each artifact format is written and read: weights-only and safe by default.

==============  ==========================================  ========================
format          what is stored                              read back as
==============  ==========================================  ========================
safetensors     a torch module's ``state_dict`` (or a dict  the module (given a
                of tensors), by safetensors                 ``builder``) or the dict
torch           the same, by ``torch.save``; read with      the same
                ``torch.load(weights_only=True)``
skops           a scikit-learn estimator, by skops          the estimator (only
                                                            trusted types)
onnx            an ONNX model's bytes                       an onnxruntime session
                                                            (else the bytes)
pickle          anything, by cloudpickle                    only with trust_pickle
==============  ==========================================  ========================

None of the safe formats can run code on load. A pickle can, so reading one needs
``trust_pickle=True`` and says why otherwise. Each format's library is imported
when it is used; a missing one is one line saying what to install.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import Any

from conveyor.errors import ModelError, UnsafeModelError

FORMATS = ("safetensors", "torch", "skops", "onnx", "pickle")
SERVE_HINT = "pip install 'conveyor[serve]'"


def _need(module: str, package: str) -> Any:
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise ModelError(
            f"this model format needs {package}, which is not installed: {SERVE_HINT} "
            f"(or pip install {package})"
        ) from None


def guess_format(model: Any) -> str:
    """The safe format for ``model``, by its type; a type with no safe format is an
    error that says to pass ``format="pickle"`` (and trust it to load)."""
    kind = f"{type(model).__module__}.{type(model).__qualname__}"
    if kind.startswith("torch.") or _is_torch_module(model) or _is_tensor_dict(model):
        return "safetensors"
    if kind.startswith("sklearn.") or hasattr(model, "_get_param_names"):
        return "skops"
    if kind.startswith("onnx.") or isinstance(model, (bytes, bytearray)):
        return "onnx"
    raise ModelError(
        f"no safe format holds a {kind}: register a torch module or state_dict, a "
        "scikit-learn estimator or an ONNX model, or pass format='pickle' (loading it "
        "will then need trust_pickle=True)"
    )


def _is_torch_module(model: Any) -> bool:
    return any(c.__module__.startswith("torch.nn") for c in type(model).__mro__)


def _is_tensor_dict(model: Any) -> bool:
    return (
        isinstance(model, dict)
        and bool(model)
        and all(type(v).__module__.startswith("torch") for v in model.values())
    )


def _state_dict(model: Any) -> dict[str, Any]:
    if _is_torch_module(model):
        return {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    if _is_tensor_dict(model):
        return {k: v.detach().cpu().contiguous() for k, v in model.items()}
    raise ModelError(
        f"format 'safetensors' and 'torch' hold a torch module or a dict of tensors, "
        f"not a {type(model).__name__}"
    )


def dump(model: Any, fmt: str) -> bytes:
    """The bytes of ``model`` in format ``fmt``."""
    if fmt == "safetensors":
        st = _need("safetensors.torch", "safetensors")
        return bytes(st.save(_state_dict(model)))
    if fmt == "torch":
        torch = _need("torch", "torch")
        buffer = io.BytesIO()
        torch.save(_state_dict(model), buffer)
        return buffer.getvalue()
    if fmt == "skops":
        sio = _need("skops.io", "skops")
        return bytes(sio.dumps(model))
    if fmt == "onnx":
        if isinstance(model, (bytes, bytearray)):
            return bytes(model)
        if hasattr(model, "SerializeToString"):
            return bytes(model.SerializeToString())
        raise ModelError(
            f"format 'onnx' holds an onnx.ModelProto or its bytes, not a {type(model).__name__}"
        )
    if fmt == "pickle":
        import cloudpickle

        return bytes(cloudpickle.dumps(model))
    raise ModelError(f"unknown model format {fmt!r}; the formats are {', '.join(FORMATS)}")


def load_bytes(
    data: bytes,
    fmt: str,
    *,
    what: str,
    builder: Callable[[], Any] | None = None,
    trust_pickle: bool = False,
    trusted_types: list[str] | None = None,
) -> Any:
    """Read back what :func:`dump` wrote. ``builder`` makes the torch module the
    weights go into (without one, the state dict is returned)."""
    if fmt in ("safetensors", "torch"):
        if fmt == "safetensors":
            state = _need("safetensors.torch", "safetensors").load(data)
        else:
            torch = _need("torch", "torch")
            state = torch.load(io.BytesIO(data), weights_only=True, map_location="cpu")
        if builder is None:
            return state
        module = builder()
        module.load_state_dict(state)
        module.eval()
        return module
    if fmt == "skops":
        sio = _need("skops.io", "skops")
        untrusted = [
            t for t in sio.get_untrusted_types(data=data) if t not in (trusted_types or [])
        ]
        if untrusted:
            raise UnsafeModelError(
                f"{what}: the skops file holds types skops does not trust by default "
                f"({', '.join(untrusted)}); if you trust them, pass "
                f"trusted_types={untrusted!r}"
            )
        return sio.loads(data, trusted=trusted_types or None)
    if fmt == "onnx":
        try:
            import onnxruntime
        except ImportError:
            return data  # the bytes: any ONNX runtime can read them
        return onnxruntime.InferenceSession(data, providers=["CPUExecutionProvider"])
    if fmt == "pickle":
        if not trust_pickle:
            raise UnsafeModelError(
                f"{what} is a pickle: loading it runs whatever code its author put in it; "
                "load it only if you trust where it came from, with trust_pickle=True "
                "(conveyor serve --trust-pickle), or register it again in a safe format "
                "(safetensors, skops, onnx)"
            )
        import pickle

        return pickle.loads(data)
    raise ModelError(f"{what}: unknown model format {fmt!r}; the formats are {', '.join(FORMATS)}")

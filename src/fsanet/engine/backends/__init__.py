"""Backends behind one runner interface. Each is imported only when asked for."""

from __future__ import annotations

import importlib

from fsanet.core.errors import FsanetError
from fsanet.engine.backends.base import Runner, check_images

# name -> (module, class, pip package that provides it)
_BACKENDS: dict[str, tuple[str, str, str]] = {
    "onnxruntime": ("fsanet.engine.backends.onnxruntime", "OnnxRuntimeRunner", "onnxruntime"),
    "openvino": ("fsanet.engine.backends.openvino", "OpenVinoRunner", "fsanet[openvino]"),
    "tensorflow": ("fsanet.engine.backends.tensorflow", "TensorflowRunner", "fsanet[build]"),
}
ENGINE_BACKENDS = ("onnxruntime", "openvino")  # backends an artifact can be built for


def runner_class(backend: str) -> type[Runner]:
    if backend not in _BACKENDS:
        raise FsanetError(f"unknown backend '{backend}': choose one of {', '.join(_BACKENDS)}")
    module, cls, package = _BACKENDS[backend]
    try:
        return getattr(importlib.import_module(module), cls)
    except ImportError as e:
        raise FsanetError(
            f"backend '{backend}' is not installed ({e.name} missing): pip install '{package}'"
        ) from e


__all__ = ["ENGINE_BACKENDS", "Runner", "check_images", "runner_class"]

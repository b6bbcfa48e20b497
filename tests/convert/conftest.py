"""Running ONNX graphs exactly as written: the reference for the graph-pass tests."""

from collections.abc import Callable

import numpy as np
import onnx
import onnxruntime as ort
import pytest


def _run(model: onnx.ModelProto, x: np.ndarray) -> list[np.ndarray]:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(
        model.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )
    return session.run(None, {session.get_inputs()[0].name: x})


@pytest.fixture
def run_onnx() -> Callable[[onnx.ModelProto, np.ndarray], list[np.ndarray]]:
    """model, input -> every output, with ONNX Runtime's own graph optimisations off."""
    return _run

"""A tiny stand-in for an FSA-Net engine, built here: pose = per-channel mean of the crop."""

from collections.abc import Callable

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper


def _channel_mean(batch: int | str) -> onnx.ModelProto:
    graph = helper.make_graph(
        [helper.make_node("ReduceMean", ["x", "axes"], ["pose"], keepdims=0)],
        "channel_mean",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 64, 64, 3])],
        [helper.make_tensor_value_info("pose", TensorProto.FLOAT, [batch, 3])],
        [helper.make_tensor("axes", TensorProto.INT64, [2], [1, 2])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    onnx.checker.check_model(model)
    return model


@pytest.fixture
def channel_mean() -> Callable[[int | str], onnx.ModelProto]:
    """The model for a batch dimension: an int (fixed) or a name (dynamic)."""
    return _channel_mean


@pytest.fixture
def crops() -> Callable[[int], np.ndarray]:
    def make(n: int) -> np.ndarray:
        return np.random.default_rng(n).uniform(0, 255, (n, 64, 64, 3)).astype(np.float32)

    return make

"""The layout passes keep the numbers: tiny graphs built here, and the real fused engine."""

import collections

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from fsanet.convert.layout import fuse_input_separable, layout_passes, stack_variants
from fsanet.convert.passes import fuse_variants

F = TensorProto.FLOAT


def _assert_close(actual: np.ndarray, expected: np.ndarray) -> None:
    """Equal up to fp32 rounding, relative to the outputs' scale (sums of 0-255 pixels)."""
    np.testing.assert_allclose(actual, expected, rtol=0, atol=1e-5 * np.abs(expected).max())


def _ops(model: onnx.ModelProto) -> collections.Counter:
    return collections.Counter(n.op_type for n in model.graph.node)


def _copy(model: onnx.ModelProto) -> onnx.ModelProto:
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    return copy


def _backbone(seed: int, pool: str = "MaxPool") -> onnx.ModelProto:
    """A small FSA-Net-like variant: NHWC image -> separable conv -> BN -> ReLU -> pool, a
    second branch with Tanh, their product, then a head on the flattened features."""
    rng = np.random.default_rng(seed)

    def param(name: str, *shape: int, low: float = -1.0) -> onnx.TensorProto:
        return numpy_helper.from_array(rng.uniform(low, 1, shape).astype(np.float32), name)

    nodes = [
        helper.make_node("Transpose", ["x"], ["nchw"], perm=[0, 3, 1, 2]),
        helper.make_node("Conv", ["nchw", "dw"], ["d"], group=3, kernel_shape=[3, 3], pads=[1] * 4),
        helper.make_node("Conv", ["d", "pw", "pb"], ["c"]),
        helper.make_node("BatchNormalization", ["c", "s", "b", "m", "v"], ["n"]),
        helper.make_node("Relu", ["n"], ["r"]),
        helper.make_node(pool, ["r"], ["p"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Conv", ["p", "dw2"], ["d2"], group=8, kernel_shape=[3, 3], pads=[1] * 4),
        helper.make_node("Conv", ["d2", "pw2"], ["c2"]),
        helper.make_node("Tanh", ["c2"], ["t"]),
        helper.make_node("Mul", ["p", "t"], ["both"]),
        helper.make_node("Flatten", ["both"], ["flat"]),
        helper.make_node("MatMul", ["flat", "head"], ["pose"]),
    ]
    params = [
        param("dw", 3, 1, 3, 3),
        param("pw", 8, 3, 1, 1),
        param("pb", 8),
        param("s", 8),
        param("b", 8),
        param("m", 8),
        param("v", 8, low=0.5),
        param("dw2", 8, 1, 3, 3),
        param("pw2", 8, 8, 1, 1),
        param("head", 8 * 4 * 4, 3),
    ]
    graph = helper.make_graph(
        nodes,
        f"variant{seed}",
        [helper.make_tensor_value_info("x", F, ["N", 8, 8, 3])],
        [helper.make_tensor_value_info("pose", F, ["N", 3])],
        params,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.fixture
def image() -> np.ndarray:
    return np.random.default_rng(7).uniform(0, 255, (5, 8, 8, 3)).astype(np.float32)


def test_the_separable_stem_becomes_one_dense_conv(run_onnx, image):
    model = _backbone(0)
    after = fuse_input_separable(_copy(model))
    # Only the stem (3 input channels); the 8-channel separable conv stays as it is.
    assert _ops(after)["Conv"] == _ops(model)["Conv"] - 1
    assert [n.op_type for n in after.graph.node][:2] == ["Transpose", "Conv"]
    _assert_close(run_onnx(after, image)[0], run_onnx(model, image)[0])


def test_a_depthwise_conv_read_twice_is_left_alone(image):
    model = _backbone(0)
    extra = helper.make_node("Relu", ["d"], ["d_relu"])
    model.graph.node.insert(2, extra)
    model.graph.output.append(helper.make_tensor_value_info("d_relu", F, None))
    after = fuse_input_separable(_copy(model))
    assert _ops(after)["Conv"] == _ops(model)["Conv"]


def test_a_depth_multiplier_and_a_depthwise_bias_are_folded(run_onnx, image):
    model = _backbone(0)
    rng = np.random.default_rng(1)
    graph = model.graph
    # Two outputs per input channel and a bias: dw [6, 1, 3, 3], pw [8, 6, 1, 1].
    for init in graph.initializer:
        if init.name == "dw":
            init.CopyFrom(
                numpy_helper.from_array(rng.uniform(-1, 1, (6, 1, 3, 3)).astype(np.float32), "dw")
            )
        if init.name == "pw":
            init.CopyFrom(
                numpy_helper.from_array(rng.uniform(-1, 1, (8, 6, 1, 1)).astype(np.float32), "pw")
            )
    graph.initializer.append(
        numpy_helper.from_array(rng.uniform(-1, 1, 6).astype(np.float32), "db")
    )
    graph.node[1].input.append("db")
    after = fuse_input_separable(_copy(model))
    assert _ops(after)["Conv"] == _ops(model)["Conv"] - 1
    _assert_close(run_onnx(after, image)[0], run_onnx(model, image)[0])


def _fused(*models: onnx.ModelProto) -> onnx.ModelProto:
    return fuse_variants({f"v{i}": m for i, m in enumerate(models)}, "fusion")


def test_matching_variants_run_stacked(run_onnx, image):
    fused = _fused(_backbone(0), _backbone(1), _backbone(2))
    before = run_onnx(fused, image)
    after = stack_variants(_copy(fused))
    ops = _ops(after)
    # Everything up to the head runs once, three times as wide; the heads stay apart.
    assert ops["Conv"] == 4 and ops["BatchNormalization"] == 1 and ops["Transpose"] == 1
    assert ops["MatMul"] == 3 and ops["Split"] == 1
    grouped = {
        helper.get_attribute_value(a)
        for n in after.graph.node
        if n.op_type == "Conv"
        for a in n.attribute
        if a.name == "group"
    }
    assert grouped == {9, 3, 24}
    for a, b in zip(run_onnx(after, image), before, strict=True):
        _assert_close(a, b)


def test_stacking_stops_where_variants_differ(run_onnx, image):
    fused = _fused(_backbone(0), _backbone(1, pool="AveragePool"))
    before = run_onnx(fused, image)
    after = stack_variants(_copy(fused))
    ops = _ops(after)
    # The stem, BN and ReLU are stacked; from the pools on, each variant has its own ops.
    assert ops["BatchNormalization"] == 1 and ops["Conv"] == 2 + 2 * 2
    assert ops["MaxPool"] == 1 and ops["AveragePool"] == 1
    for a, b in zip(run_onnx(after, image), before, strict=True):
        _assert_close(a, b)


def test_a_single_model_is_left_alone():
    model = _backbone(0)
    assert _ops(stack_variants(_copy(model))) == _ops(model)


def test_layout_passes_are_asked_for():
    assert layout_passes("stacked", True) == ["fuse_input_separable", "stack_variants"]
    assert layout_passes("stacked", False) == ["fuse_input_separable"]
    assert layout_passes("plain", True) == []


def test_the_real_fused_engine_keeps_its_outputs(run_onnx, fusion_artifact, aflw2000):
    """Both passes on the default engine's graph: same angles on AFLW2000 crops, and the
    backbone's 105 convolutions run as 35 (the three variants stacked, the stems dense)."""
    model = onnx.load(fusion_artifact.path / fusion_artifact.manifest.models[0].file)
    images = aflw2000.images[:32].astype(np.float32)
    before = run_onnx(model, images)
    after = stack_variants(fuse_input_separable(_copy(model)))
    onnx.checker.check_model(after)
    assert _ops(model)["Conv"] == 105 and _ops(after)["Conv"] == 35
    for a, b in zip(run_onnx(after, images), before, strict=True):
        assert np.abs(a - b).max() < 1e-3

"""Each pass on its own keeps the numbers: tiny graphs built here, and the real FSA-Net graphs."""

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from fsanet.convert.passes import (
    PASSES,
    batch_capsule_map,
    drop_dead_nodes,
    fold_constants,
    fuse_variants,
)

F = TensorProto.FLOAT


def _const(name: str, value) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(value), name)


def _map_loop_model(counter_start: int = 0) -> onnx.ModelProto:
    """What tf2onnx makes of `map_fn(lambda x: batch_dot(x, W))`: X [N, 2, 4] -> [N, 2, 3].

    The body carries two counters and gathers sample `c2` each iteration."""
    rng = np.random.default_rng(0)
    body = helper.make_graph(
        [
            helper.make_node("Add", ["c1", "one"], ["c1_next"]),
            helper.make_node("Add", ["c2", "one"], ["c2_next"]),
            helper.make_node("Less", ["c1_next", "n"], ["keep_going"]),
            helper.make_node("Unsqueeze", ["c2", "axis0"], ["idx"]),
            helper.make_node("Gather", ["X", "idx"], ["picked"]),
            helper.make_node("Squeeze", ["picked", "axis0"], ["sample"]),
            helper.make_node("Reshape", ["sample", "row_shape"], ["rows"]),
            helper.make_node("MatMul", ["rows", "W"], ["prod"]),
            helper.make_node("Squeeze", ["prod", "axis1"], ["scan_out"]),
        ],
        "body",
        [
            helper.make_tensor_value_info("i", TensorProto.INT64, []),
            helper.make_tensor_value_info("cond", TensorProto.BOOL, []),
            helper.make_tensor_value_info("c1", TensorProto.INT64, []),
            helper.make_tensor_value_info("c2", TensorProto.INT64, []),
        ],
        [
            helper.make_tensor_value_info("keep_going", TensorProto.BOOL, []),
            helper.make_tensor_value_info("c1_next", TensorProto.INT64, []),
            helper.make_tensor_value_info("c2_next", TensorProto.INT64, []),
            helper.make_tensor_value_info("scan_out", F, [2, 3]),
        ],
        [
            _const("one", np.int64(1)),
            _const("axis0", np.array([0], np.int64)),
            _const("axis1", np.array([1], np.int64)),
            _const("row_shape", np.array([2, 1, 4], np.int64)),
            _const("W", rng.normal(size=(2, 4, 3)).astype(np.float32)),
        ],
    )
    graph = helper.make_graph(
        [
            helper.make_node("Shape", ["X"], ["shape"]),
            helper.make_node("Gather", ["shape", "zero"], ["n"], axis=0),
            helper.make_node("Greater", ["n", "zero"], ["start"]),
            helper.make_node(
                "Loop",
                ["max_trips", "start", "c0", "c0"],
                ["c1_final", "c2_final", "stacked"],
                body=body,
            ),
            helper.make_node("Relu", ["stacked"], ["Y"]),
        ],
        "map",
        [helper.make_tensor_value_info("X", F, ["N", 2, 4])],
        [helper.make_tensor_value_info("Y", F, ["N", 2, 3])],
        [
            _const("zero", np.int64(0)),
            _const("max_trips", np.int64(2**63 - 1)),
            _const("c0", np.int64(counter_start)),
        ],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_capsule_map_becomes_one_matmul(run_onnx):
    model = _map_loop_model()
    x = np.random.default_rng(1).normal(size=(5, 2, 4)).astype(np.float32)
    expected = run_onnx(model, x)[0]
    batched = drop_dead_nodes(batch_capsule_map(model))
    ops = [n.op_type for n in batched.graph.node]
    assert "Loop" not in ops and ops.count("MatMul") == 1
    np.testing.assert_allclose(run_onnx(batched, x)[0], expected, rtol=1e-5, atol=1e-6)


def test_a_loop_that_is_not_a_plain_map_is_left_alone():
    model = _map_loop_model(counter_start=1)  # gathers sample i + 1: not a map over the batch
    assert "Loop" in [n.op_type for n in batch_capsule_map(model).graph.node]


def test_fold_constants_computes_constant_nodes(run_onnx):
    graph = helper.make_graph(
        [
            helper.make_node("Mul", ["a", "b"], ["ab"]),
            helper.make_node("Add", ["x", "ab"], ["y"]),
        ],
        "fold",
        [helper.make_tensor_value_info("x", F, [3])],
        [helper.make_tensor_value_info("y", F, [3])],
        [_const("a", np.float32([1, 2, 3])), _const("b", np.float32([4, 5, 6]))],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    folded = fold_constants(model)
    assert [n.op_type for n in folded.graph.node] == ["Add"]
    assert {i.name for i in folded.graph.initializer} == {"ab"}  # a and b are dead now
    x = np.float32([1, 1, 1])
    np.testing.assert_array_equal(run_onnx(folded, x)[0], [5, 11, 19])


def test_drop_dead_nodes():
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"]), helper.make_node("Neg", ["x"], ["unused"])],
        "dead",
        [helper.make_tensor_value_info("x", F, [2])],
        [helper.make_tensor_value_info("y", F, [2])],
    )
    model = drop_dead_nodes(helper.make_model(graph))
    assert [n.op_type for n in model.graph.node] == ["Relu"]


def _tiny_variant(scale: float) -> onnx.ModelProto:
    graph = helper.make_graph(
        [helper.make_node("Mul", ["input", "k"], ["t"]), helper.make_node("Relu", ["t"], ["pose"])],
        "v",
        [helper.make_tensor_value_info("input", F, ["N", 3])],
        [helper.make_tensor_value_info("pose", F, ["N", 3])],
        [_const("k", np.float32([scale]))],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_fuse_variants_gives_each_output_and_the_mean(run_onnx):
    fused = fuse_variants({"a": _tiny_variant(1.0), "b": _tiny_variant(3.0)}, "fusion")
    assert [o.name for o in fused.graph.output] == ["a", "b", "fusion"]
    assert len(fused.graph.input) == 1
    x = np.float32([[1, 2, 3], [-1, 0, 2]])
    a, b, mean = run_onnx(fused, x)
    np.testing.assert_allclose(a, np.maximum(x, 0))
    np.testing.assert_allclose(b, np.maximum(3 * x, 0))
    np.testing.assert_allclose(mean, (a + b) / 2)


@pytest.fixture(scope="module")
def converted(shared):
    from fsanet.assets.fetch import fetch
    from fsanet.assets.zoo import VARIANTS
    from fsanet.convert import tf_to_onnx

    return {v.name: tf_to_onnx(fetch(v.file), v, 17, None) for v in VARIANTS.values()}


@pytest.mark.parametrize("name", list(PASSES))
def test_each_pass_keeps_fsanet_outputs(run_onnx, converted, aflw2000, name):
    images = aflw2000.images[:24].astype(np.float32)
    for variant, model in converted.items():
        before = run_onnx(model, images)[0]
        copy = onnx.ModelProto()
        copy.CopyFrom(model)
        after = run_onnx(PASSES[name](copy), images)[0]
        assert np.abs(after - before).max() < 1e-4, (variant, name)


def test_the_capsule_loop_is_gone_from_every_variant(converted):
    for model in converted.values():
        copy = onnx.ModelProto()
        copy.CopyFrom(model)
        assert "Loop" not in {n.op_type for n in batch_capsule_map(copy).graph.node}

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from fsanet.convert.onnx_precision import fp32_islands, quantize_int8, to_fp16
from fsanet.convert.precision import PRECISIONS, get_precision, int8_schemes
from fsanet.core.errors import FsanetError
from fsanet.core.machine import this_machine


@pytest.mark.parametrize(
    ("name", "canonical"),
    [
        ("force_float32", "fp32"),
        ("force_float16", "fp16"),
        ("qint8_mixed_float16", "int8"),
        ("BF16", "bf16"),
        ("float32", "fp32"),
    ],
)
def test_spellings(name, canonical):
    assert get_precision(name).name == canonical


def test_backend_support_is_checked():
    with pytest.raises(FsanetError, match="bf16 is not available on onnxruntime: use openvino"):
        get_precision("bf16", "onnxruntime")
    with pytest.raises(FsanetError, match="unknown precision 'fp4'"):
        get_precision("fp4")


def _conv_model() -> onnx.ModelProto:
    """Conv -> squared sum (overflows fp16 for 0-255 inputs) -> Sqrt: a tiny "squash"."""
    rng = np.random.default_rng(0)
    weight = (0.05 * rng.normal(size=(8, 3, 3, 3))).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1], name="conv"),
            helper.make_node("Mul", ["c", "c"], ["sq"], name="square"),
            helper.make_node("ReduceSum", ["sq"], ["s"], keepdims=0, name="sum"),
            helper.make_node("Sqrt", ["s"], ["y"], name="sqrt"),
        ],
        "squash",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(weight, "w")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})[0]


@pytest.fixture
def images() -> np.ndarray:
    return np.random.default_rng(1).uniform(0, 255, (6, 3, 8, 8)).astype(np.float32)


def test_islands_keep_light_and_out_of_range_ops_in_fp32(images):
    islands = set(fp32_islands(_conv_model(), images))
    # The square is light; the sum and the sqrt see values far past fp16's 65504.
    assert islands == {"square", "sum", "sqrt"}


def test_fp16_converts_the_conv_and_stays_finite(images):
    model = _conv_model()
    expected = _run(model, images)
    half = to_fp16(_conv_model(), images)
    weights = {i.name: i.data_type for i in half.graph.initializer}
    assert TensorProto.FLOAT16 in weights.values()
    assert half.graph.input[0].type.tensor_type.elem_type == TensorProto.FLOAT  # fp32 I/O
    got = _run(half, images)
    assert np.isfinite(got).all()
    np.testing.assert_allclose(got, expected, rtol=2e-3)


def test_int8_methods_calibrate_differently_and_stay_close(images):
    expected = _run(_conv_model(), images)
    scales = {}
    for method in ("minmax", "entropy", "percentile"):
        q = quantize_int8(_conv_model(), images, method)
        assert "QuantizeLinear" in {n.op_type for n in q.graph.node}
        np.testing.assert_allclose(_run(q, images), expected, rtol=0.05)
        scales[method] = sorted(
            float(numpy_helper.to_array(i))
            for i in q.graph.initializer
            if i.name.endswith("_scale") and not i.dims
        )
    assert scales["minmax"] != scales["entropy"] and scales["minmax"] != scales["percentile"]


def test_int8_unknown_method(images):
    with pytest.raises(FsanetError, match="unknown calibration method 'kl'"):
        quantize_int8(_conv_model(), images, "kl")


def test_registry_hints_are_what_the_openvino_runner_sets():
    # The runner (a layer below) maps labels to OpenVINO's hint on its own; they must agree.
    pytest.importorskip("openvino")
    from fsanet.engine.backends.base import EXECUTED_PRECISIONS
    from fsanet.engine.backends.openvino import _HINTS

    for precision in PRECISIONS.values():
        if "openvino" in precision.backends:
            assert EXECUTED_PRECISIONS[_HINTS[precision.name]] == precision.hint, precision.name


@pytest.mark.parametrize(
    ("name", "executed", "ok"),
    [
        ("fp32", {"precision": "fp32"}, True),
        ("bf16", {"precision": "bf16", "inference_precision": "bf16"}, True),
        ("bf16", {"precision": "bf16", "inference_precision": "fp32"}, False),
        ("bf16", {"precision": "fp32", "inference_precision": "fp32"}, False),
        ("int8", {"precision": "int8", "inference_precision": "fp32"}, True),
        ("int8", {"precision": "int8", "inference_precision": None}, True),
        ("fp16", {"precision": "fp32"}, False),
    ],
)
def test_what_running_as_labelled_means(name, executed, ok):
    assert PRECISIONS[name].ran_as_labelled(executed) is ok


def test_only_int8_tries_settings():
    machine = this_machine()
    assert PRECISIONS["fp32"].attempts("onnxruntime", machine, "u8u8") == [None]
    assert PRECISIONS["int8"].attempts("onnxruntime", machine, "u8u8") == ["u8u8"]
    assert PRECISIONS["int8"].attempts("openvino", machine) == ["performance", "mixed"]
    assert PRECISIONS["int8"].attempts("onnxruntime", machine) == int8_schemes(
        "onnxruntime", machine
    )

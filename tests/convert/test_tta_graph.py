"""The flip pass on small synthetic graphs: what it computes, its shapes, its refusals."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import helper, numpy_helper

from fsanet.convert.tta_graph import add_flip
from fsanet.core.errors import BuildError
from fsanet.engine.tta import MIRROR_SIGNS, flip_average, view_name

H, W, C = 4, 5, 3
RNG = np.random.default_rng(7)
WEIGHTS = RNG.normal(size=(H * W * C, 3)).astype(np.float32)


def _linear(batch: int | None, outputs: tuple[str, ...] = ("pose",)) -> onnx.ModelProto:
    """angles = flatten(x) @ W (different W per output): mirroring changes the result."""
    nodes, inits = [], [numpy_helper.from_array(np.array([-1, H * W * C], np.int64), "shape")]
    nodes.append(helper.make_node("Reshape", ["x", "shape"], ["flat"]))
    for k, name in enumerate(outputs):
        inits.append(numpy_helper.from_array(WEIGHTS * (k + 1), f"w{k}"))
        nodes.append(helper.make_node("MatMul", ["flat", f"w{k}"], [name]))
    n = batch if batch is not None else "N"
    graph = helper.make_graph(
        nodes,
        "linear",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [n, H, W, C])],
        [helper.make_tensor_value_info(o, onnx.TensorProto.FLOAT, [n, 3]) for o in outputs],
        initializer=inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _run(model: onnx.ModelProto, x: np.ndarray) -> dict[str, np.ndarray]:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(None, {"x": x}), strict=True))


def _reference(x: np.ndarray, outputs: tuple[str, ...]) -> dict[str, np.ndarray]:
    def predict(images: np.ndarray) -> dict[str, np.ndarray]:
        flat = images.reshape(len(images), -1)
        return {name: flat @ (WEIGHTS * (k + 1)) for k, name in enumerate(outputs)}

    return flip_average(predict, x)


@pytest.mark.parametrize("batch", [1, 2, 7])
def test_dynamic_graph_averages_crop_and_mirror(batch):
    outputs = ("capsule", "fusion")
    x = RNG.uniform(0, 255, (batch, H, W, C)).astype(np.float32)
    ours = _run(add_flip(_linear(None, outputs)), x)
    theirs = _reference(x, outputs)
    assert (
        set(ours)
        == set(theirs)
        == {
            *outputs,
            *(view_name(o, v) for o in outputs for v in ("crop", "mirror")),
        }
    )
    for name in theirs:
        assert ours[name].shape == (batch, 3)
        np.testing.assert_allclose(ours[name], theirs[name], rtol=1e-5, atol=1e-3)
    # The crop view is the plain graph; the mirror differs, so the average moves.
    plain = _run(_linear(None, outputs), x)
    np.testing.assert_allclose(ours["fusion/crop"], plain["fusion"], rtol=1e-5, atol=1e-3)
    assert np.abs(ours["fusion"] - plain["fusion"]).max() > 1.0


def test_mirror_view_negates_yaw_and_roll_only():
    x = RNG.uniform(0, 255, (3, H, W, C)).astype(np.float32)
    ours = _run(add_flip(_linear(None)), x)
    raw_on_mirror = _run(_linear(None), np.ascontiguousarray(x[:, :, ::-1, :]))["pose"]
    np.testing.assert_allclose(ours["pose/mirror"], raw_on_mirror * MIRROR_SIGNS, atol=1e-3)
    assert MIRROR_SIGNS.tolist() == [-1.0, 1.0, -1.0]


def test_fixed_batch_graph_takes_half_its_batch():
    flipped = add_flip(_linear(6))
    dims = flipped.graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_value for d in dims] == [3, H, W, C]
    out = flipped.graph.output[0].type.tensor_type.shape.dim
    assert out[0].dim_value == 3
    x = RNG.uniform(0, 255, (3, H, W, C)).astype(np.float32)
    np.testing.assert_allclose(
        _run(flipped, x)["pose"], _reference(x, ("pose",))["pose"], atol=1e-3
    )


def test_refuses_what_it_cannot_wrap():
    with pytest.raises(BuildError, match="even batch"):
        add_flip(_linear(3))
    model = _linear(None)
    model.graph.input[0].type.tensor_type.shape.dim[2].ClearField("dim_value")
    with pytest.raises(BuildError, match="known width"):
        add_flip(model)
    model = _linear(None)
    model.graph.input.append(helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1]))
    with pytest.raises(BuildError, match="one input"):
        add_flip(model)

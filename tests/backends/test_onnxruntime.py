"""The ONNX Runtime runner on a tiny model built here: pose = per-channel mean of the crop."""

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from fsanet.backends.onnxruntime import OnnxRuntimeRunner
from fsanet.errors import ArtifactError, InputError


def _tiny_model(path: Path, batch: int | str) -> Path:
    graph = helper.make_graph(
        [helper.make_node("ReduceMean", ["x", "axes"], ["pose"], keepdims=0)],
        "channel_mean",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 64, 64, 3])],
        [helper.make_tensor_value_info("pose", TensorProto.FLOAT, [batch, 3])],
        [helper.make_tensor("axes", TensorProto.INT64, [2], [1, 2])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


def _crops(n: int) -> np.ndarray:
    return np.random.default_rng(n).uniform(0, 255, (n, 64, 64, 3)).astype(np.float32)


def test_dynamic_batch(tmp_path):
    with OnnxRuntimeRunner(_tiny_model(tmp_path / "m.onnx", "N"), "x", ["pose"]) as runner:
        images = _crops(5)
        out = runner.infer(images)["pose"]
    np.testing.assert_allclose(out, images.mean(axis=(1, 2)), rtol=1e-5)


@pytest.mark.parametrize("n", [1, 3, 4, 9])
def test_fixed_batch_splits_and_pads(tmp_path, n):
    path = _tiny_model(tmp_path / "m.onnx", 4)
    with OnnxRuntimeRunner(path, "x", ["pose"], batch_size=4) as runner:
        images = _crops(n)
        out = runner.infer(images)["pose"]
    assert out.shape == (n, 3)
    np.testing.assert_allclose(out, images.mean(axis=(1, 2)), rtol=1e-5)


def test_empty_batch(tmp_path):
    with OnnxRuntimeRunner(_tiny_model(tmp_path / "m.onnx", "N"), "x", ["pose"]) as runner:
        assert runner.infer(np.zeros((0, 64, 64, 3), np.float32))["pose"].shape == (0, 3)


def test_wrong_shape_reaches_the_runner_as_input_error(tmp_path):
    runner = OnnxRuntimeRunner(_tiny_model(tmp_path / "m.onnx", "N"), "x", ["pose"])
    with runner, pytest.raises(InputError):
        runner.infer(np.zeros((1, 64, 64), np.float32))


def test_damaged_model_file(tmp_path):
    path = tmp_path / "m.onnx"
    path.write_bytes(b"\x08\x07garbage")
    with pytest.raises(ArtifactError, match="cannot be loaded by ONNX Runtime"):
        OnnxRuntimeRunner(path, "x", ["pose"]).load()


@pytest.mark.parametrize("batch_size", [None, 3])
def test_both_cores_give_the_same_answers(tmp_path, batch_size):
    path = _tiny_model(tmp_path / "m.onnx", batch_size or "N")
    images = _crops(11)
    with OnnxRuntimeRunner(path, "x", ["pose"], batch_size=batch_size, threads=1) as one:
        serial = one.infer(images)["pose"]
    with OnnxRuntimeRunner(path, "x", ["pose"], batch_size=batch_size, threads=2) as two:
        parallel = two.infer(images)["pose"]
    np.testing.assert_array_equal(parallel, serial)


def test_gpu_providers_come_first_when_present():
    from fsanet.backends.onnxruntime import providers

    assert providers(["CPUExecutionProvider"]) == ["CPUExecutionProvider"]
    assert providers(
        ["CPUExecutionProvider", "CUDAExecutionProvider", "TensorrtExecutionProvider"]
    ) == ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    assert providers(["AzureExecutionProvider", "CPUExecutionProvider"]) == ["CPUExecutionProvider"]


def test_this_machine_runs_on_the_cpu(tmp_path):
    with OnnxRuntimeRunner(_tiny_model(tmp_path / "m.onnx", "N"), "x", ["pose"]) as runner:
        assert runner.providers == ["CPUExecutionProvider"]

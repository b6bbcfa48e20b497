"""The ONNX Runtime runner on the tiny channel-mean model (see conftest.py)."""

from pathlib import Path

import numpy as np
import onnx
import pytest

from fsanet.core.errors import ArtifactError, InputError
from fsanet.engine.backends.onnxruntime import OnnxRuntimeRunner


@pytest.fixture
def tiny_model(channel_mean):
    def save(path: Path, batch: int | str) -> Path:
        onnx.save(channel_mean(batch), path)
        return path

    return save


def test_dynamic_batch(tiny_model, crops, tmp_path):
    with OnnxRuntimeRunner(tiny_model(tmp_path / "m.onnx", "N"), "x", ["pose"]) as runner:
        images = crops(5)
        out = runner.infer(images)["pose"]
    np.testing.assert_allclose(out, images.mean(axis=(1, 2)), rtol=1e-5)


@pytest.mark.parametrize("n", [1, 3, 4, 9])
def test_fixed_batch_splits_and_pads(tiny_model, crops, tmp_path, n):
    path = tiny_model(tmp_path / "m.onnx", 4)
    with OnnxRuntimeRunner(path, "x", ["pose"], batch_size=4) as runner:
        images = crops(n)
        out = runner.infer(images)["pose"]
    assert out.shape == (n, 3)
    np.testing.assert_allclose(out, images.mean(axis=(1, 2)), rtol=1e-5)


def test_empty_batch(tiny_model, crops, tmp_path):
    with OnnxRuntimeRunner(tiny_model(tmp_path / "m.onnx", "N"), "x", ["pose"]) as runner:
        assert runner.infer(np.zeros((0, 64, 64, 3), np.float32))["pose"].shape == (0, 3)


def test_wrong_shape_reaches_the_runner_as_input_error(tiny_model, crops, tmp_path):
    runner = OnnxRuntimeRunner(tiny_model(tmp_path / "m.onnx", "N"), "x", ["pose"])
    with runner, pytest.raises(InputError):
        runner.infer(np.zeros((1, 64, 64), np.float32))


def test_damaged_model_file(tiny_model, crops, tmp_path):
    path = tmp_path / "m.onnx"
    path.write_bytes(b"\x08\x07garbage")
    with pytest.raises(ArtifactError, match="cannot be loaded by ONNX Runtime"):
        OnnxRuntimeRunner(path, "x", ["pose"]).load()


@pytest.mark.parametrize("batch_size", [None, 3])
def test_both_cores_give_the_same_answers(tiny_model, crops, tmp_path, batch_size):
    path = tiny_model(tmp_path / "m.onnx", batch_size or "N")
    images = crops(11)
    with OnnxRuntimeRunner(path, "x", ["pose"], batch_size=batch_size, threads=1) as one:
        serial = one.infer(images)["pose"]
    with OnnxRuntimeRunner(path, "x", ["pose"], batch_size=batch_size, threads=2) as two:
        parallel = two.infer(images)["pose"]
    np.testing.assert_array_equal(parallel, serial)


def test_gpu_providers_come_first_when_present():
    from fsanet.engine.backends.onnxruntime import providers

    assert providers(["CPUExecutionProvider"]) == ["CPUExecutionProvider"]
    assert providers(
        ["CPUExecutionProvider", "CUDAExecutionProvider", "TensorrtExecutionProvider"]
    ) == ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    assert providers(["AzureExecutionProvider", "CPUExecutionProvider"]) == ["CPUExecutionProvider"]


def test_this_machine_runs_on_the_cpu(tiny_model, crops, tmp_path):
    with OnnxRuntimeRunner(tiny_model(tmp_path / "m.onnx", "N"), "x", ["pose"]) as runner:
        assert runner.providers == ["CPUExecutionProvider"]

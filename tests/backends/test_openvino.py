"""The OpenVINO runner on a tiny model converted here, and on the real fused engine."""

from pathlib import Path

import numpy as np
import pytest
from onnx import TensorProto, helper

from fsanet.backends.openvino import OpenVinoRunner
from fsanet.convert.openvino import to_openvino
from fsanet.errors import ArtifactError


def _tiny_ir(tmp_path: Path, batch: int | str, precision: str = "fp32") -> Path:
    graph = helper.make_graph(
        [helper.make_node("ReduceMean", ["x", "axes"], ["pose"], keepdims=0)],
        "channel_mean",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 64, 64, 3])],
        [helper.make_tensor_value_info("pose", TensorProto.FLOAT, [batch, 3])],
        [helper.make_tensor("axes", TensorProto.INT64, [2], [1, 2])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    xml = tmp_path / "m.xml"
    to_openvino(model, xml, precision)
    return xml


def _crops(n: int) -> np.ndarray:
    return np.random.default_rng(n).uniform(0, 255, (n, 64, 64, 3)).astype(np.float32)


@pytest.mark.parametrize(("batch", "threads"), [("N", 1), ("N", 2), (4, 2)])
def test_runner_matches_numpy(tmp_path, batch, threads):
    xml = _tiny_ir(tmp_path, batch)
    images = _crops(9)
    fixed = batch if isinstance(batch, int) else None
    with OpenVinoRunner(xml, "x", ["pose"], batch_size=fixed, threads=threads) as runner:
        out = runner.infer(images)["pose"]
    np.testing.assert_allclose(out, images.mean(axis=(1, 2)), rtol=1e-4)


def test_ir_and_weights_are_written(tmp_path):
    xml = _tiny_ir(tmp_path, "N")
    assert xml.is_file() and xml.with_suffix(".bin").is_file()


def test_damaged_ir(tmp_path):
    xml = tmp_path / "m.xml"
    xml.write_text("<net>broken")
    with pytest.raises(ArtifactError, match="cannot be loaded by OpenVINO"):
        OpenVinoRunner(xml, "x", ["pose"]).load()


def test_fused_engine_on_openvino_matches_tensorflow(shared, aflw2000):
    from fsanet.build import BuildOptions, build
    from fsanet.engine import PoseEngine

    artifact = build(BuildOptions.create(backend="openvino"))
    m = artifact.manifest
    assert m.backend == "openvino" and m.models[0].file == "fusion.xml"
    assert m.models[0].weights == "fusion.bin" and m.parity["passed"]
    images = aflw2000.images[:16]
    with PoseEngine.from_artifact(artifact) as engine, PoseEngine.tensorflow_reference() as tf:
        ours, theirs = engine.predict_variants(images), tf.predict_variants(images)
    for name in ("capsule", "var", "noS", "fusion"):
        assert np.abs(ours[name] - theirs[name]).max() < 1e-3

"""The OpenVINO runner on the tiny channel-mean model (see conftest.py), and on the real
fused engine."""

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from fsanet.convert.openvino import to_openvino
from fsanet.core.errors import ArtifactError
from fsanet.engine.backends.openvino import OpenVinoRunner, fixed_batch


@pytest.fixture
def tiny_ir(channel_mean):
    def convert(tmp_path: Path, batch: int | str) -> Path:
        xml = tmp_path / "m.xml"
        to_openvino(channel_mean(batch), xml)
        return xml

    return convert


@pytest.mark.parametrize(("batch", "threads"), [("N", 1), ("N", 2), (4, 2)])
@pytest.mark.parametrize("count", [1, 3, 9])
def test_runner_matches_numpy(tiny_ir, crops, tmp_path, batch, threads, count):
    # 1 crop runs alone on every core; 3 and 9 are cut in parts that are padded.
    xml = tiny_ir(tmp_path, batch)
    images = crops(count)
    fixed = batch if isinstance(batch, int) else None
    with OpenVinoRunner(xml, "x", ["pose"], batch_size=fixed, threads=threads) as runner:
        out = runner.infer(images)["pose"]
    assert out.shape == (count, 3)
    np.testing.assert_allclose(out, images.mean(axis=(1, 2)), rtol=1e-4)


def test_fixed_batch_is_the_next_power_of_two():
    assert [fixed_batch(n) for n in (1, 2, 3, 5, 8, 9, 16, 17)] == [1, 2, 4, 8, 8, 16, 16, 32]


def test_calls_from_several_threads(tiny_ir, crops, tmp_path):
    batches = [crops(n) for n in (1, 2, 5, 7, 16, 3)] * 3
    with (
        OpenVinoRunner(tiny_ir(tmp_path, "N"), "x", ["pose"], threads=2) as runner,
        ThreadPoolExecutor(4) as callers,
    ):
        outs = list(callers.map(lambda b: runner.infer(b)["pose"], batches))
    for images, out in zip(batches, outs, strict=True):
        np.testing.assert_allclose(out, images.mean(axis=(1, 2)), rtol=1e-4)


def test_ir_and_weights_are_written(tiny_ir, crops, tmp_path):
    xml = tiny_ir(tmp_path, "N")
    assert xml.is_file() and xml.with_suffix(".bin").is_file()


def test_damaged_ir(tmp_path):
    xml = tmp_path / "m.xml"
    xml.write_text("<net>broken")
    with pytest.raises(ArtifactError, match="cannot be loaded by OpenVINO"):
        OpenVinoRunner(xml, "x", ["pose"]).load()


def test_fused_engine_on_openvino_matches_tensorflow(shared, aflw2000):
    from fsanet.convert.options import BuildOptions
    from fsanet.convert.pipeline import build
    from fsanet.engine.pose import PoseEngine

    artifact = build(BuildOptions.create(backend="openvino"))
    m = artifact.manifest
    assert m.backend == "openvino" and m.models[0].file == "fusion.xml"
    assert m.models[0].weights == "fusion.bin" and m.parity["status"].startswith("passed")
    images = aflw2000.images[:16]
    with PoseEngine.from_artifact(artifact) as engine, PoseEngine.tensorflow_reference() as tf:
        ours, theirs = engine.predict_variants(images), tf.predict_variants(images)
    for name in ("capsule", "var", "noS", "fusion"):
        assert np.abs(ours[name] - theirs[name]).max() < 1e-3


def test_warm_up_compiles_every_shape_a_batch_can_use(tiny_ir, crops, tmp_path):
    with OpenVinoRunner(tiny_ir(tmp_path, "N"), "x", ["pose"], threads=2) as runner:
        runner.warm_up(32)
        # A lone crop on both cores, and parts of up to 16 crops on one core each.
        assert set(runner._compiled) == {(1, 2), (1, 1), (2, 1), (4, 1), (8, 1), (16, 1)}
        out = runner.infer(crops(27))["pose"]
        assert len(runner._compiled) == 6  # 27 crops: parts of 14 and 13, both run at 16
    np.testing.assert_allclose(out, crops(27).mean(axis=(1, 2)), rtol=1e-4)

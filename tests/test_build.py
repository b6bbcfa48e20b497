import numpy as np
import pytest

from fsanet.backends.tensorflow import load_graph_def
from fsanet.build import BuildOptions, build, normalize_precision
from fsanet.engine import PoseEngine
from fsanet.errors import BuildError, FsanetError
from fsanet.zoo import VARIANTS


def test_manifest_describes_the_engine(fusion_artifact):
    m = fusion_artifact.manifest
    assert m.variants == ["capsule", "var", "noS"]
    assert (m.backend, m.precision, m.batch_mode, m.batch_size) == (
        "onnxruntime",
        "fp32",
        "dynamic",
        None,
    )
    assert {v: s["sha256"] for v, s in m.sources.items()} == {
        v.name: v.file.sha256 for v in VARIANTS.values()
    }
    assert {"tensorflow-cpu", "tf2onnx", "onnx", "onnxruntime"} <= set(m.tools)
    assert [f.file for f in m.models] == ["fusion.onnx"]  # one fused graph
    assert m.models[0].outputs == {
        "capsule": "capsule",
        "var": "var",
        "noS": "noS",
        "fusion": "fusion",
    }
    assert 88e6 < m.extra["flops"]["per_image"] < 90e6  # ~29.5 MFLOP per variant, counted
    assert m.extra["passes"] == [
        "batch_capsule_map",
        "fold_constants",
        "drop_dead_nodes",
        "fuse_variants",
    ]


def test_parity_with_tensorflow_is_recorded(fusion_artifact):
    parity = fusion_artifact.manifest.parity
    assert parity["reference"] == "tensorflow" and parity["passed"]
    assert parity["num_inputs"] >= 32 and parity["num_real"] >= 16 and parity["num_random"] > 0
    assert 0 < parity["max_abs_diff_deg"] <= 1e-3
    assert set(parity["per_output_max_abs_diff_deg"]) == {"capsule", "var", "noS", "fusion"}


def test_parity_on_fresh_real_and_random_inputs(fusion_engine, aflw2000):
    rng = np.random.default_rng(123)
    images = np.concatenate(
        [
            aflw2000.images[rng.choice(len(aflw2000), 24, replace=False)].astype(np.float32),
            rng.uniform(0, 255, (8, 64, 64, 3)).astype(np.float32),
        ]
    )
    with PoseEngine.tensorflow_reference() as reference:
        theirs = reference.predict_variants(images)
    ours = fusion_engine.predict_variants(images)
    for name in ("capsule", "var", "noS", "fusion"):
        assert np.abs(ours[name] - theirs[name]).max() <= 1e-3, name


def test_same_options_reuse_the_artifact(fusion_artifact):
    stamp = (fusion_artifact.path / "manifest.json").stat().st_mtime_ns
    again = build(BuildOptions.create(["fusion"], precision="force_float32"))
    assert again.path == fusion_artifact.path
    assert (again.path / "manifest.json").stat().st_mtime_ns == stamp


def test_fixed_batch_engine_matches_dynamic(fusion_engine, aflw2000):
    artifact = build(BuildOptions.create(["capsule"], dynamic_batch=False, batch_size=4))
    m = artifact.manifest
    assert (m.variants, m.batch_mode, m.batch_size) == (["capsule"], "fixed", 4)
    images = aflw2000.images[:10]
    with PoseEngine.from_artifact(artifact) as engine:
        fixed = engine(images)
    np.testing.assert_allclose(fixed, fusion_engine.predict_variants(images)["capsule"], atol=1e-4)


@pytest.mark.parametrize("name", ["fp32", "FP32", "force_float32", "float32"])
def test_precision_spellings(name):
    assert normalize_precision(name) == "fp32"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"precision": "fp8"}, "unknown precision 'fp8'"),
        ({"precision": "bf16"}, "precision bf16 is not available on onnxruntime: use openvino"),
        ({"precision": "fp16", "backend": "openvino"}, "fp16 is not available on openvino"),
        ({"precision": "int8", "calibration_size": 0}, "int8 needs calibration data"),
        ({"precision": "int8", "calibration_method": "mse"}, "unknown calibration method 'mse'"),
        ({"batch_size": 0}, "batch size must be at least 1"),
        ({"backend": "tensorflow"}, "cannot build engines for backend 'tensorflow'"),
        ({"models": ["resnet"]}, "unknown model 'resnet'"),
    ],
)
def test_bad_options(kwargs, message):
    with pytest.raises(FsanetError, match=message):
        BuildOptions.create(**kwargs)


def test_corrupt_graph_is_a_clear_error(tmp_path):
    path = tmp_path / "broken.pb"
    path.write_bytes(b"\xff\xfe not a graph")
    with pytest.raises(BuildError, match="is not a TensorFlow frozen graph"):
        load_graph_def(path)


@pytest.mark.parametrize(
    ("backend", "precision"),
    [("onnxruntime", "fp16"), ("onnxruntime", "int8"), ("openvino", "bf16"), ("openvino", "int8")],
)
def test_reduced_precisions_stay_within_their_bound(backend, precision, aflw2000):
    from fsanet.convert.precision import PRECISIONS

    artifact = build(BuildOptions.create(backend=backend, precision=precision))
    accuracy = artifact.manifest.extra["accuracy"]
    bound = PRECISIONS[precision].mae_bound
    assert accuracy["bound"] == bound and accuracy["within_bound"], accuracy
    assert abs(accuracy["mae"] - accuracy["mae_fp32_tensorflow"]) <= bound
    assert accuracy["mae_fp32_tensorflow"] == pytest.approx(5.07, abs=0.01)
    if precision in ("fp16", "int8"):  # calibrated: the held-out images are scored apart
        calibration = artifact.manifest.extra["calibration"]
        assert calibration["size"] == 200 and len(calibration["indices"]) == 200
        assert accuracy["num_held_out"] == 1969 - 200
        assert abs(accuracy["mae_held_out"] - accuracy["mae_fp32_tensorflow_held_out"]) <= bound
    # The engine really runs at that precision and gives the recorded numbers.
    from fsanet.api import evaluate_aflw2000

    with PoseEngine.from_artifact(artifact) as engine:
        report = evaluate_aflw2000(engine)
    assert report.results["fusion"].mae == pytest.approx(accuracy["mae"], abs=1e-3)


def test_unoptimized_unfused_build_still_matches(fusion_engine, aflw2000):
    artifact = build(BuildOptions.create(optimize=False, fuse=False))
    m = artifact.manifest
    assert [f.file for f in m.models] == ["capsule.onnx", "var.onnx", "noS.onnx"]
    assert m.extra["passes"] == [] and m.parity["passed"]
    with PoseEngine.from_artifact(artifact) as plain:
        images = aflw2000.images[:20]
        np.testing.assert_allclose(plain(images), fusion_engine(images), atol=2e-4)

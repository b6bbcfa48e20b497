import numpy as np
import pytest

from fsanet.assets.zoo import VARIANTS
from fsanet.convert.options import BuildOptions
from fsanet.convert.pipeline import build
from fsanet.convert.precision import normalize_precision
from fsanet.core.errors import BuildError, FsanetError
from fsanet.core.machine import this_machine
from fsanet.engine.backends.tensorflow import load_graph_def
from fsanet.engine.pose import PoseEngine


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
    assert parity["reference"] == "tensorflow" and parity["status"].startswith("passed")
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


def test_corrupt_graph_is_a_clear_error(tmp_path):
    path = tmp_path / "broken.pb"
    path.write_bytes(b"\xff\xfe not a graph")
    with pytest.raises(BuildError, match="is not a TensorFlow frozen graph"):
        load_graph_def(path)


def test_the_manifest_says_where_it_was_built_and_what_runs(fusion_artifact):
    m = fusion_artifact.manifest
    assert m.machine == this_machine().to_dict() and m.machine["isa_class"]
    assert m.executed["device"] == "CPUExecutionProvider" and m.executed["precision"] == "fp32"
    assert m.executed["ops"]["conv"] == {"fp32": 105}  # 35 convolutions per variant
    assert m.executed["status"].startswith("passed")
    assert m.runtime == {"cores": "split"}
    accuracy = m.extra["accuracy"]
    assert accuracy["status"].startswith("passed") and accuracy["within_bound"] is True
    assert None not in [*m.parity.values(), *accuracy.values(), *m.executed.values()]


# What each CPU class can run natively, asserted per class: bf16 needs avx512_bf16 or AMX;
# ONNX Runtime's CPU kernels have no fp16 convolution on x86-64 (it casts back to fp32).
BF16_HERE = this_machine().native_bf16
X86 = this_machine().arch in ("x86_64", "AMD64")


def test_bf16_is_refused_where_the_cpu_has_no_bf16():
    if BF16_HERE:
        assert BuildOptions.create(backend="openvino", precision="bf16").precision == "bf16"
        return
    message = (
        r"bf16 is not available on openvino here: .*no bf16 arithmetic "
        r"\(avx512_bf16 or amx_bf16\).* use fp32 \(onnxruntime\), fp32 \(openvino\), int8"
    )
    with pytest.raises(FsanetError, match=message):
        BuildOptions.create(backend="openvino", precision="bf16")


@pytest.mark.skipif(not X86, reason="on ARM, ONNX Runtime may have fp16 kernels: not asserted")
def test_fp16_on_onnxruntime_is_refused_on_x86():
    with pytest.raises(
        FsanetError, match=r"fp16 is not available on onnxruntime here: .*no fp16 convolution"
    ):
        BuildOptions.create(precision="fp16")


REDUCED = [("onnxruntime", "int8"), ("openvino", "int8"), ("openvino", "bf16")]


@pytest.mark.parametrize(("backend", "precision"), REDUCED)
def test_reduced_precisions_stay_within_their_bound(backend, precision, aflw2000):
    from fsanet.convert.precision import PRECISIONS, int8_schemes

    if precision == "bf16" and not BF16_HERE:
        test_bf16_is_refused_where_the_cpu_has_no_bf16()
        pytest.skip("no native bf16 here: refused as expected; bf16 accuracy not measured")
    artifact = build(BuildOptions.create(backend=backend, precision=precision))
    m = artifact.manifest
    accuracy = m.extra["accuracy"]
    bound = PRECISIONS[precision].mae_bound
    assert accuracy["bound"] == bound and accuracy["within_bound"], accuracy
    assert abs(accuracy["mae"] - accuracy["mae_fp32_tensorflow"]) <= bound
    assert accuracy["mae_fp32_tensorflow"] == pytest.approx(5.07, abs=0.01)
    assert m.parity["status"].startswith("not applicable")
    # The runtime really runs the convolutions in that precision.
    assert m.executed["precision"] == precision, m.executed
    convs = m.executed["ops"]["conv"]
    assert convs[precision] >= 0.9 * sum(convs.values())
    if precision == "int8":  # calibrated: the held-out images are scored apart
        calibration = m.extra["calibration"]
        assert calibration["size"] == 200 and len(calibration["indices"]) == 200
        assert accuracy["num_held_out"] == 1969 - 200
        assert abs(accuracy["mae_held_out"] - accuracy["mae_fp32_tensorflow_held_out"]) <= bound
        # The settings this CPU's rule puts first were tried first; the kept one holds.
        tried = m.extra["int8"]["tried"]
        assert [t["scheme"] for t in tried] == int8_schemes(backend, this_machine())[: len(tried)]
        assert tried[-1]["within_bound"] and m.extra["int8"]["scheme"] == tried[-1]["scheme"]
    # The engine gives the recorded numbers.
    from fsanet.api import evaluate_aflw2000

    with PoseEngine.from_artifact(artifact) as engine:
        report = evaluate_aflw2000(engine)
    assert report.results["fusion"].mae == pytest.approx(accuracy["mae"], abs=1e-3)


def test_an_engine_outside_its_bound_is_not_written(monkeypatch, fusion_artifact):
    import dataclasses

    from fsanet.convert import precision

    strict = dataclasses.replace(precision.PRECISIONS["int8"], mae_bound=1e-6)
    monkeypatch.setitem(precision.PRECISIONS, "int8", strict)
    options = BuildOptions.create(backend="openvino", precision="int8", calibration_size=50)
    with pytest.raises(
        BuildError,
        match=(
            r"int8 on openvino moves the fusion MAE outside its ±1e-06° bound .* with every "
            r"setting tried \(performance [+-]\d\.\d{3}°, mixed [+-]\d\.\d{3}°\); nothing was"
        ),
    ):
        build(options)
    assert not options.artifact_dir().exists()
    assert not list(options.artifact_dir().parent.glob(f".{options.artifact_dir().name}.*"))


def test_unoptimized_unfused_build_still_matches(fusion_engine, aflw2000):
    artifact = build(BuildOptions.create(optimize=False, fuse=False))
    m = artifact.manifest
    assert [f.file for f in m.models] == ["capsule.onnx", "var.onnx", "noS.onnx"]
    assert m.extra["passes"] == [] and m.parity["status"].startswith("passed")
    with PoseEngine.from_artifact(artifact) as plain:
        images = aflw2000.images[:20]
        np.testing.assert_allclose(plain(images), fusion_engine(images), atol=2e-4)

"""Flip TTA engines on the real graphs and AFLW2000: accuracy, parity with two plain calls,
every backend and precision, fixed and dynamic batch, and the commands that take --tta."""

from __future__ import annotations

import json

import numpy as np
import pytest

from fsanet.api import evaluate_aflw2000, load
from fsanet.convert.options import BuildOptions
from fsanet.convert.pipeline import build
from fsanet.convert.sources import predictions
from fsanet.core.errors import FsanetError
from fsanet.core.machine import this_machine
from fsanet.engine.pose import PoseEngine
from fsanet.engine.tta import flip_average

pytestmark = pytest.mark.real


@pytest.fixture(scope="module")
def flip_engine(flip_artifact):
    with PoseEngine.from_artifact(flip_artifact) as engine:
        yield engine


def test_flip_beats_the_plain_engine_on_every_axis(flip_engine, fusion_engine, aflw2000):
    data = aflw2000.evaluation_subset()
    flip = evaluate_aflw2000(flip_engine)
    plain = evaluate_aflw2000(fusion_engine)
    ours, before = flip.results["fusion"], plain.results["fusion"]
    assert flip.num_images == len(data) == 1969
    assert ours.mae <= 4.98 and before.mae == pytest.approx(5.07, abs=0.01)
    assert ours.yaw < before.yaw and ours.pitch < before.pitch and ours.roll < before.roll
    # The engine's own crop view is the plain engine; the report shows it next to the TTA row.
    assert flip.without_tta == pytest.approx(before, abs=1e-4)
    assert flip.tta == "flip" and "fusion, no flip" in str(flip)
    assert str(flip).splitlines()[-2] == f" MAE = {ours.mae:.2f}, [yaw,pitch,roll] = " + (
        f"[{ours.yaw:.2f}, {ours.pitch:.2f}, {ours.roll:.2f}]"
    )


def test_one_call_equals_two_plain_calls_and_a_numpy_average(flip_engine, fusion_engine, aflw2000):
    images = aflw2000.evaluation_subset().images
    ours = predictions(flip_engine, images)
    theirs = flip_average(lambda x: predictions(fusion_engine, x), images)
    assert set(ours) == set(theirs)
    worst = max(float(np.abs(ours[k] - theirs[k]).max()) for k in theirs)
    assert worst <= 1e-4, worst
    assert flip_engine(images[:5]).shape == (5, 3)  # a caller still gets N x 3


def test_the_manifest_records_the_pass_and_both_maes(flip_artifact):
    m = flip_artifact.manifest
    assert m.extra["passes"][-1] == "flip_tta" and "-flip-" in flip_artifact.name
    tta = m.extra["tta"]
    assert tta["mode"] == "flip" and tta["mae"] <= 4.98
    assert tta["mae_without"] == pytest.approx(5.07, abs=0.01)
    assert all(tta["per_axis"][a] < tta["per_axis_without"][a] for a in ("yaw", "pitch", "roll"))
    # Checked against TensorFlow run the same way (two calls, averaged).
    assert m.parity["status"].startswith("passed") and m.parity["max_abs_diff_deg"] <= 1e-3
    assert "fusion/mirror" in m.parity["per_output_max_abs_diff_deg"]
    accuracy = m.extra["accuracy"]
    assert accuracy["mae_fp32_tensorflow"] == pytest.approx(tta["mae"], abs=1e-3)
    assert m.extra["flops"]["per_image"] > 1.9 * m.extra["flops"]["by_op_per_image"]["Conv"] / 2


REDUCED = [("onnxruntime", "int8"), ("openvino", "int8"), ("openvino", "bf16")]


@pytest.mark.parametrize(("backend", "precision"), REDUCED)
def test_reduced_precisions_with_flip_stay_within_their_bound(
    backend, precision, flip_artifact, aflw2000
):
    from fsanet.convert.precision import PRECISIONS

    if precision == "bf16" and not this_machine().native_bf16:
        with pytest.raises(FsanetError, match="bf16 is not available"):
            BuildOptions.create(backend=backend, precision=precision, tta="flip")
        pytest.skip("no native bf16 here: refused as expected; bf16 accuracy not measured")
    artifact = build(BuildOptions.create(backend=backend, precision=precision, tta="flip"))
    bound = PRECISIONS[precision].mae_bound
    fp32_flip = flip_artifact.manifest.extra["tta"]["mae"]
    with PoseEngine.from_artifact(artifact) as engine:
        report = evaluate_aflw2000(engine)
    assert report.tta == "flip" and artifact.manifest.executed["precision"] == precision
    assert abs(report.results["fusion"].mae - fp32_flip) <= bound
    assert report.results["fusion"].mae < report.without_tta.mae  # flip still helps


@pytest.mark.parametrize(
    "options",
    [
        {"dynamic_batch": False, "batch_size": 4},
        {"backend": "openvino", "dynamic_batch": False, "batch_size": 4},
        {"fuse": False},
        {"models": ["var"]},
    ],
    ids=["ort-fixed", "openvino-fixed", "unfused", "one-variant"],
)
def test_every_graph_shape_takes_flip(options, fusion_engine, aflw2000):
    options = dict(options)
    models = options.pop("models", None)
    artifact = build(BuildOptions.create(models, tta="flip", **options))
    images = aflw2000.evaluation_subset().images[:9]  # an odd count: split and padded
    with PoseEngine.from_artifact(artifact) as engine:
        ours = engine.predict_variants(images)
    theirs = flip_average(fusion_engine.predict_variants, images)
    for name, angles in ours.items():
        np.testing.assert_allclose(angles, theirs[name], atol=2e-4, err_msg=name)
    main = "var" if models else "fusion"
    assert {main, f"{main}/crop", f"{main}/mirror"} <= set(ours)


def test_a_plain_engine_asked_for_flip_is_one_clear_line(fusion_artifact):
    with pytest.raises(FsanetError, match=r"built without --tta flip: build one with it"):
        load(str(fusion_artifact.path), tta="flip")
    assert load(str(fusion_artifact.path), tta="none").tta == "none"


def test_eval_and_bench_take_tta(flip_artifact, flip_engine, fusion_artifact, run_cli):
    result = run_cli("eval", "--tta", "flip", "--num", "64", "--json", "-q")
    assert result.returncode == 0, result.stderr
    assert "IMPORTED=\n" in result.stderr  # running an engine never imports TensorFlow
    data = json.loads(result.stdout)
    assert data["tta"]["mode"] == "flip" and data["engine"]["name"] == flip_artifact.name
    assert set(data["tta"]["without"]) == {"yaw", "pitch", "roll", "mae"}
    api = evaluate_aflw2000(flip_engine, num=64)  # the same engine, through the API
    assert data["mae"] == pytest.approx(api.results["fusion"].mae, abs=1e-6)
    assert data["tta"]["without"]["mae"] == pytest.approx(api.without_tta.mae, abs=1e-6)
    assert data["mae"] < data["tta"]["without"]["mae"]  # flip helps on these 64 too

    args = ["bench", "--tta", "flip", "--batch", "1,4", "--iterations", "8", "--warmup", "1"]
    result = run_cli(*args, "--rounds", "2", "--no-peak", "--json", "-q")
    assert result.returncode == 0, result.stderr
    bench = json.loads(result.stdout)
    labels = list(dict.fromkeys(r["label"] for r in bench["results"]))
    assert labels == ["fusion/onnxruntime/fp32", "fusion/onnxruntime/fp32+flip"]
    flip = [r for r in bench["results"] if r["label"].endswith("+flip")]
    assert all(r["reference"] == "fusion/onnxruntime/fp32" for r in flip)


def test_predict_takes_tta(flip_artifact, flip_engine, shared, tmp_path, run_cli):
    import zipfile

    import cv2

    from fsanet.faces.estimator import HeadPoseEstimator

    with zipfile.ZipFile(shared / "datasets" / "AFLW2000-3D.zip") as z:
        jpg = z.read("AFLW2000/image00002.jpg")
    (tmp_path / "face.jpg").write_bytes(jpg)
    out = tmp_path / "faces.jsonl"
    result = run_cli("predict", str(tmp_path / "face.jpg"), "--tta", "flip", "--jsonl", str(out))
    assert result.returncode == 0, result.stderr
    assert "IMPORTED=\n" in result.stderr
    (record,) = [json.loads(line) for line in out.read_text().splitlines()]
    image = cv2.imdecode(np.frombuffer(jpg, np.uint8), cv2.IMREAD_COLOR)
    (face,) = HeadPoseEstimator(flip_engine)(image)
    assert [record["yaw"], record["pitch"], record["roll"]] == pytest.approx(
        [face.yaw, face.pitch, face.roll],
        abs=0.006,  # records keep 2 decimals
    )


def test_end_to_end_with_flip_beats_the_plain_pipeline(flip_engine, fusion_engine):
    from fsanet.faces.estimator import HeadPoseEstimator
    from fsanet.faces.options import E2E_SCORE_THRESHOLD
    from fsanet.measure.endtoend import evaluate_end_to_end

    threshold = E2E_SCORE_THRESHOLD
    report = evaluate_end_to_end(HeadPoseEstimator(flip_engine, score_threshold=threshold))
    plain = evaluate_end_to_end(HeadPoseEstimator(fusion_engine, score_threshold=threshold))
    assert report.num_images == plain.num_images == 1969 and report.num_found >= 1960
    assert report.num_found == plain.num_found  # the same detector: the same faces
    assert report.found.mae < plain.found.mae


def test_flip_parity_with_tensorflow_on_fresh_inputs(flip_engine, aflw2000):
    """TensorFlow's own graphs, each run on the crops and on their mirror images and
    averaged (the flip rule, by hand), against the flip engine on inputs no check saw."""
    from fsanet.assets.fetch import fetch
    from fsanet.assets.zoo import VARIANTS
    from fsanet.engine.backends.tensorflow import TensorflowRunner

    rng = np.random.default_rng(20261206)  # not the build's parity seed
    data = aflw2000.evaluation_subset()
    real = data.images[rng.choice(len(data), 6, replace=False)].astype(np.float32)
    noise = rng.uniform(0, 255, (4, 64, 64, 3)).astype(np.float32)
    images = np.concatenate([real, noise])
    expected = []
    for variant in VARIANTS.values():
        with TensorflowRunner(
            fetch(variant.file), variant.input_name, [variant.output_name]
        ) as runner:
            views = flip_average(lambda x: runner.infer(x), images)
            expected.append(views[variant.output_name])
    fused = np.mean(expected, axis=0)
    got = flip_engine.predict_variants(images)["fusion"]
    assert np.abs(got - fused).max() <= 1e-3  # degrees, the fp32 parity bound

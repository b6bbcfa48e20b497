"""`--precision auto` on the real graphs, once per test session (a few minutes on 2 cores):
every candidate this CPU supports is built, checked and timed here, and the fastest kept."""

from __future__ import annotations

import json

import numpy as np
import pytest

from fsanet.api import build
from fsanet.convert.options import BuildOptions
from fsanet.convert.precision import PRECISIONS, unsupported
from fsanet.core.machine import this_machine
from fsanet.measure.tune import Candidate, TuningReport
from fsanet.measure.tune.candidates import BUILDS, run_settings


@pytest.fixture(scope="module")
def auto(shared):
    return build(BuildOptions.create(precision="auto"))


@pytest.fixture(scope="module")
def report(auto) -> TuningReport:
    return TuningReport.from_dict(auto.manifest.extra["tuning"])


def test_every_candidate_is_in_the_table(report):
    machine = this_machine()
    assert report.machine == machine.to_dict() and report.batches == [1, 32]
    builds = {(c.backend, c.precision, c.layout) for c in report.candidates}
    assert builds == set(BUILDS)
    for c in report.candidates:
        reason = unsupported(c.precision, c.backend, machine)
        if reason is not None:  # not runnable as labelled here: listed, not built
            assert c.status == f"skipped: {reason}" and c.engine is None
        elif c.status in ("timed", "screened out"):
            assert set(c.throughput) == {1, 32} and min(c.throughput.values()) > 0
            assert abs(c.delta) <= PRECISIONS[c.precision].mae_bound  # only accurate ones
    timed = [c for c in report.candidates if c.status == "timed"]
    # Each build is timed once in the final rounds, with its best run settings.
    assert len(timed) == len({(c.backend, c.precision, c.layout) for c in timed})
    for c in timed:
        assert c.settings in run_settings(c.backend, machine.cores)


def test_the_winner_is_the_fastest_accurate_one(auto, report):
    timed = [c for c in report.candidates if c.status == "timed"]
    winner = report.chosen
    assert winner.status == "timed" and winner.score == max(c.score for c in timed)
    m = auto.manifest
    assert (m.backend, m.precision, m.extra["layout"]) == (
        winner.backend,
        winner.precision,
        winner.layout,
    )
    assert m.runtime == winner.settings
    assert m.executed["precision"] == winner.precision  # the label is what runs
    assert m.machine == this_machine().to_dict()
    assert m.extra["tuned_from"] == winner.engine
    assert f"chosen: {winner.label}" in str(report) and "highest score" in report.reason


def test_the_choice_is_cached_per_machine(auto):
    stamp = (auto.path / "manifest.json").stat().st_mtime_ns
    again = build(BuildOptions.create(precision="auto"))
    assert again.path == auto.path
    assert (again.path / "manifest.json").stat().st_mtime_ns == stamp
    other = BuildOptions.create(precision="auto", tune_batches=[16])
    assert other.artifact_dir() != auto.path  # other batch sizes: another tuning


def test_load_eval_and_build_accept_auto(auto, run_cli):
    import fsanet

    with fsanet.load("fusion", precision="auto") as engine:
        assert engine.name == auto.name and engine.precision == auto.manifest.precision
    result = run_cli("eval", "--precision", "auto", "--num", "100", "--json", "-q")
    assert result.returncode == 0, result.stderr
    assert "IMPORTED=\n" in result.stderr  # the cached choice needs no TensorFlow
    assert json.loads(result.stdout)["num_images"] == 100
    result = run_cli("build", "--precision", "auto", "-q")
    assert result.returncode == 0, result.stderr
    assert "chosen: " in result.stdout and "auto: tuned on" in result.stdout


def test_the_report_round_trips():
    fast = Candidate(
        "openvino", "bf16", "stacked", {"cores": "split"}, throughput={1: 600, 32: 700}
    )
    slow = Candidate("onnxruntime", "fp32", "plain", {"cores": "shared"}, throughput={1: 1, 32: 4})
    skipped = Candidate("onnxruntime", "fp16", "plain", status="skipped: no fp16 here")
    report = TuningReport({"model": "cpu"}, [1, 32], [slow, fast, skipped], 1, "fastest", 3.0)
    assert slow.score == pytest.approx(2.0) and skipped.score is None
    again = TuningReport.from_dict(json.loads(json.dumps(report.to_dict())))
    assert again.chosen.label == "openvino/bf16/stacked [cores split]"
    assert str(again) == str(report)
    assert "* openvino/bf16/stacked" in str(report) and "skipped: no fp16 here" in str(report)


def test_tta_reaches_every_candidate_and_the_cache_key():
    from fsanet.measure.tune.candidates import builds

    plain = BuildOptions.create(precision="auto")
    flip = BuildOptions.create(precision="auto", tta="flip")
    # A build this CPU cannot run has no options (they would refuse it): it is listed only.
    candidates = [b for b in builds(flip, this_machine()) if b.options is not None]
    assert candidates and all(b.options.tta == "flip" for b in candidates)
    assert all(b.options.tta == "none" for b in builds(plain, this_machine()) if b.options)
    assert plain.key() != flip.key() and "-auto-dyn-flip-" in flip.artifact_dir().name


def test_the_candidates_are_the_precision_registry():
    # Each backend with each precision it runs; the stacked layout for fp32 and bf16.
    assert BUILDS == (
        ("onnxruntime", "fp32", "plain"),
        ("onnxruntime", "fp32", "stacked"),
        ("onnxruntime", "fp16", "plain"),
        ("onnxruntime", "int8", "plain"),
        ("openvino", "fp32", "plain"),
        ("openvino", "fp32", "stacked"),
        ("openvino", "fp16", "plain"),  # the f16 hint, where the CPU has FP16 (ARM)
        ("openvino", "bf16", "plain"),
        ("openvino", "bf16", "stacked"),
        ("openvino", "int8", "plain"),
    )


def test_a_build_its_options_refuse_is_listed_with_why():
    from fsanet.measure.tune.candidates import builds

    # u8u8 is ONNX Runtime's int8 scheme: OpenVINO's builds cannot take it.
    base = BuildOptions.create(precision="auto", int8_scheme="u8u8")
    for b in builds(base, this_machine()):
        if b.backend == "openvino" and b.skipped and "int8 scheme" in b.skipped:
            assert b.options is None
            assert b.skipped.startswith("unknown int8 scheme 'u8u8' for openvino")
        elif b.skipped is None:
            assert b.options.int8_scheme == "u8u8" and b.backend == "onnxruntime"


def test_the_chosen_engine_is_re_scored_on_aflw2000(auto, aflw2000):
    """Not the build's recorded delta: the engine `auto` picked, run again here on all 1969
    AFLW2000 crops, against TensorFlow's own graphs run on the same crops in this test."""
    from fsanet.engine.pose import PoseEngine

    data = aflw2000.evaluation_subset()
    images, labels = data.images.astype(np.float32), data.poses.astype(np.float64)
    assert len(images) == 1969
    with PoseEngine.from_artifact(auto) as engine:
        chosen = engine(images)
    with PoseEngine.tensorflow_reference() as reference:
        tensorflow = reference(images)
    mae_chosen = float(np.abs(chosen - labels).mean())
    mae_tensorflow = float(np.abs(tensorflow - labels).mean())
    bound = PRECISIONS[auto.manifest.precision].mae_bound
    print(f"auto chose {auto.name}: MAE {mae_chosen:.4f}, TensorFlow {mae_tensorflow:.4f}")
    assert abs(mae_chosen - mae_tensorflow) <= bound, (mae_chosen, mae_tensorflow, bound)

"""fsanet bench: statistics, interleaving, FLOP counting, the report, the CLI and its errors.

Speed is never asserted here: only what is measured and how it is reported.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from dataclasses import dataclass, field

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import fsanet
from fsanet.cli import main
from fsanet.core.errors import FsanetError
from fsanet.core.machine import this_machine
from fsanet.engine.backends.base import available_cpus
from fsanet.measure.bench import (
    BenchReport,
    LatencyStats,
    Ratio,
    baseline,
    benchmark,
    check_plot_path,
    count_flops,
    interleave,
    machine_info,
    parse_batches,
)
from fsanet.measure.bench.baseline import ThreadChoice, choose_threads
from fsanet.measure.bench.core import expand_models
from fsanet.measure.bench.timing import split_iterations

# --- statistics ------------------------------------------------------------------------------


def test_percentiles_of_a_known_distribution():
    # 1..100 ms in random order: numpy's linear interpolation gives exact known values.
    samples = np.random.default_rng(0).permutation(np.arange(1, 101)) / 1e3
    stats = LatencyStats.from_seconds(samples)
    assert stats.min == pytest.approx(1.0)
    assert stats.max == pytest.approx(100.0)
    assert stats.mean == pytest.approx(50.5)
    assert stats.p50 == pytest.approx(50.5)
    assert stats.p90 == pytest.approx(90.1)
    assert stats.p95 == pytest.approx(95.05)
    assert stats.p99 == pytest.approx(99.01)
    assert list(stats.to_dict()) == ["min", "mean", "p50", "p90", "p95", "p99", "max"]


def test_percentiles_of_an_exponential_distribution():
    scale_ms = 2.0
    samples = np.random.default_rng(1).exponential(scale_ms / 1e3, size=200_000)
    stats = LatencyStats.from_seconds(samples)
    for p, value in [(50, stats.p50), (90, stats.p90), (99, stats.p99)]:
        expected = -scale_ms * np.log(1 - p / 100)  # the exponential's quantile function
        assert value == pytest.approx(expected, rel=0.03)


def test_ratio_over_rounds():
    # A does 100 images/s then 200; B does 50 then 100: 2x in each round and overall.
    ratio = Ratio.between([100, 200], [1.0, 1.0], [50, 100], [1.0, 1.0])
    assert ratio.value == pytest.approx(2.0)
    assert ratio.rounds == pytest.approx((2.0, 2.0))
    uneven = Ratio.between([100, 100], [1.0, 1.0], [100, 50], [1.0, 1.0])
    assert (uneven.low, uneven.high) == pytest.approx((1.0, 2.0))
    assert uneven.value == pytest.approx(200 / 150)
    assert str(uneven) == "1.33x (1.00-2.00)"


# --- interleaving ----------------------------------------------------------------------------


def test_interleave_alternates_the_order_each_round():
    assert interleave(2, 4) == [(0, 0), (0, 1), (1, 1), (1, 0), (2, 0), (2, 1), (3, 1), (3, 0)]
    assert interleave(3, 1) == [(0, 0), (0, 1), (0, 2)]
    assert split_iterations(10, 3) == [4, 3, 3]
    assert sum(split_iterations(1000, 7)) == 1000


@dataclass
class FakeEngine:
    """Records every call; returns zeros. Enough of a PoseEngine for `benchmark`."""

    name: str
    log: list[tuple[str, int]]
    backend: str = "fake"
    precision: str = "fp32"
    variants: list[str] = field(default_factory=lambda: ["capsule"])
    seen: list[np.ndarray] = field(default_factory=list)

    def __call__(self, images: np.ndarray) -> np.ndarray:
        self.log.append((self.name, len(images)))
        self.seen.append(images)
        return np.zeros((len(images), 3), np.float32)


@dataclass
class SlowEngine(FakeEngine):
    delay: float = 0.0

    def __call__(self, images: np.ndarray) -> np.ndarray:
        time.sleep(self.delay)
        return super().__call__(images)


def test_benchmark_runs_engines_interleaved():
    log: list[tuple[str, int]] = []
    a, b = FakeEngine("A", log), FakeEngine("B", log)
    report = benchmark([a, b], [1, 2], iterations=4, warmup=1, rounds=2, peak=False)
    expected = []
    for batch in (1, 2):
        expected += [("A", batch), ("B", batch)]  # warm-up, untimed
        expected += [("A", batch)] * 2 + [("B", batch)] * 2  # round 0: A B
        expected += [("B", batch)] * 2 + [("A", batch)] * 2  # round 1: B A
    assert log == expected
    assert [(r.name, r.batch, r.iterations) for r in report.results] == [
        ("A", 1, 4), ("B", 1, 4), ("A", 2, 4), ("B", 2, 4),
    ]  # fmt: skip
    # Without a baseline, every later engine is compared with the first, round by round.
    first, second = report.results[:2]
    assert first.ratio is None and second.reference == first.label
    assert second.ratio is not None and len(second.ratio.rounds) == 2
    # Real AFLW2000 crops (or random pixels): float32 batches, never all zeros.
    for images in a.seen:
        assert images.dtype == np.float32 and images.shape[1:] == (64, 64, 3) and images.any()


def test_benchmark_by_duration_runs_at_least_once_per_round():
    log: list[tuple[str, int]] = []
    report = benchmark(
        [FakeEngine("A", log)], [3], duration=0.02, warmup=0, rounds=2, peak=False,
        dataset="random",
    )  # fmt: skip
    (result,) = report.results
    assert report.settings.inputs == "random" and report.settings.iterations is None
    assert result.iterations >= 2 and len(result.round_throughput) == 2
    assert result.throughput > 0 and 0 <= result.host_share < 1


def test_fewer_iterations_than_rounds():
    report = benchmark([FakeEngine("A", [])], [1], iterations=2, rounds=5, warmup=0, peak=False)
    assert report.settings.rounds == 2 and report.results[0].iterations == 2


def test_all_is_the_seed_perf_sh():
    assert expand_models(["all"]) == ["capsule", "var", "noS", "fusion"]
    assert expand_models(["FUSION", "nos"]) == ["fusion", "noS"]
    with pytest.raises(FsanetError, match="unknown engine 'resnet'"):
        expand_models(["resnet"])


def test_parse_batches():
    assert parse_batches("1,16,32") == [1, 16, 32]
    for bad in ("0", "1,-2", "a", ""):
        with pytest.raises(FsanetError):
            parse_batches(bad)


# --- FLOP counting on tiny graphs ---------------------------------------------------------


def _model(nodes, inputs, outputs, initializers, opset: int = 17) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "tiny", inputs, outputs, initializers)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def _const(name: str, array: np.ndarray) -> TensorProto:
    return numpy_helper.from_array(array, name)


def test_flops_of_conv_matmul_gemm():
    # x [N,3,8,8] -conv 4x3x3x3 pad 1-> [N,4,8,8] -reshape-> [N,256] -matmul 256x10-> -gemm 10x5->
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("Reshape", ["c", "shape"], ["f"]),
        helper.make_node("MatMul", ["f", "m"], ["h"]),
        helper.make_node("Gemm", ["h", "g"], ["y"]),
    ]
    inits = [
        _const("w", np.ones((4, 3, 3, 3), np.float32)),
        _const("shape", np.array([-1, 256], np.int64)),
        _const("m", np.ones((256, 10), np.float32)),
        _const("g", np.ones((10, 5), np.float32)),
    ]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 5])
    count = count_flops(_model(nodes, [x], [y], inits))
    conv = 2 * (4 * 8 * 8) * (3 * 3 * 3)
    assert count.batch == 1
    assert count.by_op == {"Conv": conv, "MatMul": 2 * 256 * 10, "Gemm": 2 * 10 * 5}
    assert count.per_image == conv + 2 * 256 * 10 + 2 * 10 * 5
    assert count.notes == []


def test_flops_of_a_fixed_batch_are_per_image():
    nodes = [helper.make_node("MatMul", ["x", "m"], ["y"])]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 6])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 7])
    count = count_flops(_model(nodes, [x], [y], [_const("m", np.ones((6, 7), np.float32))]))
    assert count.batch == 4 and count.flops == 4 * 2 * 6 * 7 and count.per_image == 2 * 6 * 7


def _loop_model(trip_count: int) -> onnx.ModelProto:
    """TensorFlow's map_fn as tf2onnx writes it: a Loop over the batch, one MatMul per image,
    ending on its condition (i < N) when the trip count is INT64_MAX; then a MatMul on the
    stacked results."""
    body = helper.make_graph(
        [
            helper.make_node("Add", ["i", "one"], ["next"]),
            helper.make_node("Less", ["next", "n"], ["keep"]),
            helper.make_node("Unsqueeze", ["i", "axes"], ["idx"]),
            helper.make_node("Gather", ["x", "idx"], ["row"]),  # [1, 6]
            helper.make_node("MatMul", ["row", "w"], ["prod"]),  # [1, 6] x [6, 7]
            helper.make_node("Squeeze", ["prod", "axes"], ["out"]),  # [7]
        ],
        "body",
        [
            helper.make_tensor_value_info("iter", TensorProto.INT64, []),
            helper.make_tensor_value_info("cond", TensorProto.BOOL, []),
            helper.make_tensor_value_info("i", TensorProto.INT64, []),
        ],
        [
            helper.make_tensor_value_info("keep", TensorProto.BOOL, []),
            helper.make_tensor_value_info("next", TensorProto.INT64, []),
            helper.make_tensor_value_info("out", TensorProto.FLOAT, None),
        ],
        [_const("one", np.array(1, np.int64)), _const("axes", np.array([0], np.int64))],
    )
    nodes = [
        helper.make_node("Shape", ["x"], ["shape"]),
        helper.make_node("Gather", ["shape", "zero"], ["n"]),
        helper.make_node("Loop", ["trips", "true", "start"], ["last", "stacked"], body=body),
        helper.make_node("MatMul", ["stacked", "v"], ["y"]),  # [N, 7] x [7, 2]
    ]
    inits = [
        _const("zero", np.array(0, np.int64)),
        _const("trips", np.array(trip_count, np.int64)),
        _const("true", np.array(True)),
        _const("start", np.array(0, np.int64)),
        _const("w", np.ones((6, 7), np.float32)),
        _const("v", np.ones((7, 2), np.float32)),
    ]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 6])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    return _model(nodes, [x], [y], inits)


def test_flops_of_a_map_fn_loop():
    count = count_flops(_loop_model(2**63 - 1))
    # One body MatMul per image, and the MatMul after the loop sees the stacked [1, 7].
    assert count.by_op == {"MatMul": 2 * 6 * 7 + 2 * 7 * 2}
    assert any("once per image" in note for note in count.notes)


def test_flops_of_a_counted_loop():
    count = count_flops(_loop_model(3))  # a fixed trip count is read, not assumed
    assert count.by_op == {"MatMul": 3 * 2 * 6 * 7 + 3 * 2 * 7 * 2}
    assert count.notes == []


def test_flops_of_the_fsanet_engine(fusion_engine):
    from fsanet.convert.flops import count_flops_files

    count = count_flops_files(fusion_engine.model_files)
    assert count is not None
    # ~29.5 MFLOP per variant, mostly convolutions (MISSION.md: ~29, ~87 fused).
    assert 85e6 < count.per_image < 92e6
    assert count.by_op["Conv"] > 0.9 * count.per_image


# --- machine -----------------------------------------------------------------------------------


def test_machine_info_is_the_machine_the_runtimes_see():
    info = machine_info()
    # The CPU as fsanet.core.machine reads it (CPUID, right under an emulator), plus the software.
    assert this_machine().to_dict().items() <= info.items()
    assert {"model", "cores", "isa_class", "features", "logical_cpus", "libraries", "blas"} <= set(
        info
    )
    assert "tensorflow" not in info["libraries"]  # never imported for it
    assert info["libraries"]["onnxruntime"]


# --- report, plot -------------------------------------------------------------------------------


def test_plot_is_written(tmp_path):
    report = benchmark([FakeEngine("A", []), FakeEngine("B", [])], [1, 2], iterations=3,
                       warmup=0, rounds=3, peak=False)  # fmt: skip
    path = report.plot(tmp_path / "bench.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = str(report)
    assert "img/s" in text and "p99" in text and "capsule/fake/fp32/B" in text


def test_plot_path_checks(tmp_path):
    (tmp_path / "file").write_text("")
    for bad in [tmp_path / "missing" / "p.png", tmp_path / "file" / "p.png", tmp_path / "p.txt",
                tmp_path]:  # fmt: skip
        with pytest.raises(FsanetError, match="plot"):
            check_plot_path(bad)
    assert check_plot_path(tmp_path / "p.png") == tmp_path / "p.png"


# --- the CLI on the real engine --------------------------------------------------------------

_SMALL = ["--batch", "1,2", "--iterations", "3", "--warmup", "1", "--rounds", "3", "-q"]


def test_json_shape(fusion_artifact, capsys, tmp_path):
    engine = str(fusion_artifact.path)
    plot = tmp_path / "bench.png"
    assert main(["bench", engine, engine, *_SMALL, "--json", "--plot", str(plot)]) == 0
    data = json.loads(capsys.readouterr().out)
    assert {"settings", "machine", "peak", "results", "baseline", "plot"} <= set(data)
    machine = data["machine"]
    assert machine["isa_class"] == this_machine().isa_class
    assert machine["features"] == list(this_machine().features)
    assert machine["model"] and machine["cores"] == available_cpus()
    # Default: every usable core, for the engines and the peak alike.
    assert data["peak"]["gflops"] > 0 and data["peak"]["threads"] == available_cpus()
    assert data["settings"]["threads"] == available_cpus()
    assert len(data["results"]) == 4 and plot.is_file()
    for r in data["results"]:
        assert {"name", "backend", "precision", "batch", "throughput", "latency_ms"} <= set(r)
        assert {"p50", "p90", "p95", "p99", "min", "max", "mean"} <= set(r["latency_ms"])
        assert r["backend"] == "onnxruntime" and r["precision"] == "fp32"
        assert r["throughput"] > 0 and r["iterations"] == 3
        assert 85e6 < r["flops_per_image"] < 92e6 and r["percent_of_peak"] > 0
        assert r["io"]["models"][0]["inputs"][0]["shape"] == ["N", 64, 64, 3]
        assert r["thread_setting"] is None  # only the TensorFlow baseline has one
    first, second = data["results"][:2]
    assert first["ratio"] is None
    assert second["ratio"] > 0 and len(second["ratio_spread"]["rounds"]) == 3
    assert second["reference"] == first["label"]


def test_baseline_tensorflow(fusion_artifact, capsys, monkeypatch):
    monkeypatch.setattr(baseline, "TRIAL_SECONDS", 0.02)
    args = ["bench", str(fusion_artifact.path), "--baseline", "tensorflow", "--no-peak"]
    assert main([*args, "--batch", "1", "--iterations", "2", "--warmup", "1", "-q", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    ort, tf = data["results"]
    assert tf["backend"] == "tensorflow" and sorted(tf["variants"]) == ["capsule", "noS", "var"]
    assert ort["reference"] == tf["label"] and ort["ratio"] > 0 and tf["ratio"] is None
    assert data["machine"]["libraries"]["tensorflow"]
    assert data["peak"] is None
    assert ort["thread_setting"] is None
    chosen = tf["thread_setting"]
    trials = chosen["trials"]
    if available_cpus() > 1:
        assert set(trials) == {"split", "intra", "inter", "intra+inter"}
        # The fastest trial, as reported (rounded to 0.01 img/s: near-equal settings tie).
        assert trials[chosen["setting"]] == max(trials.values())
    else:  # one core: every setting is the same, none is tried
        assert chosen == {"setting": "split", "trials": {}}


def test_tensorflow_baseline_keeps_its_fastest_thread_setting(fusion_artifact, monkeypatch):
    monkeypatch.setattr(baseline, "TRIAL_SECONDS", 0.02)
    report = fsanet.benchmark(
        [str(fusion_artifact.path)], [1, 4], iterations=2, warmup=1, rounds=1, threads=2,
        baseline="tensorflow", peak=False, dataset="random",
    )  # fmt: skip
    tf = [r for r in report.results if r.backend == "tensorflow"]
    assert [r.batch for r in tf] == [1, 4]
    for r in tf:
        assert r.thread_choice is not None
        trials = r.thread_choice.trials
        assert list(trials) == ["split", "intra", "inter", "intra+inter"]
        assert all(t > 0 for t in trials.values())
        assert r.thread_choice.setting == max(trials, key=trials.__getitem__)
        assert r.to_dict()["thread_setting"]["setting"] == r.thread_choice.setting
    text = str(report)
    assert "TensorFlow's thread setting" in text and "batch 4: " in text


def test_thread_trials_pick_the_fastest_setting():
    slow_log: list[tuple[str, int]] = []
    slow, fast = SlowEngine("slow", slow_log, delay=0.003), FakeEngine("fast", [])
    feeds = [np.zeros((2, 64, 64, 3), np.uint8)]
    choice = choose_threads({"split": slow, "inter": fast}, feeds, warmup=1)
    assert choice.setting == "inter" and choice.trials["inter"] > choice.trials["split"] > 0
    assert slow_log  # each setting was warmed up and timed
    assert choose_threads({"split": slow}, feeds, 1) == (
        ThreadChoice("split", {})
    )  # one setting (one core): nothing to try


def test_bench_never_imports_tensorflow(fusion_artifact, run_cli):
    result = run_cli("bench", *_SMALL, "--no-peak")
    assert result.returncode == 0, result.stderr
    assert "IMPORTED=\n" in result.stderr
    assert "fusion/onnxruntime/fp32" in result.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["resnet"], "unknown engine 'resnet'"),
        (["/nonexistent/engine"], "unknown engine '/nonexistent/engine'"),
        (["--batch", "0"], "batch sizes must be at least 1, got 0"),
        (["--batch", "1,x"], "--batch takes whole numbers"),
        (["--plot", "/nonexistent/dir/bench.png"], "cannot write the plot"),
        (["--baseline", "pytorch"], "unknown baseline 'pytorch'"),
    ],
)
def test_user_errors_are_one_line_exit_1(args, message, capsys):
    assert main(["bench", *args]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"fsanet: error: {message}") and err.count("\n") == 1, err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--iterations", "-5"], "argument --iterations: must be at least 1, got -5"),
        (["--warmup", "-1"], "argument --warmup: must be at least 0"),
        (["--duration", "0"], "argument --duration: must be more than 0"),
    ],
)
def test_bad_numbers_are_refused_by_the_parser_in_one_line(args, message, capsys):
    with pytest.raises(SystemExit) as e:
        main(["bench", *args])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.startswith(f"fsanet bench: error: {message}"), err
    assert err.count("\n") == 1


def test_unwritable_plot_in_a_real_process(tmp_path):
    (tmp_path / "file").write_text("")
    result = subprocess.run(
        [sys.executable, "-m", "fsanet", "bench", "--plot", str(tmp_path / "file" / "b.png")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1
    assert result.stderr.startswith("fsanet: error: cannot write the plot")
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr


def test_report_type():
    report = benchmark([FakeEngine("A", [])], [1], iterations=1, warmup=0, peak=False)
    assert isinstance(report, BenchReport)
    assert json.loads(json.dumps(report.to_dict()))["results"][0]["ratio"] is None


def test_openvino_engines_get_the_flops_recorded_at_build(fusion_artifact):
    from fsanet.convert.options import BuildOptions
    from fsanet.convert.pipeline import build

    openvino = build(BuildOptions.create(backend="openvino"))
    report = fsanet.benchmark(
        [str(fusion_artifact.path), str(openvino.path)],
        [1],
        iterations=2,
        rounds=1,
        warmup=0,
        peak=False,
    )
    onnx_count, ir_count = (r.flops for r in report.results)
    assert onnx_count is not None and ir_count is not None
    assert ir_count.per_image == pytest.approx(onnx_count.per_image, rel=1e-6)
    assert any("build time" in note for note in ir_count.notes)

"""Run under qemu-aarch64 by tests/arm: what an emulated aarch64 CPU detects and computes.

argv[1] is a JSON object, every part optional: {"crops": npy path, "engines": {backend:
artifact dir}, "fp16_model": ONNX path or null, "fp16_output": its output, "fp16_crops": how
many crops it runs on, "work": a writable folder, "builds": [[precision, backend], ...],
"sources": the host's pickled fsanet.convert.sources.Sources (converted graphs and
TensorFlow's reference on a subset of AFLW2000), "calibration_size": for the builds,
"predict": the arguments of an `fsanet predict` run in this process}. Prints one JSON object
(the last line): the machine; with crops, OpenVINO's view of the CPU, per engine its fused
angles, what executed and the seconds per crop, for the fp16 model the kernels ONNX
Runtime's profiler saw and its angles, and `--precision auto`'s candidate builds; per build,
its manifest or the one-line refusal; predict's exit code.

An emulated process cannot start another aarch64 program: everything runs in this one.
"""

from __future__ import annotations

import contextlib
import io
import json
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np

from fsanet.core.machine import this_machine
from fsanet.engine.artifact import Artifact
from fsanet.engine.pose import PoseEngine


def openvino_view() -> dict:
    import openvino as ov

    core = ov.Core()
    return {
        "version": ov.__version__,
        "capabilities": list(core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")),
        "default_hint": core.get_property("CPU", "INFERENCE_PRECISION_HINT").get_type_name(),
        "hints": {hint: compiled_as(core, hint) for hint in ("f32", "f16", "bf16")},
    }


def compiled_as(core, hint: str) -> dict:
    """A one-convolution model compiled with this hint: the hint OpenVINO kept, and the
    precision its execution graph says the convolution runs in."""
    import openvino as ov
    import openvino.opset13 as ops

    x = ops.parameter([1, 8, 16, 16], ov.Type.f32, name="x")
    weights = ops.constant(np.ones((8, 8, 3, 3), np.float32))
    conv = ops.convolution(x, weights, [1, 1], [1, 1], [1, 1], [1, 1])
    model = ov.Model([conv], [x], "probe")
    compiled = core.compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": hint})
    kept = compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()
    convs = [
        op.get_rt_info()["runtimePrecision"].astype(str)
        for op in compiled.get_runtime_model().get_ordered_ops()
        if op.get_rt_info()["layerType"].astype(str) == "Convolution"
    ]
    return {"kept": kept, "conv": convs}


def run_engine(path: str, crops: np.ndarray) -> dict:
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        engine = PoseEngine.from_artifact(Artifact.load(path), threads=1)
    with engine:
        engine(crops[:1])  # compile / first-run costs out of the timing
        start = time.perf_counter()
        angles = engine(crops)
        seconds = (time.perf_counter() - start) / len(crops)
        execution = engine.execution()
    return {"angles": angles.tolist(), "execution": execution, "seconds_per_crop": seconds,
            "note": err.getvalue()}  # fmt: skip


def profile_fp16(model: str, output: str, crops: np.ndarray, work: Path) -> dict:
    """The fp16 ONNX model in ONNX Runtime with its profiler on: the kernel and input type of
    every heavy node that ran, and the Casts left in the optimised graph."""
    import onnx
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.enable_profiling = True
    options.profile_file_prefix = str(work / "fp16")
    options.optimized_model_filepath = str(work / "fp16-optimized.onnx")
    session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    start = time.perf_counter()
    batch = crops.astype(np.float32)
    outputs = [session.run([output], {name: batch[i : i + 1]})[0] for i in range(len(batch))]
    seconds = (time.perf_counter() - start) / len(crops)
    events = json.loads(Path(session.end_profiling()).read_text())
    kernels: Counter[str] = Counter()
    for event in events:
        args = event.get("args", {})
        if event.get("cat") != "Node" or not event["name"].endswith("_kernel_time"):
            continue
        op = args.get("op_name", "?")
        if op in ("Cast",) or "Conv" in op or "MatMul" in op or "Gemm" in op:
            types = [next(iter(t)) for t in args.get("input_type_shape", [])[:1]]
            kernels[f"{op}:{types[0] if types else '?'}"] += 1
    optimized = onnx.load(str(work / "fp16-optimized.onnx"), load_external_data=False)
    return {
        "kernels": dict(kernels),
        "casts_in_graph": sum(n.op_type == "Cast" for n in optimized.graph.node),
        "angles": np.concatenate(outputs).tolist(),
        "seconds_per_crop": seconds,
    }


def run_builds(task: dict, work: Path) -> list[dict]:
    """fsanet's own build on this CPU, from the host's sources (no TensorFlow here): each
    precision is refused in one line or written with its manifest (what executed, accuracy
    against TensorFlow's MAE on the same crops)."""
    import os
    import pickle

    from fsanet.convert.options import BuildOptions
    from fsanet.convert.pipeline import build
    from fsanet.core.errors import FsanetError

    os.environ["FSANET_HOME"] = str(work / "home")
    sources = pickle.loads(Path(task["sources"]).read_bytes())
    results = []
    for precision, backend in task["builds"]:
        entry: dict = {"precision": precision, "backend": backend}
        start = time.perf_counter()
        try:
            options = BuildOptions.create(
                precision=precision, backend=backend, calibration_size=task["calibration_size"]
            )
            with contextlib.redirect_stderr(io.StringIO()):
                entry["manifest"] = build(options, sources=sources).manifest.to_dict()
        except FsanetError as e:
            entry["refused"] = str(e)
        entry["seconds"] = time.perf_counter() - start
        results.append(entry)
    return results


def auto_candidates() -> list[dict]:
    """The builds `--precision auto` would measure here, or why each is skipped."""
    from fsanet.convert.options import BuildOptions
    from fsanet.measure.tune.candidates import builds

    base = BuildOptions.create(precision="auto")
    return [
        {"backend": b.backend, "precision": b.precision, "layout": b.layout, "skipped": b.skipped}
        for b in builds(base, this_machine())
    ]


def predict(args: list[str]) -> int:
    from fsanet.cli.main import main as cli

    try:
        return cli(args) or 0
    except SystemExit as e:
        return int(e.code or 0)


def main() -> dict:
    task = json.loads(sys.argv[1])
    out: dict = {"machine": this_machine().to_dict()}
    if "crops" in task:  # the probe: runtimes' view, host-built engines, auto's candidates
        crops = np.load(task["crops"])
        out |= {"openvino": openvino_view(), "engines": {}}
        for backend, path in task["engines"].items():
            out["engines"][backend] = run_engine(path, crops)
        if task.get("fp16_model"):
            n = int(task.get("fp16_crops", 4))
            model, output = task["fp16_model"], task.get("fp16_output", "fusion")
            out["fp16"] = profile_fp16(model, output, crops[:n], Path(task["work"]))
        out["auto"] = auto_candidates()
    if task.get("predict"):
        out["predict"] = predict(task["predict"])
    if task.get("builds"):
        out["builds"] = run_builds(task, Path(task["work"]))
    return out


if __name__ == "__main__":
    print(json.dumps(main()))

"""Engines built on this x86-64 host, run on three emulated aarch64 CPUs (see conftest.py):
the machine each one detects, fp32 angles equal to the host's under ONNX Runtime and under
OpenVINO (f32 hint), OpenVINO's view of fp16, and where ONNX Runtime really runs an fp16
graph's convolutions in fp16."""

from __future__ import annotations

import json
import os
import platform
import shutil
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from fsanet.core.machine import usable_cores
from fsanet.engine.artifact import Artifact
from fsanet.engine.pose import PoseEngine

if platform.machine() not in ("x86_64", "AMD64"):
    pytest.skip("the emulated ARM suite runs on x86-64 hosts", allow_module_level=True)
_missing = [t for t in ("qemu-aarch64-static", "debootstrap") if shutil.which(t) is None]
if _missing and not os.environ.get("CI"):
    pytest.skip(
        f"{' and '.join(_missing)} not installed (apt-get install qemu-user-static debootstrap; "
        ".ci/run installs them)",
        allow_module_level=True,
    )

NUM_CROPS = 30  # ~0.3-1 s each per backend under emulation
FP16_CROPS = 3  # ~2.5 s each: enough for the profiler, not for accuracy
TOLERANCE_DEG = 1e-3


@dataclass(frozen=True)
class Cpu:
    model: str
    isa_class: str
    features: tuple[str, ...]
    fp16: bool  # FP16 arithmetic (ARMv8.2 asimdhp)


CPUS = {
    # FP16, dotprod, BF16, I8MM, SVE: an ARMv8.6+ server (Neoverse V1/V2-like).
    "max,sme=off": Cpu(
        "QEMU max",
        "sve+fp16+dotprod+i8mm+bf16",
        ("asimd", "fphp", "asimdhp", "asimddp", "asimdfhm", "i8mm", "bf16", "sve", "sve2"),
        fp16=True,
    ),
    # FP16 and dotprod, no SVE: Graviton2, Ampere Altra.
    "neoverse-n1": Cpu(
        "Neoverse N1", "neon+fp16+dotprod", ("asimd", "fphp", "asimdhp", "asimddp"), fp16=True
    ),
    # NEON only (ARMv8.0): Raspberry Pi 4, Graviton1.
    "cortex-a72": Cpu("Cortex-A72", "neon", ("asimd",), fp16=False),
}


@pytest.fixture(scope="module")
def crops(aflw2000) -> np.ndarray:
    images = aflw2000.evaluation_subset().images
    return images[:: len(images) // NUM_CROPS][:NUM_CROPS]


@pytest.fixture(scope="module")
def openvino_artifact(shared) -> Artifact:
    from fsanet.convert.options import BuildOptions
    from fsanet.convert.pipeline import build

    return build(BuildOptions.create(backend="openvino"))


@pytest.fixture(scope="module")
def fp16_model(fusion_artifact, aflw2000, tmp_path_factory) -> Path | None:
    """The fused engine's graph in ONNX Runtime's mixed fp16 (fsanet's own to_fp16: Conv,
    MatMul and Gemm in fp16, the ranges fp16 cannot hold kept in fp32)."""
    try:
        import onnx

        from fsanet.convert.onnx_precision import to_fp16
    except ImportError:
        return None
    model = onnx.load(str(fusion_artifact.model_path(fusion_artifact.manifest.models[0])))
    calibration = aflw2000.evaluation_subset().images[::20][:64].astype(np.float32)
    path = tmp_path_factory.mktemp("arm-fp16") / "fusion-fp16.onnx"
    onnx.save(to_fp16(model, calibration), str(path))
    return path


@pytest.fixture(scope="module")
def host(fusion_artifact, openvino_artifact, crops) -> dict[str, np.ndarray]:
    """The host's fp32 angles on the same crops."""
    angles = {}
    for backend, artifact in (("onnxruntime", fusion_artifact), ("openvino", openvino_artifact)):
        with PoseEngine.from_artifact(artifact, threads=1) as engine:
            angles[backend] = engine(crops)
    return angles


@pytest.fixture(scope="module")
def emulated(
    arm_harness, fusion_artifact, openvino_artifact, fp16_model, crops, tmp_path_factory
) -> dict[str, dict]:
    """What each emulated CPU reports and computes: one probe per CPU model, run side by side
    (each single-threaded)."""
    folder = tmp_path_factory.mktemp("arm")
    np.save(folder / "crops.npy", crops)

    def run(cpu: str) -> dict:
        arm = arm_harness
        view, reported = arm.make_view(arm.root, folder / "views", cpu)
        work = folder / "work" / view.name
        work.mkdir(parents=True)
        task = {
            "crops": str(folder / "crops.npy"),
            "engines": {
                "onnxruntime": str(fusion_artifact.path),
                "openvino": str(openvino_artifact.path),
            },
            "fp16_model": str(fp16_model) if fp16_model else None,
            "fp16_output": "fusion",
            "fp16_crops": FP16_CROPS,
            "work": str(work),
        }
        done = arm.emulate(arm.root, view, cpu, arm.engine_probe, json.dumps(task), timeout=900)
        return {**arm.last_json(done, f"{cpu}: engine_probe"), "reported": reported}

    with ThreadPoolExecutor(len(CPUS)) as pool:
        return dict(zip(CPUS, pool.map(run, CPUS), strict=True))


@pytest.mark.parametrize("cpu", CPUS)
def test_the_machine_is_read_from_the_emulated_cpu(emulated, cpu):
    """getauxval and sysfs, as ONNX Runtime and OpenVINO read them; /proc/cpuinfo here says
    whatever the view wrote, and fsanet does not read it."""
    machine, expected = emulated[cpu]["machine"], CPUS[cpu]
    assert machine["arch"] == "aarch64" and machine["source"] == "hwcap"
    assert machine["model"] == expected.model
    assert machine["isa_class"] == expected.isa_class
    assert tuple(machine["features"]) == expected.features
    assert machine["cores"] == usable_cores()


@pytest.mark.parametrize("cpu", CPUS)
def test_fp32_onnxruntime_gives_the_hosts_angles(emulated, host, cpu):
    run = emulated[cpu]["engines"]["onnxruntime"]
    there = np.asarray(run["angles"])
    assert np.abs(there - host["onnxruntime"]).max() < TOLERANCE_DEG
    assert run["execution"]["precision"] == "fp32"


@pytest.mark.parametrize("cpu", CPUS)
def test_fp32_openvino_with_the_f32_hint_gives_the_hosts_angles(emulated, host, cpu):
    """OpenVINO on ARM defaults to f16 where the CPU has FP16; the engine's fp32 label sets
    the f32 hint, and the runtime reports it ran every convolution in fp32."""
    run = emulated[cpu]["engines"]["openvino"]
    there = np.asarray(run["angles"])
    assert np.abs(there - host["openvino"]).max() < TOLERANCE_DEG
    assert np.abs(there - host["onnxruntime"]).max() < TOLERANCE_DEG
    execution = run["execution"]
    assert execution["inference_precision"] == "fp32"
    assert set(execution["ops"]["conv"]) == {"fp32"}


@pytest.mark.parametrize("cpu", CPUS)
def test_openvino_offers_fp16_only_where_the_cpu_has_it(emulated, cpu):
    view = emulated[cpu]["openvino"]
    assert ("FP16" in view["capabilities"]) == CPUS[cpu].fp16
    assert view["default_hint"] == ("f16" if CPUS[cpu].fp16 else "f32")


@pytest.mark.parametrize("cpu", CPUS)
def test_openvino_never_runs_bf16_on_arm(emulated, cpu):
    """Asked for bf16 (or f16), OpenVINO's ARM plugin keeps f16 where the CPU has FP16 and
    f32 where it has not, and says so only in the compiled model's properties: a bf16 label
    would be false on every ARM CPU, BF16 hardware included (`max,sme=off` has it)."""
    hints, fp16 = emulated[cpu]["openvino"]["hints"], CPUS[cpu].fp16
    assert hints["f32"] == {"kept": "f32", "conv": ["f32"]}
    reduced = {"kept": "f16", "conv": ["f16"]} if fp16 else {"kept": "f32", "conv": ["f32"]}
    assert hints["f16"] == hints["bf16"] == reduced


@pytest.mark.parametrize("cpu", CPUS)
def test_an_engine_built_on_x86_says_where_it_was_checked(emulated, fusion_artifact, cpu):
    note = emulated[cpu]["engines"]["onnxruntime"]["note"].strip().splitlines()
    assert len(note) == 1 and note[0].startswith("fsanet: note: engine"), note
    built = fusion_artifact.manifest.machine["isa_class"]
    assert f"built and checked on a {built} CPU" in note[0]
    assert f"this one is {CPUS[cpu].isa_class}" in note[0]


@pytest.mark.parametrize("cpu", CPUS)
def test_onnxruntime_runs_fp16_convolutions_in_fp16_only_with_fp16_arithmetic(
    emulated, fp16_model, cpu
):
    """The profiler's kernels: on a CPU with FP16 every convolution runs on float16 inputs;
    without it ONNX Runtime casts them back to fp32 (an fp16 label would be false there)."""
    if fp16_model is None:
        pytest.skip("fsanet.convert.onnx_precision.to_fp16 is not available")
    fp16 = emulated[cpu]["fp16"]
    convs = {k: n for k, n in fp16["kernels"].items() if "Conv" in k.split(":")[0]}
    assert convs, fp16["kernels"]
    input_types = {k.split(":")[1] for k in convs}
    assert input_types == ({"float16"} if CPUS[cpu].fp16 else {"float"}), convs


def test_what_ran_where(emulated, host, fp16_model):
    """One line per CPU model (shown with -rA), and everything the probes returned in
    $FSANET_ARM_RESULTS when set (docs/ARM.md quotes them). fp16 here is a sanity bound on a
    few crops, not the accuracy check (0.02° of MAE over AFLW2000) a build makes."""
    lines = []
    for cpu, result in emulated.items():
        ort, ov = result["engines"]["onnxruntime"], result["engines"]["openvino"]
        line = (
            f"{cpu}: {result['machine']['model']}, {result['machine']['isa_class']}; "
            f"fp32 max |Δ| vs host: onnxruntime {_max_diff(ort, host['onnxruntime']):.1e}°, "
            f"openvino {_max_diff(ov, host['openvino']):.1e}°; "
            f"{ort['seconds_per_crop']:.2f} / {ov['seconds_per_crop']:.2f} s per crop (emulated)"
        )
        if fp16 := result.get("fp16"):
            change = np.abs(np.asarray(fp16["angles"]) - host["onnxruntime"][:FP16_CROPS]).max()
            line += f"; fp16 kernels {fp16['kernels']}, max |Δ| {change:.3f}°"
            assert change < 1.0
        lines.append(line)
    print("\n".join(lines))
    if target := os.environ.get("FSANET_ARM_RESULTS"):
        Path(target).write_text(json.dumps(emulated, indent=1))


def _max_diff(run: dict, host: np.ndarray) -> float:
    return float(np.abs(np.asarray(run["angles"]) - host).max())

"""The smaller ISA, tested on any x86-64 host: `qemu-x86_64 -cpu Haswell` (Debian's
qemu-user) runs one process on an emulated AVX2-only CPU (no AVX-512, VNNI, BF16, AMX), so
the runtimes pick their AVX2 kernels. About 30x slower: a few dozen crops per engine.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from fsanet.convert.options import BuildOptions
from fsanet.convert.pipeline import build
from fsanet.convert.precision import int8_schemes
from fsanet.core.errors import BuildError
from fsanet.core.machine import Machine, this_machine
from fsanet.engine.pose import PoseEngine
from fsanet.faces.vision.detect import YuNet

QEMU = shutil.which("qemu-x86_64")
NUM_CROPS = 48
HERE = this_machine()

if QEMU is None and not os.environ.get("CI"):
    pytest.skip(
        "qemu-x86_64 is not installed (apt-get install qemu-user; .ci/run installs it)",
        allow_module_level=True,
    )
if HERE.arch != "x86_64":
    pytest.skip("the emulated AVX2 CPU is an x86-64 one", allow_module_level=True)


@pytest.fixture(scope="module")
def int8_engines(fusion_artifact) -> dict[str, Path | str]:
    """ONNX Runtime int8 engines with u8u8 and u8s8 weights, built and checked here. Where
    this CPU has no VNNI, u8s8 saturates and its build is refused: the refusal is kept."""
    engines: dict[str, Path | str] = {"fp32": fusion_artifact.path}
    for scheme in ("u8u8", "u8s8"):
        options = BuildOptions.create(precision="int8", int8_scheme=scheme)
        try:
            engines[scheme] = build(options).path
        except BuildError as e:
            engines[scheme] = str(e)
    return engines


@pytest.fixture(scope="module")
def avx2(int8_engines, flip_artifact, aflw2000, shared, tmp_path_factory) -> dict:
    """What the emulated AVX2 CPU reports and computes (one qemu process)."""
    assert QEMU is not None, "CI installs qemu-user: it must be here"
    crops = aflw2000.evaluation_subset().images[:: 1969 // NUM_CROPS][:NUM_CROPS]
    folder = tmp_path_factory.mktemp("isa")
    path = folder / "crops.npy"
    np.save(path, crops)
    frame = classroom_frame(shared)
    np.save(folder / "frame.npy", frame)
    task = {
        "engines": {
            **{k: str(v) for k, v in int8_engines.items() if isinstance(v, Path)},
            "flip": str(flip_artifact.path),
        },
        "crops": str(path),
        "frame": str(folder / "frame.npy"),
    }
    probe = Path(__file__).with_name("isa_probe.py")
    done = subprocess.run(
        [QEMU, "-cpu", "Haswell", sys.executable, str(probe), json.dumps(task)],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result["crops"], result["frame"] = crops, frame
    return result


def classroom_frame(shared: Path) -> np.ndarray:
    capture = cv2.VideoCapture(str(shared / "videos" / "classroom.mp4"))
    ok, frame = capture.read()
    capture.release()
    assert ok
    return frame


def test_the_machine_is_read_from_the_cpu_the_process_runs_on(avx2):
    machine = Machine.from_dict(avx2["machine"])
    assert machine.isa_class == "avx2" and machine.source == "cpuid"
    assert {"avx2", "fma"} <= set(machine.features)
    assert not {"avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16"} & set(machine.features)
    assert not machine.native_bf16 and not machine.int8_dot
    # The rule the build follows there: u8u8 weights first, as measured.
    assert int8_schemes("onnxruntime", machine)[0] == "u8u8"


def test_features_agree_with_numpy_here():
    from numpy._core._multiarray_umath import __cpu_features__ as numpy_sees

    names = {"avx2": "AVX2", "avx512f": "AVX512F", "avx512_vnni": "AVX512VNNI"}
    names["avx512_bf16"] = "AVX512BF16"
    for ours, theirs in names.items():
        assert HERE.has(ours) == bool(numpy_sees[theirs]), ours


def test_bf16_is_refused_on_avx2_in_one_line(avx2):
    answer = avx2["bf16_build"]
    assert answer["code"] == 1
    lines = answer["stderr"].strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("fsanet: error: bf16 is not available on openvino here")
    assert "avx512_bf16 or amx_bf16" in lines[0] and "--precision auto" in lines[0]


def test_an_engine_built_on_another_cpu_class_says_so(avx2, fusion_artifact):
    note = avx2["notes"]["fp32"].strip().splitlines()
    if HERE.isa_class == "avx2":
        assert note == []  # the same class: nothing to say
        pytest.skip("this machine is an AVX2 one too: the note for another CPU class not seen")
    assert len(note) == 1 and note[0].startswith("fsanet: note: engine")
    assert f"built and checked on a {HERE.isa_class} CPU" in note[0] and "is avx2" in note[0]


def test_fp32_runs_the_same_on_avx2(avx2, fusion_engine):
    here = fusion_engine(avx2["crops"])
    there = np.asarray(avx2["angles"]["fp32"])
    assert np.abs(here - there).max() < 1e-3


def test_flip_tta_runs_the_same_on_avx2(avx2, flip_artifact):
    """The flip pass (mirror, concatenate, average) adds no kernel that differs by ISA."""
    with PoseEngine.from_artifact(flip_artifact) as engine:
        here = engine(avx2["crops"])
    there = np.asarray(avx2["angles"]["flip"])
    assert np.abs(here - there).max() < 1e-3


def test_yunet_finds_the_same_faces_on_avx2(avx2):
    """YuNet on ONNX Runtime: AVX2 convolution kernels, the same faces (7 in this frame)."""
    here = YuNet().detect(avx2["frame"])
    there = np.asarray(avx2["faces"])
    assert len(here) == len(there) == 7
    rows = np.asarray([[*f.box, f.score, *f.landmarks.ravel()] for f in here])  # type: ignore[union-attr]
    assert np.abs(rows - there).max() < 1e-2  # pixels (and score)


def test_u8u8_int8_gives_the_same_angles_on_avx2(avx2, int8_engines):
    """Integer kernels without saturation compute the same numbers on every CPU, so the
    accuracy measured at build time holds on AVX2 too."""
    with PoseEngine.from_artifact(build_artifact(int8_engines["u8u8"])) as engine:
        here = engine(avx2["crops"])
    there = np.asarray(avx2["angles"]["u8u8"])
    assert np.abs(here - there).max() < 0.05


def test_u8s8_int8_saturates_without_vnni(avx2, int8_engines):
    """u8s8 is exact with VNNI and saturates on AVX2: the reason for the per-CPU rule."""
    u8s8 = int8_engines["u8s8"]
    if not HERE.int8_dot:  # no VNNI here: the build measured it outside its bound
        assert isinstance(u8s8, str) and "outside its ±0.1° bound" in u8s8
        pytest.skip(
            "no VNNI here: u8s8 refused at build (outside its bound); exact-with-VNNI vs "
            "saturating-on-AVX2 angles not measured"
        )
    with PoseEngine.from_artifact(build_artifact(u8s8)) as engine:
        here = engine(avx2["crops"])
    there = np.asarray(avx2["angles"]["u8s8"])
    assert np.abs(here - there).max() > 0.5


def build_artifact(path: Path | str):
    from fsanet.engine.artifact import Artifact

    assert isinstance(path, Path), path
    return Artifact.load(path)

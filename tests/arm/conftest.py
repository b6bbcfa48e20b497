"""64-bit ARM, tested on an x86-64 host under QEMU user-mode emulation.

What runs
    Each test module here runs small Python scripts (cpu_probe.py, engine_probe.py) in an
    aarch64 Python 3.11 under `qemu-aarch64-static -L VIEW -cpu MODEL VIEW/usr/bin/python3`,
    with PYTHONPATH set to this checkout's src/ and to the runtime's aarch64 wheels. The
    engines are built on the host (the session fixtures in tests/conftest.py); the emulated
    process only loads and runs them, and its answers are compared with the host's.

The aarch64 root (`.ci/arm_root.sh`, cached in $FSANET_ARM_ROOT or /var/cache/fsanet-arm)
    `debootstrap --foreign --arch=arm64 --variant=minbase --include=python3,python3-venv
    bookworm` from the Debian mirror apt uses, every .deb unpacked with `dpkg-deb -x` (there is
    no binfmt_misc on CI machines, so no second stage and no chroot), and numpy, onnx,
    onnxruntime, openvino, opencv-python-headless, scipy, platformdirs and tqdm installed as
    aarch64 wheels by the host's pip (`--only-binary=:all: --platform` with every manylinux
    tag from 2_35 down to 2_17 and manylinux2014: with manylinux2014 alone pip silently picks
    onnxruntime 1.16 and openvino 2023.1), at the versions the host runs. No TensorFlow. The
    fixture below runs the script (a no-op when the root is already built); about 1.5 minutes
    and 750 MB the first time.

One view of the root per CPU model
    QEMU 7.2 passes the host's /proc/cpuinfo through, and `import onnxruntime` then segfaults
    (its cpuinfo library expects an aarch64 one); `-L` redirects any absolute path that
    exists under the root. So each CPU model gets a folder of symlinks to the root plus its
    own proc/cpuinfo and sys/.../midr_el1, written from what that emulated CPU reports
    (HWCAPs and MIDR_EL1, read by cpu_probe.py first). ONNX Runtime and OpenVINO read the CPU
    part from there; fsanet reads features from getauxval and the part from sysfs.

Limits
    An emulated process cannot start another aarch64 program (no subprocess of
    sys.executable, no pytest-xdist, no ensurepip): each probe does its work in-process.
    Emulation is 50-300x slower than hardware (~0.3-0.7 s per crop in fp32, ~2.5 s in fp16)
    and its speed says nothing about ARM CPUs. `-cpu max` emulates SME, with which OpenVINO's
    fp32 output is wrong in QEMU 7.2: use `max,sme=off`.

Running it
    `apt-get install qemu-user-static debootstrap` (as root: debootstrap needs it), then
    `pytest tests/arm`. Without those tools the tests skip and say why, except under CI
    (`CI` set), where a missing tool fails.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from fsanet.core.machine import arm_features

REPO = Path(__file__).resolve().parents[2]
SRC = REPO / "src"
SETUP = REPO / ".ci" / "arm_root.sh"
HERE = Path(__file__).resolve().parent
CPU_PROBE = HERE / "cpu_probe.py"
ENGINE_PROBE = HERE / "engine_probe.py"
ROOT = Path(os.environ.get("FSANET_ARM_ROOT", "/var/cache/fsanet-arm"))
QEMU = shutil.which("qemu-aarch64-static")
MISSING = [t for t in ("qemu-aarch64-static", "debootstrap") if shutil.which(t) is None]
# Host folders an emulated process must see as they are (devices, temporaries, the host's
# sysfs for everything the view does not override, and /var where the wheels are cached:
# through a symlinked /var, os.path.realpath sends OpenCV's loader to a path that is not there).
HOST_FOLDERS = {"dev", "proc", "sys", "tmp", "run", "var"}


def unavailable(reason: str) -> None:
    """Skip with the reason on a developer's machine; under CI the harness must run."""
    if os.environ.get("CI"):
        pytest.fail(reason)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def arm_root() -> Path:
    """The aarch64 root and wheels, built by .ci/arm_root.sh unless already there."""
    if MISSING:
        unavailable(f"{' and '.join(MISSING)} not installed")
    env = {**os.environ, "PYTHON": sys.executable}
    done = subprocess.run(
        ["bash", str(SETUP), str(ROOT)], env=env, capture_output=True, text=True, timeout=1200
    )
    if done.returncode != 0:
        unavailable(f"{SETUP.name} could not build {ROOT}: {done.stderr.strip()[-500:]}")
    return ROOT


def emulate(
    root: Path, view: Path, cpu: str, script: Path, *args: str, timeout: float = 600
) -> subprocess.CompletedProcess[str]:
    """One aarch64 Python process on the emulated `cpu`, this checkout's src on its path."""
    assert QEMU is not None
    cache = root / "pycache"  # aarch64 Python's bytecode, kept between runs where writable
    env = {
        **os.environ,
        "PYTHONPATH": f"{SRC}{os.pathsep}{root / 'wheels'}",
        "PYTHONPYCACHEPREFIX": str(cache if os.access(root, os.W_OK) else view / ".pycache"),
        "OMP_NUM_THREADS": "1",
    }
    python = view / "usr" / "bin" / "python3"
    return subprocess.run(
        [QEMU, "-L", str(view), "-cpu", cpu, str(python), str(script), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def last_json(done: subprocess.CompletedProcess[str], what: str) -> dict:
    assert done.returncode == 0, f"{what}: exit {done.returncode}\n{done.stderr[-3000:]}"
    return json.loads(done.stdout.strip().splitlines()[-1])


def cpuinfo(hwcap: int, hwcap2: int, midr: int, cpus: int) -> str:
    """/proc/cpuinfo as arm64 Linux writes it, for the CPU that reported these values."""
    features = " ".join(["fp", *arm_features(hwcap, hwcap2), "cpuid"])
    block = (
        "processor\t: {n}\nBogoMIPS\t: 50.00\nFeatures\t: {features}\n"
        "CPU implementer\t: 0x{imp:02x}\nCPU architecture: 8\nCPU variant\t: 0x{var:x}\n"
        "CPU part\t: 0x{part:03x}\nCPU revision\t: {rev}\n\n"
    )
    fields = {
        "features": features,
        "imp": midr >> 24 & 0xFF,
        "var": midr >> 20 & 0xF,
        "part": midr >> 4 & 0xFFF,
        "rev": midr & 0xF,
    }
    return "".join(block.format(n=n, **fields) for n in range(cpus))


def make_view(root: Path, folder: Path, cpu: str) -> tuple[Path, dict]:
    """The root as the emulated `cpu` should see it (see the module docstring), and what
    that CPU reported: {"hwcap", "hwcap2", "midr"}."""
    sysroot = root / "sysroot"
    reported = last_json(emulate(root, sysroot, cpu, CPU_PROBE, timeout=120), f"{cpu}: cpu_probe")
    view = folder / cpu.replace(",", "_").replace("=", "-")
    view.mkdir(parents=True)
    for entry in sysroot.iterdir():
        if entry.name not in HOST_FOLDERS:
            (view / entry.name).symlink_to(entry)
    cpus = os.cpu_count() or 1
    (view / "proc").mkdir()
    (view / "proc" / "cpuinfo").write_text(
        cpuinfo(reported["hwcap"], reported["hwcap2"], reported["midr"], cpus)
    )
    for n in range(cpus):
        ids = view / "sys" / "devices" / "system" / "cpu" / f"cpu{n}" / "regs" / "identification"
        ids.mkdir(parents=True)
        (ids / "midr_el1").write_text(f"0x{reported['midr']:016x}\n")
    return view, reported


@pytest.fixture(scope="session")
def arm_harness(arm_root: Path) -> SimpleNamespace:
    """The helpers above, for test modules (conftest modules are not importable by name)."""
    return SimpleNamespace(
        root=arm_root, emulate=emulate, make_view=make_view, last_json=last_json,
        engine_probe=ENGINE_PROBE,
    )  # fmt: skip

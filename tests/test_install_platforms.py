"""`pip install -e '.[all]'` resolves on 64-bit ARM (Linux aarch64, macOS arm64) and stays
what it was on x86-64, checked from any host without emulation.

pip cannot check this: with `--platform` it picks wheels for the target but evaluates
environment markers (`platform_machine`, `sys_platform`) for the machine it runs on, so the
x86-64 host would choose tensorflow-cpu for an aarch64 target. uv's resolver (the `dev`
extra) evaluates the markers and the wheel tags for `--python-platform`; with
`--only-binary :all:` a package without a wheel for the platform fails the resolution.

Measured with these extras: OpenVINO's aarch64 wheels need glibc 2.31 (openvino 2025.2) or
2.35 (2026.x); everything else resolves from glibc 2.28. On macOS, onnxruntime 1.24+ needs
macOS 14 (macOS 13 gets 1.23). Skipped, with the reason, where uv or PyPI is missing.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# (uv --python-platform, MACOSX_DEPLOYMENT_TARGET or None, the TensorFlow package expected)
PLATFORMS = [
    ("aarch64-manylinux_2_31", None, "tensorflow"),  # Ubuntu 20.04, Debian 11, Amazon Linux 2023
    ("aarch64-manylinux_2_35", None, "tensorflow"),  # Ubuntu 22.04+, Debian 12, Pi OS, JetPack 6
    ("aarch64-apple-darwin", "13.0", "tensorflow"),
    ("aarch64-apple-darwin", "14.0", "tensorflow"),
    ("x86_64-manylinux_2_28", None, "tensorflow-cpu"),
]
# The runtime's own packages: each must come from a wheel on every platform above.
RUNTIME = ("numpy", "onnx", "onnxruntime", "opencv-python-headless", "openvino", "scipy")


def uv_command() -> list[str] | None:
    if path := shutil.which("uv"):
        return [path]
    try:
        import uv  # the dev extra's wheel: its binary sits beside this interpreter

        return [uv.find_uv_bin()]
    except (ImportError, FileNotFoundError):
        return None


def pypi_reachable() -> bool:
    try:
        with urllib.request.urlopen("https://pypi.org/simple/uv/", timeout=10):
            return True
    except OSError:
        return False


@pytest.fixture(scope="module")
def uv() -> list[str]:
    command = uv_command()
    if command is None:
        pytest.skip("uv is not installed (it comes with the dev extra: pip install -e '.[dev]')")
    if not pypi_reachable():
        pytest.skip("PyPI is unreachable: the resolution needs its package metadata")
    return command


def resolve(uv: list[str], platform: str, macos: str | None, extras: bool = True) -> dict[str, str]:
    """{package: version} that `pip install .[all]` (or `.` alone) would install there."""
    env = {k: v for k, v in os.environ.items() if k != "MACOSX_DEPLOYMENT_TARGET"}
    if macos:
        env["MACOSX_DEPLOYMENT_TARGET"] = macos
    done = subprocess.run(
        [*uv, "pip", "compile", str(REPO / "pyproject.toml"), *(["--all-extras"] * extras),
         "--python-platform", platform, "--python-version", "3.11", "--only-binary", ":all:",
         "--no-header", "--no-annotate", "--quiet", "--no-config"],
        capture_output=True, text=True, timeout=300, env=env, cwd=REPO,
    )  # fmt: skip
    where = f"{platform}{f' (macOS {macos})' if macos else ''}"
    assert done.returncode == 0, f"`.{'[all]' * extras}` on {where}:\n{done.stderr}"
    pins = {}
    for line in done.stdout.splitlines():
        name, sep, version = line.strip().partition("==")
        if sep:
            pins[name.split("[")[0].lower()] = version.split(";")[0].strip()
    return pins


@pytest.mark.parametrize(("platform", "macos", "tensorflow"), PLATFORMS)
def test_all_extras_resolve_from_wheels(uv, platform, macos, tensorflow):
    pins = resolve(uv, platform, macos)
    other = {"tensorflow": "tensorflow-cpu", "tensorflow-cpu": "tensorflow"}[tensorflow]
    assert tensorflow in pins and other not in pins, sorted(pins)
    assert set(RUNTIME) <= set(pins), sorted(set(RUNTIME) - set(pins))
    print(
        f"{platform} {macos or ''}: " + ", ".join(f"{p} {pins[p]}" for p in (*RUNTIME, tensorflow))
    )


def test_the_runtime_alone_resolves_on_older_arm_linux(uv):
    """`pip install -e .` (ONNX Runtime, no extras) on glibc 2.28 (RHEL 8, Debian 10), where
    OpenVINO has no aarch64 wheel."""
    pins = resolve(uv, "aarch64-manylinux_2_28", None, extras=False)
    assert "onnxruntime" in pins and "tensorflow" not in pins

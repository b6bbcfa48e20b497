"""The real command in a fresh process, as a user runs it."""

import json
import subprocess
import sys

import pytest

from fsanet.cli import main

# Runs the CLI, then reports which heavy modules the process imported.
_PROBE = (
    "import sys\n"
    "from fsanet.cli import main\n"
    "code = main(sys.argv[1:])\n"
    "heavy = sorted(m for m in ('tensorflow', 'tf2onnx', 'keras') if m in sys.modules)\n"
    "print('IMPORTED=' + ','.join(heavy), file=sys.stderr)\n"
    "sys.exit(code)\n"
)


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", _PROBE, *args], capture_output=True, text=True, timeout=300
    )


def test_eval_never_imports_tensorflow(fusion_artifact):
    result = _run("eval", "--json", "-q")
    assert result.returncode == 0, result.stderr
    assert "IMPORTED=\n" in result.stderr
    data = json.loads(result.stdout)
    assert data["num_images"] == 1969 and data["mae"] == pytest.approx(5.07, abs=0.01)
    assert set(data) >= {"num_images", "mae", "yaw", "pitch", "roll", "variants"}


def test_run_prints_the_seed_block(fusion_artifact):
    result = subprocess.run(
        [sys.executable, "-m", "fsanet", "run", "--num", "100"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert lines[-1] == "-" * 80 and lines[-2].startswith(" MAE = ")
    assert "AFLW2000: 100 images" in lines[0]


def test_build_json_is_the_manifest(fusion_artifact, capsys):
    assert main(["build", "--json", "-q"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["path"] == str(fusion_artifact.path)
    assert data["parity"]["max_abs_diff_deg"] <= 1e-3


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["eval", "resnet"], "fsanet: error: unknown model 'resnet'"),
        (["eval", "--precision", "int4"], "fsanet: error: unknown precision"),
        (["eval", "--dataset", "/nonexistent/AFLW2000.npz"], "fsanet: error: /nonexistent"),
        (["eval", "--engine", "/nonexistent"], "fsanet: error: /nonexistent"),
    ],
)
def test_user_errors_are_one_line_exit_1(fusion_artifact, args, message):
    result = _run(*args)
    assert result.returncode == 1
    error_lines = [line for line in result.stderr.splitlines() if line.startswith("fsanet:")]
    assert len(error_lines) == 1 and error_lines[0].startswith(message), result.stderr
    assert "Traceback" not in result.stderr


def test_bad_number_is_an_argument_error(capsys):
    with pytest.raises(SystemExit) as e:
        main(["eval", "--num", "0"])
    assert e.value.code == 2 and "must be at least 1" in capsys.readouterr().err

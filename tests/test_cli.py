"""The real command in a fresh process, as a user runs it."""

import json
import subprocess
import sys

import pytest

from fsanet.cli import main


def test_eval_never_imports_tensorflow(fusion_artifact, run_cli):
    result = run_cli("eval", "--json", "-q")
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
def test_user_errors_are_one_line_exit_1(fusion_artifact, run_cli, args, message):
    result = run_cli(*args)
    assert result.returncode == 1
    error_lines = [line for line in result.stderr.splitlines() if line.startswith("fsanet:")]
    assert len(error_lines) == 1 and error_lines[0].startswith(message), result.stderr
    assert "Traceback" not in result.stderr


def test_bad_number_is_an_argument_error(capsys):
    with pytest.raises(SystemExit) as e:
        main(["eval", "--num", "0"])
    assert e.value.code == 2 and "must be at least 1" in capsys.readouterr().err

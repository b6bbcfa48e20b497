"""The real command in a fresh process, as a user runs it."""

import json
import os
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


def _one_error_line(result: subprocess.CompletedProcess) -> str:
    """The run's only `fsanet:` error line (exit 1, no traceback)."""
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("fsanet: error:")]
    assert len(errors) == 1, result.stderr
    return errors[0]


@pytest.fixture
def a_file(tmp_path):
    path = tmp_path / "a-file.txt"
    path.write_text("not a folder")
    return path


@pytest.mark.parametrize(
    ("option", "value", "expected"),
    [
        ("--output", "{file}/out", "cannot write {file}/out: Not a directory"),
        ("--output", "{file}", "cannot write {file}: {file} is a file, not a folder"),
        (
            "--jsonl",
            "{file}/f.jsonl",
            "cannot write {file}/f.jsonl: {file} is a file, not a folder",
        ),
        ("--jsonl", "{dir}", "cannot write {dir}: it is a folder; give a file name"),
    ],
)
def test_predict_unwritable_outputs_are_one_line(
    fusion_artifact, run_cli, a_file, tmp_path, option, value, expected
):
    image = tmp_path / "gray.png"
    image.write_bytes(b"")  # never read: the outputs are checked first
    fill = {"file": str(a_file), "dir": str(tmp_path)}
    result = run_cli("predict", str(image), "-q", option, value.format(**fill))
    assert _one_error_line(result) == f"fsanet: error: {expected.format(**fill)}"


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes to read-only folders")
def test_predict_output_in_a_read_only_folder_is_one_line(fusion_artifact, run_cli, tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    result = run_cli("predict", str(tmp_path), "-q", "--jsonl", str(locked / "f.jsonl"))
    assert "Permission denied" in _one_error_line(result)


def test_build_with_fsanet_home_a_file_is_one_line(run_cli, a_file, monkeypatch):
    monkeypatch.setenv("FSANET_HOME", str(a_file))
    line = _one_error_line(run_cli("build", "-q", timeout=120))
    assert line.startswith(f"fsanet: error: cannot write {a_file}/") and "Not a directory" in line


def test_build_with_an_unwritable_engines_folder_is_one_line(run_cli, tmp_path, monkeypatch):
    # As root a mode cannot refuse writing, so the engines "folder" is a file: the same check.
    home = tmp_path / "home"
    home.mkdir()
    (home / "engines").write_text("")
    monkeypatch.setenv("FSANET_HOME", str(home))
    line = _one_error_line(run_cli("build", "-q", timeout=120))
    assert line.startswith(f"fsanet: error: cannot write {home / 'engines'}")
    assert not [p for p in home.iterdir() if p.name != "engines"]  # nothing started


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["serve", "--max-body-mb", "nan"], "expected a finite number, got 'nan'"),
        (["serve", "--timeout", "nan"], "expected a finite number, got 'nan'"),
        (["serve", "--body-timeout", "inf"], "expected a finite number, got 'inf'"),
        (["serve", "--max-wait-ms", "nan"], "expected a finite number, got 'nan'"),
        (["serve", "--max-wait-ms", "-1"], "must be at least 0, got -1"),
        (["serve", "--timeout", "0"], "must be more than 0, got 0"),
        (["serve", "--score-threshold", "1.5"], "must be at most 1, got 1.5"),
        (["serve", "--port", "70000"], "must be at most 65535"),
        (["loadtest", "--duration", "nan"], "expected a finite number"),
        (["loadtest", "--timeout", "-2"], "must be more than 0"),
        (["bench", "--duration", "nan"], "expected a finite number"),
        (["bench", "--iterations", "0"], "must be at least 1"),
        (["bench", "--warmup", "-1"], "must be at least 0"),
        (["predict", "x.jpg", "--score-threshold", "nan"], "expected a finite number"),
        (["predict", "x.jpg", "--max-pixels", "0"], "must be at least 1"),
        (["predict", "x.jpg", "--max-faces", "many"], "expected a whole number, got 'many'"),
        (["eval", "--score-threshold", "-0.1"], "must be at least 0"),
        (["build", "--calibration-size", "-5"], "must be at least 0"),
    ],
)
def test_numbers_are_checked_by_the_parser(capsys, argv, message):
    with pytest.raises(SystemExit) as e:
        main(argv)
    err = capsys.readouterr().err
    assert e.value.code == 2 and message in err, err


def test_zero_is_allowed_where_it_means_something(capsys):
    from fsanet.cli import parser

    args = parser().parse_args(["serve", "--max-wait-ms", "0", "--port", "0"])
    assert args.max_wait_ms == 0.0 and args.port == 0
    args = parser().parse_args(["build", "--calibration-size", "0"])
    assert args.calibration_size == 0


def test_a_full_disk_on_stdout_is_one_line(shared):
    """Results written to a full device (/dev/full: ENOSPC on write): one line, exit 1."""
    with open("/dev/full", "w") as full:
        done = subprocess.run(
            [sys.executable, "-m", "fsanet", "fetch", "capsule", "--mirror", str(shared)],
            stdout=full,
            stderr=subprocess.PIPE,
            text=True,
            timeout=120,
        )
    assert done.returncode == 1
    assert done.stderr.strip() == "fsanet: error: cannot write the output: No space left on device"

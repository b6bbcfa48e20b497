import json

import pytest

from fsanet.cli import main
from fsanet.core.errors import FsanetError
from fsanet.core.machine import this_machine
from fsanet.measure.evaluate import AxisErrors
from fsanet.measure.matrix import AccuracyMatrix, MatrixRow, configurations, write_markdown


def test_every_supported_combination():
    configs = configurations()
    assert ("onnxruntime", "fp32", None) in configs
    assert ("openvino", "bf16", None) in configs
    assert ("onnxruntime", "bf16", None) not in configs  # bf16 is OpenVINO's
    assert ("openvino", "fp16", None) in configs  # the f16 hint, where the CPU runs it
    assert [c for c in configs if c[:2] == ("openvino", "int8")] == [
        ("openvino", "int8", "minmax"),
        ("openvino", "int8", "entropy"),
        ("openvino", "int8", "percentile"),
    ]


def test_unknown_names():
    with pytest.raises(FsanetError, match="unknown precision 'fp64'"):
        configurations(precisions=["fp64"])
    with pytest.raises(FsanetError, match="unknown backend 'tensorrt'"):
        configurations(backends=["tensorrt"])


def test_the_machine_is_part_of_the_matrix(tmp_path):
    # Reduced precisions' accuracy depends on the CPU: the matrix says which one it ran on.
    errors = AxisErrors(1.0, 2.0, 3.0, 2.0)
    row = MatrixRow("openvino", "bf16", None, errors, None, 0.1, 0.02, True, "engine")
    machine = this_machine()
    matrix = AccuracyMatrix(1969, errors, [row], 1.0, machine.to_dict())
    data = json.loads(json.dumps(matrix.to_dict()))
    assert data["machine"] == machine.to_dict()
    assert data["machine"]["isa_class"] == machine.isa_class
    assert f"machine: {machine}" in str(matrix)
    text = write_markdown(matrix, tmp_path / "ACCURACY.md", "fsanet matrix").read_text()
    assert str(machine) in text and "| openvino | bf16 |" in text


def test_matrix_command_writes_the_table(shared, tmp_path, capsys):
    output = tmp_path / "ACCURACY.md"
    args = ["matrix", "--precisions", "fp32,fp16,bf16", "-q", "--json"]
    assert main([*args, "--backends", "openvino,onnxruntime", "--output", str(output)]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["num_images"] == 1969
    assert data["machine"] == this_machine().to_dict()
    assert data["reference"]["mae"] == pytest.approx(5.07, abs=0.01)
    rows = {(r["backend"], r["precision"]): r for r in data["rows"]}
    missing = {(r["backend"], r["precision"]): r["reason"] for r in data["not_built"]}
    assert rows[("openvino", "fp32")]["max_abs_diff_deg"] < 1e-3
    assert rows[("onnxruntime", "fp32")]["max_abs_diff_deg"] < 1e-3
    # Per CPU class: bf16 where the CPU has it; fp16 never on ONNX Runtime's x86 kernels.
    bf16_here = this_machine().native_bf16
    if bf16_here:
        assert rows[("openvino", "bf16")]["within_bound"] is True
    else:
        assert "no bf16 arithmetic" in missing[("openvino", "bf16")]
    if this_machine().arch == "x86_64":
        assert "no fp16 convolution" in missing[("onnxruntime", "fp16")]
    if not this_machine().native_fp16:
        assert "would run the engine in fp32" in missing[("openvino", "fp16")]
    assert set(rows) | set(missing) == {
        ("openvino", "fp32"), ("openvino", "bf16"), ("onnxruntime", "fp32"),
        ("onnxruntime", "fp16"), ("openvino", "fp16"),
    }  # fmt: skip
    text = output.read_text()
    assert "| openvino | fp32 |" in text and "fsanet matrix" in text
    # Every configuration has its line in the table: measured, or "-" where not built.
    for backend, precision in set(rows) | set(missing):
        unbuilt = f"| {backend} | {precision} | - | none | - |"
        assert f"| {backend} | {precision} |" in text
        assert (unbuilt in text) == ((backend, precision) in missing), unbuilt
    if not bf16_here:
        pytest.skip("no native bf16 here: refused as expected; bf16 accuracy not measured")


def test_matrix_with_flip_shows_each_engine_without_and_with_it(shared, capsys):
    args = ["matrix", "--backends", "onnxruntime", "--precisions", "fp32", "--tta", "flip"]
    assert main([*args, "-q", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    plain, flip = data["rows"]
    assert (plain["tta"], flip["tta"]) == ("none", "flip")
    # Flip averaging helps: against the plain engine measured in the same command.
    assert flip["mae"] < plain["mae"] and flip["within_bound"] and plain["within_bound"]
    # Each row is held to TensorFlow run the same way: flip against TF's two calls averaged.
    assert data["reference_tta"]["flip"]["mae"] == pytest.approx(flip["mae"], abs=1e-3)
    assert flip["max_abs_diff_deg"] < 1e-3

import json

import pytest

from fsanet.cli import main
from fsanet.errors import FsanetError
from fsanet.matrix import configurations


def test_every_supported_combination():
    configs = configurations()
    assert ("onnxruntime", "fp32", None) in configs
    assert ("openvino", "bf16", None) in configs
    assert ("onnxruntime", "bf16", None) not in configs  # bf16 is OpenVINO's
    assert ("openvino", "fp16", None) not in configs
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


def test_matrix_command_writes_the_table(shared, tmp_path, capsys):
    output = tmp_path / "ACCURACY.md"
    args = ["matrix", "--backends", "openvino", "--precisions", "fp32,bf16", "-q", "--json"]
    assert main([*args, "--output", str(output)]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["num_images"] == 1969
    assert data["reference"]["mae"] == pytest.approx(5.07, abs=0.01)
    rows = {(r["backend"], r["precision"]): r for r in data["rows"]}
    assert set(rows) == {("openvino", "fp32"), ("openvino", "bf16")}
    assert rows[("openvino", "fp32")]["max_abs_diff_deg"] < 1e-3
    assert rows[("openvino", "bf16")]["within_bound"] is True
    text = output.read_text()
    assert "| openvino | bf16 |" in text and "fsanet matrix" in text

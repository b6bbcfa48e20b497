import json
import shutil

import pytest

from fsanet.artifact import Artifact
from fsanet.cli import main
from fsanet.errors import ArtifactError


@pytest.fixture
def copy(fusion_artifact, tmp_path):
    target = tmp_path / fusion_artifact.name
    shutil.copytree(fusion_artifact.path, target)
    return target


def test_round_trip(copy, fusion_artifact):
    assert Artifact.load(copy).manifest == fusion_artifact.manifest


def test_damaged_manifest(copy):
    (copy / "manifest.json").write_text("{ not json")
    with pytest.raises(ArtifactError, match=r"manifest\.json is damaged"):
        Artifact.load(copy)


def test_manifest_missing_a_field(copy):
    data = json.loads((copy / "manifest.json").read_text())
    del data["models"]
    (copy / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(ArtifactError, match="damaged"):
        Artifact.load(copy)


def test_damaged_model(copy):
    model = copy / "fusion.onnx"
    model.write_bytes(model.read_bytes()[:1000])
    with pytest.raises(ArtifactError, match=r"fusion\.onnx does not match its manifest"):
        Artifact.load(copy)


def test_missing_model(copy):
    (copy / "fusion.onnx").unlink()
    with pytest.raises(ArtifactError, match=r"fusion\.onnx is missing"):
        Artifact.load(copy)


def test_not_an_artifact(tmp_path):
    with pytest.raises(ArtifactError, match="not an fsanet engine"):
        Artifact.load(tmp_path)


def test_cli_eval_on_damaged_artifact_is_one_line(copy, capsys):
    (copy / "fusion.onnx").write_bytes(b"oops")
    assert main(["eval", "--engine", str(copy), "-q"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("fsanet: error: ") and "fusion.onnx" in err and err.count("\n") == 1

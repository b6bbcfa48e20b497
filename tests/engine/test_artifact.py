import json
import shutil

import pytest

from fsanet.cli import main
from fsanet.core.errors import ArtifactError
from fsanet.engine.artifact import Artifact


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


def _edit(copy, change) -> None:
    path = copy / "manifest.json"
    data = json.loads(path.read_text())
    data = change(data)
    path.write_text(json.dumps(data))


def _set(key, value):
    def change(data):
        data[key] = value
        return data

    return change


def _set_model(key, value):
    def change(data):
        data["models"][0][key] = value
        return data

    return change


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda data: [data], r"it is a list .*expected a JSON object"),
        (_set("batch_size", 0), "batch_size is a int \\(0\\), expected a whole number"),
        (_set("batch_size", "eight"), 'batch_size is a str \\("eight"\\)'),
        (_set("precision", "int3"), "precision is .*int3.*expected one of fp32, fp16, bf16, int8"),
        (_set("backend", "tensorrt"), "backend is .*tensorrt.*expected one of onnxruntime"),
        (_set("opset", True), "opset is a bool"),
        (_set("variants", []), "variants is a list"),
        (_set("variants", ["capsule", "resnet"]), "variants: no model provides resnet"),
        (_set("runtime", "split"), "runtime is a str"),
        (_set("models", None), "models is null"),
        (_set("surprise", 1), "unknown field 'surprise'"),
        (_set_model("file", None), r"models\[0\]\.file is null"),
        (_set_model("file", "../../etc/passwd"), r"models\[0\]\.file .* is not a file name"),
        (_set_model("outputs", ["fusion"]), r"models\[0\]\.outputs is a list"),
        (_set_model("input", 3), r"models\[0\]\.input is a int"),
    ],
)
def test_a_damaged_manifest_is_one_line_naming_the_field(copy, change, message):
    _edit(copy, change)
    with pytest.raises(ArtifactError, match=message) as e:
        Artifact.load(copy)
    assert "manifest.json is damaged" in str(e.value) and "\n" not in str(e.value)


def test_a_fixed_engine_needs_its_batch_size(copy):
    _edit(copy, _set("batch_mode", "fixed"))
    with pytest.raises(ArtifactError, match="batch_size is null, expected a whole number"):
        Artifact.load(copy)


@pytest.mark.parametrize("key", ["input", "outputs"])
def test_tensor_names_missing_from_the_model_fail_at_load(copy, key):
    from fsanet.engine.pose import PoseEngine

    value = "image" if key == "input" else {"capsule": "capsule", "var": "var", "noS": "nos"}
    _edit(copy, _set_model(key, value))
    engine = PoseEngine.from_artifact(Artifact.load(copy))
    wrong = "'image'" if key == "input" else "'nos'"
    with pytest.raises(ArtifactError, match=f"fusion.onnx has no tensor named {wrong}"):
        engine.load()


def test_cli_on_a_damaged_manifest_is_one_line(copy, run_cli):
    _edit(copy, _set("batch_size", "eight"))
    result = run_cli("eval", "--engine", str(copy), "--num", "1", "-q")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("fsanet:")]
    assert len(errors) == 1 and "batch_size" in errors[0], result.stderr


def test_engine_precisions_are_the_converters(fusion_artifact):
    from fsanet.convert.precision import PRECISIONS
    from fsanet.engine.artifact import ENGINE_PRECISIONS

    assert set(ENGINE_PRECISIONS) == set(PRECISIONS)

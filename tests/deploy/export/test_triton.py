"""`fsanet export triton`: the model repository Triton expects, checked against the model."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("tritonclient", reason="the `export` extra is not installed")

from fsanet.cli import main
from fsanet.core.errors import FsanetError
from fsanet.core.files import sha256_file
from fsanet.deploy.export import (
    CurvePoint,
    TritonOptions,
    check_model_dir,
    export_triton,
    policy_from_curve,
)
from fsanet.deploy.export import triton as triton_module
from fsanet.deploy.export.check import model_config_pb2, parse_config
from fsanet.engine.artifact import Artifact

VARIANT_OUTPUTS = {"capsule", "var", "noS", "fusion"}


@pytest.fixture(scope="module")
def openvino_artifact(shared: Path) -> Artifact:
    pytest.importorskip(
        "openvino", reason="OpenVINO is not installed: its Triton export is not tested"
    )
    from fsanet.convert.options import BuildOptions
    from fsanet.convert.pipeline import build

    return build(BuildOptions.create(backend="openvino"))


@pytest.fixture(scope="module")
def fixed_artifact(shared: Path) -> Artifact:
    from fsanet.convert.options import BuildOptions
    from fsanet.convert.pipeline import build

    return build(BuildOptions.create(["capsule"], dynamic_batch=False, batch_size=4))


def _config(model_dir: Path):
    return parse_config((model_dir / "config.pbtxt").read_text(), model_dir)


def _kind(group) -> str:
    return model_config_pb2().ModelInstanceGroup.Kind.Name(group.kind)


def _dtype(tensor) -> str:
    return model_config_pb2().DataType.Name(tensor.data_type)


def _assert_layout(out: Path, name: str, files: tuple[str, ...]) -> None:
    """What Triton reads: OUT/<name>/config.pbtxt and OUT/<name>/1/<model files>; and no
    temporary folder left beside them."""
    assert sorted(p.name for p in out.iterdir()) == sorted(["README.md", name])
    assert sorted(p.name for p in (out / name).iterdir()) == ["1", "config.pbtxt"]
    assert sorted(p.name for p in (out / name / "1").iterdir()) == sorted(files)


def test_onnxruntime_fp32_measured(fusion_artifact: Artifact, tmp_path: Path):
    out = tmp_path / "repo"
    export = export_triton(fusion_artifact, out, TritonOptions(max_batch=4, measure_seconds=0.1))
    _assert_layout(out, "fsanet_fusion", ("model.onnx",))
    model_dir = out / "fsanet_fusion"
    # The engine's own model file, byte for byte.
    assert sha256_file(model_dir / "1" / "model.onnx") == fusion_artifact.manifest.models[0].sha256
    config = _config(model_dir)
    assert (config.name, config.backend, config.max_batch_size) == (
        "fsanet_fusion",
        "onnxruntime",
        4,
    )
    assert [(t.name, _dtype(t), list(t.dims)) for t in config.input] == [
        ("input", "TYPE_FP32", [64, 64, 3])
    ]
    assert {t.name for t in config.output} == VARIANT_OUTPUTS
    assert all(_dtype(t) == "TYPE_FP32" and list(t.dims) == [3] for t in config.output)
    assert [_kind(g) for g in config.instance_group] == ["KIND_CPU"]
    assert not config.HasField("optimization")
    # The batcher's settings are the measured curve's, and within max_batch_size.
    batching = export.batching
    assert batching is not None and batching.measured
    assert [p.batch for p in batching.curve] == [1, 2, 4]
    assert all(p.throughput > 0 and p.latency_ms > 0 for p in batching.curve)
    assert list(config.dynamic_batching.preferred_batch_size) == list(batching.preferred)
    assert config.dynamic_batching.max_queue_delay_microseconds == batching.delay_us
    assert all(1 < b <= 4 for b in batching.preferred)
    assert check_model_dir(model_dir).inputs[0].name == "input"


def test_the_model_takes_what_the_config_declares(fusion_artifact: Artifact, tmp_path: Path):
    """Feed the exported file as Triton would: the config's input, a batch of its dims; the
    config's outputs come back as [batch] + their dims, equal to the engine's angles."""
    import onnxruntime as ort

    from fsanet.engine.pose import PoseEngine

    export_triton(fusion_artifact, tmp_path, TritonOptions(measure=False))
    config = _config(tmp_path / "fsanet_fusion")
    session = ort.InferenceSession(str(tmp_path / "fsanet_fusion" / "1" / "model.onnx"))
    crops = np.random.default_rng(0).uniform(0, 255, (3, *config.input[0].dims))
    names = [t.name for t in config.output]
    results = session.run(names, {config.input[0].name: crops.astype(np.float32)})
    for tensor, result in zip(config.output, results, strict=True):
        assert list(result.shape) == [3, *tensor.dims]
    with PoseEngine.from_artifact(fusion_artifact) as engine:
        expected = engine(crops.astype(np.float32))
    np.testing.assert_allclose(results[names.index("fusion")], expected, atol=1e-3)


def test_a_flip_engine_exports_its_averaged_output_and_views(
    flip_artifact: Artifact, tmp_path: Path
):
    import onnxruntime as ort

    from fsanet.engine.pose import PoseEngine

    export = export_triton(flip_artifact, tmp_path, TritonOptions(measure=False))
    config = _config(tmp_path / "fsanet_fusion")
    names = [t.name for t in config.output]
    assert {"fusion", "fusion/crop", "fusion/mirror"} <= set(names)
    assert {t.name for t in export.check.outputs} == set(names)  # checked against the model
    session = ort.InferenceSession(str(tmp_path / "fsanet_fusion" / "1" / "model.onnx"))
    crops = np.random.default_rng(1).uniform(0, 255, (3, *config.input[0].dims)).astype(np.float32)
    fused, crop = session.run(["fusion", "fusion/crop"], {config.input[0].name: crops})
    with PoseEngine.from_artifact(flip_artifact) as engine:
        np.testing.assert_allclose(fused, engine(crops), atol=1e-3)
    assert np.abs(fused - crop).max() > 0.01  # the averaged output, not the crop alone


def test_openvino_fp32(openvino_artifact: Artifact, tmp_path: Path):
    export = export_triton(openvino_artifact, tmp_path, TritonOptions(measure=False))
    _assert_layout(tmp_path, "fsanet_fusion", ("model.xml", "model.bin"))
    model = openvino_artifact.manifest.models[0]
    version = tmp_path / "fsanet_fusion" / "1"
    assert sha256_file(version / "model.xml") == model.sha256
    assert sha256_file(version / "model.bin") == model.weights_sha256
    config = _config(tmp_path / "fsanet_fusion")
    assert config.backend == "openvino" and config.max_batch_size == 64
    assert {t.name for t in config.output} == VARIANT_OUTPUTS
    assert [list(t.dims) for t in config.input] == [[64, 64, 3]]
    assert "HINT_BF16" not in config.parameters  # fp32: no bf16 hint
    assert [_kind(g) for g in config.instance_group] == ["KIND_CPU"]
    # Not measured: `fsanet serve`'s defaults, and said so.
    assert list(config.dynamic_batching.preferred_batch_size) == [32]
    assert config.dynamic_batching.max_queue_delay_microseconds == 5000
    assert export.batching is not None and "--no-measure" in export.batching.source
    assert check_model_dir(tmp_path / "fsanet_fusion").backend == "openvino"


def test_gpu_fp16_is_tensorrt_on_the_fp32_model(fusion_artifact: Artifact, tmp_path: Path):
    export = export_triton(
        fusion_artifact, tmp_path, TritonOptions(name="pose_gpu", gpu=True, fp16=True)
    )
    _assert_layout(tmp_path, "pose_gpu", ("model.onnx",))
    version = tmp_path / "pose_gpu" / "1"
    assert sha256_file(version / "model.onnx") == fusion_artifact.manifest.models[0].sha256
    config = _config(tmp_path / "pose_gpu")
    assert [_kind(g) for g in config.instance_group] == ["KIND_GPU"]
    [accelerator] = config.optimization.execution_accelerators.gpu_execution_accelerator
    assert accelerator.name == "tensorrt"
    assert accelerator.parameters["precision_mode"] == "FP16"
    # One TensorRT profile over the batch sizes Triton may send.
    assert accelerator.parameters["trt_profile_min_shapes"] == "input:1x64x64x3"
    assert accelerator.parameters["trt_profile_max_shapes"] == "input:64x64x64x3"
    assert accelerator.parameters["trt_profile_opt_shapes"] == "input:32x64x64x3"
    # This CPU's curve says nothing about a GPU: not measured, and said so.
    assert export.batching is not None and not export.batching.measured
    assert "--gpu" in export.batching.source
    assert export.accelerator == "tensorrt FP16" and export.device == "KIND_GPU"
    assert any("GPU" in note for note in export.notes)


def test_fixed_batch_engine_declares_its_batch(fixed_artifact: Artifact, tmp_path: Path):
    export = export_triton(fixed_artifact, tmp_path)
    config = _config(tmp_path / "fsanet_capsule")
    assert config.max_batch_size == 0 and not config.HasField("dynamic_batching")
    assert [list(t.dims) for t in config.input] == [[4, 64, 64, 3]]
    assert [(t.name, list(t.dims)) for t in config.output] == [("pose", [4, 3])]
    assert export.batching is None and export.fixed_batch == 4
    assert "exactly 4 crops" in (tmp_path / "README.md").read_text()


def test_readme_has_the_server_command_and_a_client(fusion_artifact: Artifact, tmp_path: Path):
    export_triton(fusion_artifact, tmp_path, TritonOptions(name="pose", measure=False))
    readme = (tmp_path / "README.md").read_text()
    assert "tritonserver --model-repository=/models" in readme
    assert f"tritonserver --model-repository={tmp_path}" in readme
    client = readme.split("```python\n", 1)[1].split("```", 1)[0]
    compile(client, "client", "exec")  # valid Python
    assert 'client.infer("pose"' in client and 'InferInput("input"' in client
    assert '"fusion"' in client


# --- the check fails on what Triton would reject ---------------------------------------------


@pytest.fixture(scope="module")
def exported(fusion_artifact: Artifact, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("triton")
    export_triton(fusion_artifact, out, TritonOptions(measure=False))
    return out / "fsanet_fusion"


def _corrupt(source: Path, tmp_path: Path, old: str, new: str) -> Path:
    import shutil

    target = tmp_path / source.name
    shutil.copytree(source, target)
    text = (target / "config.pbtxt").read_text()
    assert old in text
    (target / "config.pbtxt").write_text(text.replace(old, new, 1))
    return target


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ('name: "input"', 'name: "image"', "input 'image' is not in the model"),
        ('name: "input"', 'name: "image"', "model input 'input' missing"),
        ("dims: [ 64, 64, 3 ]", "dims: [ 64, 64, 4 ]", "input 'input' dims.*dimension 2 is 4"),
        ("dims: [ 64, 64, 3 ]", "dims: [ 64, 64 ]", "rank 2 \\+ the batch dimension"),
        ('name: "fusion"', 'name: "fused"', "output 'fused' is not in the model"),
        ("dims: [ 3 ]", "dims: [ 4 ]", "output 'capsule' dims \\[4\\]"),
        ("data_type: TYPE_FP32", "data_type: TYPE_FP16", "is TYPE_FP16, the model's is TYPE_FP32"),
        ('name: "fsanet_fusion"', 'name: "other"', "name 'other' is not the directory's"),
        ("preferred_batch_size: [ 32 ]", "preferred_batch_size: [ 128 ]", "preferred batch size"),
        ("max_batch_size: 64", "max_batch_size: 0", "dynamic_batching with max_batch_size 0"),
        ("kind: KIND_CPU", "kind: KIND_CPU\n    gpus: [ 0 ]", "KIND_CPU instance group names"),
        ("max_batch_size: 64", "max_batch_size: 64\nmax_batch: 2", "not a valid Triton model"),
        ("data_type: TYPE_FP32", "data_type: FP32", "not a valid Triton model config"),
    ],
)
def test_check_fails_on_a_wrong_config(exported: Path, tmp_path: Path, old, new, message):
    check_model_dir(exported)  # the original passes
    with pytest.raises(FsanetError, match=message) as e:
        check_model_dir(_corrupt(exported, tmp_path, old, new))
    assert "\n" not in str(e.value)


def test_check_fails_on_a_missing_or_wrong_model_file(exported: Path, tmp_path: Path):
    target = _corrupt(exported, tmp_path, "max_batch_size: 64", "max_batch_size: 64")
    (target / "1" / "model.onnx").unlink()
    with pytest.raises(FsanetError, match=r"1/model\.onnx missing"):
        check_model_dir(target)
    (target / "1" / "model.onnx").write_bytes(b"not onnx")
    with pytest.raises(FsanetError, match="not a readable ONNX model"):
        check_model_dir(target)


def test_a_config_that_fails_its_check_is_never_written(
    fusion_artifact: Artifact, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    render = triton_module.render_config

    def wrong_input(*args, **kwargs):
        return render(*args, **kwargs).replace('name: "input"', 'name: "image"')

    monkeypatch.setattr(triton_module, "render_config", wrong_input)
    with pytest.raises(FsanetError, match="input 'image' is not in the model"):
        export_triton(fusion_artifact, tmp_path, TritonOptions(measure=False))
    assert list(tmp_path.iterdir()) == []  # no model, no README, no temporary folder


def test_an_earlier_export_is_replaced_and_other_folders_kept(
    fusion_artifact: Artifact, tmp_path: Path
):
    (tmp_path / "fsanet_fusion" / "1").mkdir(parents=True)
    (tmp_path / "fsanet_fusion" / "config.pbtxt").write_text("old")
    (tmp_path / "fsanet_fusion" / "1" / "stale.onnx").write_text("old")
    export_triton(fusion_artifact, tmp_path, TritonOptions(measure=False))
    assert [p.name for p in (tmp_path / "fsanet_fusion" / "1").iterdir()] == ["model.onnx"]
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    with pytest.raises(FsanetError, match="exists and is not a Triton model"):
        export_triton(fusion_artifact, tmp_path, TritonOptions(name="mine", measure=False))
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep"


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (TritonOptions(fp16=True), "--fp16 needs --gpu"),
        (TritonOptions(name="../up"), "model name '../up'"),
        (TritonOptions(max_batch=0), "--max-batch must be at least 1"),
    ],
)
def test_bad_options(fusion_artifact: Artifact, tmp_path: Path, options, message):
    with pytest.raises(FsanetError, match=message):
        export_triton(fusion_artifact, tmp_path, options)
    assert list(tmp_path.iterdir()) == []


def test_engines_triton_cannot_serve_as_they_are(
    fusion_artifact: Artifact, openvino_artifact: Artifact, tmp_path: Path
):
    with pytest.raises(FsanetError, match="OpenVINO backend runs on CPUs only"):
        export_triton(openvino_artifact, tmp_path, TritonOptions(gpu=True, measure=False))
    m = fusion_artifact.manifest
    split = Artifact(fusion_artifact.path, dataclasses.replace(m, models=[*m.models] * 2))
    with pytest.raises(FsanetError, match="holds 2 model files"):
        export_triton(split, tmp_path, TritonOptions(measure=False))
    fp16 = Artifact(fusion_artifact.path, dataclasses.replace(m, precision="fp16"))
    with pytest.raises(FsanetError, match="fp16 ONNX Runtime engine runs in fp32"):
        export_triton(fp16, tmp_path, TritonOptions(measure=False))
    with pytest.raises(FsanetError, match="--gpu takes an fp32 engine"):
        export_triton(fp16, tmp_path, TritonOptions(gpu=True, measure=False))
    assert list(tmp_path.iterdir()) == []


# --- the batching policy ---------------------------------------------------------------------


def _curve(*points: tuple[int, float, float]) -> list[CurvePoint]:
    return [CurvePoint(b, t, ms) for b, t, ms in points]


def test_policy_prefers_the_knee_and_waits_one_single_call():
    curve = _curve((1, 100, 10.0), (8, 500, 16.0), (16, 920, 17.4), (32, 1000, 32.0))
    policy = policy_from_curve(curve, 32)
    assert policy.preferred == (16,)  # the first batch within 90% of the best throughput
    assert policy.delay_us == 10_000  # batch 1's call time
    assert policy.max_batch_size == 32 and policy.measured


def test_policy_without_gain_from_batching_does_not_wait():
    policy = policy_from_curve(_curve((1, 1000, 1.0), (4, 1010, 3.9)), 4)
    assert policy.preferred == () and policy.delay_us == 0


def test_policy_delay_is_bounded():
    slow = policy_from_curve(_curve((1, 1, 1000.0), (2, 10, 200.0)), 2)
    fast = policy_from_curve(_curve((1, 1e6, 0.001), (2, 1e7, 0.0002)), 2)
    assert (slow.delay_us, fast.delay_us) == (20_000, 50)


# --- the command -----------------------------------------------------------------------------


def test_cli_json(fusion_artifact: Artifact, tmp_path: Path, capsys: pytest.CaptureFixture):
    args = ["export", "triton", str(tmp_path), "--engine", str(fusion_artifact.path)]
    assert main([*args, "--no-measure", "--name", "pose", "--instances", "2", "--json", "-q"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["model_dir"] == str(tmp_path / "pose")
    assert set(data["files"]) == {"pose/config.pbtxt", "pose/1/model.onnx"}
    assert data["check"]["inputs"] == [
        {"name": "input", "data_type": "TYPE_FP32", "shape": [64, 64, 3]}
    ]
    assert _config(tmp_path / "pose").instance_group[0].count == 2


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--engine", "/nonexistent"], "fsanet: error: /nonexistent does not exist"),
        (["--engine", "{tmp}"], "is not an fsanet engine"),
        (["--fp16"], "fsanet: error: --fp16 needs --gpu"),
        (["capsule", "var"], "fsanet: error: export one model at a time"),
    ],
)
def test_cli_errors_are_one_line(fusion_artifact, tmp_path, run_cli, args, message):
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    result = run_cli("export", "triton", str(tmp_path / "repo"), *args, "--no-measure")
    assert result.returncode == 1, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("fsanet:")]
    assert len(errors) == 1 and message in errors[0], result.stderr
    assert "Traceback" not in result.stderr


def test_cli_gpu_with_an_openvino_engine(openvino_artifact, tmp_path, run_cli):
    result = run_cli("export", "triton", str(tmp_path), "--gpu", "--engine",
                     str(openvino_artifact.path))  # fmt: skip
    assert result.returncode == 1
    assert result.stderr.startswith("fsanet: error: --gpu: Triton's OpenVINO backend runs on CPUs")
    assert list(tmp_path.iterdir()) == []


def test_cli_out_is_a_file(fusion_artifact, tmp_path, run_cli):
    out = tmp_path / "repo"
    out.write_text("a file")
    result = run_cli("export", "triton", str(out), "--engine", str(fusion_artifact.path))
    assert result.returncode == 1
    assert result.stderr.startswith(f"fsanet: error: cannot write {out}: it is a file")


def test_without_the_extra_one_line_names_it(fusion_artifact, tmp_path):
    code = (
        "import sys\n"
        "sys.modules['tritonclient'] = None  # as if not installed\n"
        "from fsanet.cli import main\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, "export", "triton", str(tmp_path), "--engine",
         str(fusion_artifact.path)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        "fsanet: error: checking Triton configs needs tritonclient: pip install 'fsanet[export]'"
    ]
    assert list(tmp_path.iterdir()) == []

"""BuildOptions: the cache key of an engine must not move, or engines built before stop loading."""

import dataclasses

import pytest

from fsanet.convert.options import BuildOptions
from fsanet.core.errors import FsanetError
from fsanet.core.machine import Machine

# A fixed CPU, so the keys of reduced and tuned precisions (which hold the machine) are the
# same wherever the test runs.
XEON = Machine(
    "x86_64", "GenuineIntel", "Test Xeon", 8,
    ("avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512_vnni"), "cpuid",
)  # fmt: skip

# Computed by the code that built the engines in users' caches: change one only with a
# migration (or BUILDER_VERSION, on purpose).
PINNED = [
    ({}, "fusion-onnxruntime-fp32-dyn-ca80cbdfa0dd"),
    (
        {"models": ["capsule"], "dynamic_batch": False, "batch_size": 4},
        "capsule-onnxruntime-fp32-b4-1342af79e51b",
    ),
    ({"backend": "openvino"}, "fusion-openvino-fp32-dyn-8c4fff8779bc"),
    ({"optimize": False, "fuse": False}, "fusion-onnxruntime-fp32-dyn-b605c29ff8f9"),
    ({"layout": "stacked", "cores": "shared"}, "fusion-onnxruntime-fp32-dyn-8dbbea7701c2"),
    (
        {"backend": "openvino", "shapes": "dynamic", "tta": "flip"},
        "fusion-openvino-fp32-dyn-flip-c33772241814",
    ),
    ({"precision": "int8"}, "fusion-onnxruntime-int8-dyn-868b70e069f1"),
    (
        {
            "precision": "int8",
            "backend": "openvino",
            "calibration_method": "entropy",
            "calibration_size": 50,
        },
        "fusion-openvino-int8-dyn-648cb739a6a8",
    ),
    ({"precision": "int8", "int8_scheme": "u8u8"}, "fusion-onnxruntime-int8-dyn-d061e4e0bb12"),
    ({"precision": "auto"}, "fusion-auto-dyn-3cdf2dabdd91"),
    (
        {"precision": "auto", "tune_batches": [16, 1], "tta": "flip"},
        "fusion-auto-dyn-flip-a7aa4018f42d",
    ),
]


@pytest.mark.parametrize(("options", "name"), PINNED)
def test_cache_keys_do_not_move(monkeypatch, options, name):
    # key() asks its own module for the machine: patch it there, wherever that module is.
    monkeypatch.setitem(BuildOptions.key.__globals__, "this_machine", lambda: XEON)
    assert BuildOptions.create(**options).artifact_dir().name == name


# Each value no engine can be built from, and the words that refuse it.
BAD = [
    ({"precision": "fp8"}, "unknown precision 'fp8'"),
    ({"precision": "bf16"}, "precision bf16 is not available on onnxruntime: use openvino"),
    ({"layout": "wide"}, "unknown layout 'wide': choose plain, stacked"),
    ({"int8_scheme": "u4"}, "unknown int8 scheme 'u4' for onnxruntime: choose cpu, u8s8"),
    ({"cores": "many"}, "unknown cores 'many': choose split, shared"),
    ({"shapes": "odd"}, "unknown shapes 'odd': choose fixed, dynamic"),
    ({"precision": "auto", "tune_batches": [0]}, "tuning batch sizes must be at least 1"),
    ({"precision": "auto", "calibration_size": 0}, "auto .* needs calibration data"),
    ({"precision": "int8", "calibration_size": 0}, "int8 needs calibration data"),
    ({"precision": "int8", "calibration_method": "mse"}, "unknown calibration method 'mse'"),
    ({"batch_size": 0}, "batch size must be at least 1"),
    ({"backend": "tensorflow"}, "cannot build engines for backend 'tensorflow'"),
    ({"models": ["resnet"]}, "unknown model 'resnet'"),
]


def test_openvino_fp16_follows_what_openvino_runs_here():
    """OpenVINO's f16 hint is kept only on CPUs with FP16 arithmetic (ARMv8.2, AMX-FP16):
    asked of OpenVINO itself, and refused in one line where it would run fp32."""
    from fsanet.convert.openvino import compiled_as

    kept, convs = compiled_as("f16")
    if kept == "f16":
        assert BuildOptions.create(precision="fp16", backend="openvino").precision == "fp16"
        pytest.skip(f"this CPU runs f16 ({convs}): the refusal is tested on CPUs without it")
    with pytest.raises(FsanetError, match=r"fp16 is not available on openvino here: .* fp32;"):
        BuildOptions.create(precision="fp16", backend="openvino")


@pytest.mark.parametrize(("kwargs", "message"), BAD)
def test_bad_options(kwargs, message):
    with pytest.raises(FsanetError, match=message):
        BuildOptions.create(**kwargs)


@pytest.mark.parametrize(("kwargs", "message"), [b for b in BAD if "models" not in b[0]])
def test_replace_is_checked_as_create_is(kwargs, message):
    """Options made any other way are checked as well, with the same words."""
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in kwargs.items()}
    with pytest.raises(FsanetError, match=message):
        dataclasses.replace(BuildOptions.create(), **values)
    with pytest.raises(FsanetError, match=message):
        BuildOptions(**values)


def test_the_constructor_takes_canonical_names_only():
    with pytest.raises(FsanetError, match="precision 'FP32' is spelled fp32 here"):
        BuildOptions(precision="FP32")
    with pytest.raises(FsanetError, match=r"some of capsule, var, noS, got \['fusion'\]"):
        BuildOptions(variants=("fusion",))


def test_create_makes_spellings_canonical():
    made = BuildOptions.create(
        ["FUSION"], precision="Force_Float32", optimize=False, layout="stacked",
        tune_batches=[32, 1, 32],
    )  # fmt: skip
    assert made == BuildOptions(precision="fp32", optimize=False, tune_batches=(1, 32))
    assert BuildOptions.create(["capsule"]).fuse is False  # one variant: nothing to fuse
    assert BuildOptions.create(precision="AUTO").precision == "auto"

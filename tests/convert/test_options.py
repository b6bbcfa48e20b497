"""BuildOptions: the cache key of an engine must not move, or engines built before stop loading."""

import pytest

from fsanet.convert.pipeline import BuildOptions
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

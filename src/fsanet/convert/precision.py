"""The precisions an engine can be built in, each with what it means: how each backend gets
its model into it, whether this CPU runs it natively, what the runtime must report for the
engine to count as running it, and how far its accuracy may move. `PRECISIONS` is the one
registry that the build, the tuner's candidates and the refusal messages read.

The graph transforms themselves are in fsanet.convert.onnx_precision (ONNX Runtime: fp16
islands, int8 QDQ) and fsanet.convert.openvino (NNCF int8); this module imports neither
until a conversion or a support check runs, so reading the registry stays light.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fsanet.core.errors import FsanetError
from fsanet.core.machine import Machine

if TYPE_CHECKING:
    import numpy as np

CALIBRATION_METHODS = ("minmax", "entropy", "percentile")


@dataclass(frozen=True)
class Calibration:
    """What a conversion step may use: the calibration images (precisions that calibrate),
    the calibration method, and the int8 setting being tried (None: the default)."""

    images: np.ndarray | None = None
    method: str = "minmax"
    scheme: str | None = None


# A backend's model in (the ONNX graph for onnxruntime, the OpenVINO IR for openvino), the
# same kind of model in the precision out.
Convert = Callable[[Any, Calibration], Any]


def _as_is(model: Any, calibration: Calibration) -> Any:
    return model


def _runs_natively(machine: Machine) -> str | None:
    return None


@dataclass(frozen=True)
class Backend:
    """How one backend gets a precision: its conversion step, and why this CPU cannot run
    the result natively (None: it can). The check asks the runtime itself: a label that
    would not execute is worse than no engine."""

    convert: Convert = _as_is
    unsupported: Callable[[Machine], str | None] = _runs_natively
    # A step on the IR file once written (OpenVINO; for what its Python API cannot set).
    finish_ir: Callable[[Path], None] | None = None


@dataclass(frozen=True)
class Precision:
    """One precision: its spellings, the backends that run it and how, and what a build
    of it must show before it is written."""

    name: str
    aliases: tuple[str, ...]
    backends: dict[str, Backend]  # the backends that run it, and how
    needs_calibration: bool = False
    # How far its fusion MAE may move from TensorFlow's fp32 one on AFLW2000 (degrees).
    mae_bound: float = 1e-3
    # Held to TensorFlow's own outputs as well (fsanet.convert.verify.PARITY_TOLERANCE_DEG).
    parity: bool = False
    # The inference precision the runtime must report (OpenVINO's hint, which
    # fsanet.engine.backends.openvino sets from the engine's label): fp32 unless the
    # precision is a compile-time choice.
    hint: str = "fp32"
    # Its engine depends on this CPU's kernels, so the CPU class is part of its cache key.
    cpu_specific: bool = True
    # The graph layouts `--precision auto` tries it in (fsanet.convert.layout).
    tune_layouts: tuple[str, ...] = ("plain",)
    # The settings a build tries in order, keeping the first within the bound (int8's
    # schemes, per backend and CPU); None: one build, no settings.
    settings: Callable[[str, Machine], list[str]] | None = None

    def convert(self, backend: str, model: Any, calibration: Calibration) -> Any:
        return self.backends[backend].convert(model, calibration)

    def unsupported(self, backend: str, machine: Machine) -> str | None:
        return self.backends[backend].unsupported(machine)

    def attempts(self, backend: str, machine: Machine, asked: str = "cpu") -> list[str | None]:
        """The settings a build tries: the one asked for, or this CPU's in order ("cpu")."""
        if self.settings is None:
            return [None]
        return [asked] if asked != "cpu" else list(self.settings(backend, machine))

    def ran_as_labelled(self, executed: dict[str, Any]) -> bool:
        """Whether the runtime's own report (fsanet.engine.pose.PoseEngine.execution) says
        the convolutions ran in this precision, at its hint where the runtime has one."""
        hint = executed.get("inference_precision")
        return executed["precision"] == self.name and hint in (None, self.hint)


# Conversion steps.


def _onnx_fp16(model: Any, calibration: Calibration) -> Any:
    from fsanet.convert.onnx_precision import to_fp16

    return to_fp16(model, calibration.images)


def _onnx_int8(model: Any, calibration: Calibration) -> Any:
    from fsanet.convert.onnx_precision import quantize_int8

    scheme = INT8_SCHEMES[calibration.scheme or "u8s8"]
    return quantize_int8(
        model, calibration.images, calibration.method, scheme.weight, scheme.reduce_range
    )


def _openvino_int8(ir: Any, calibration: Calibration) -> Any:
    from fsanet.convert.openvino import quantize

    return quantize(ir, calibration.images, calibration.method, calibration.scheme or "performance")


def _openvino_fp16_ir(xml_path: Path) -> None:
    from fsanet.convert.openvino import keep_fp32_outside_convolutions

    keep_fp32_outside_convolutions(xml_path)


# Native support, asked of the runtimes.


def _is_arm(machine: Machine) -> bool:
    return machine.arch in ("aarch64", "arm64")


def _named(ov_type: str) -> str:
    return {"f32": "fp32", "f16": "fp16"}.get(ov_type, ov_type)


def _no_openvino_fp16(machine: Machine) -> str | None:
    from fsanet.convert.openvino import compiled_as

    kept, convs = compiled_as("f16")
    if kept == "f16" and convs and all(c == "f16" for c in convs):
        return None
    feature = "FP16 arithmetic (ARMv8.2 asimdhp)" if _is_arm(machine) else "AVX512-FP16/AMX-FP16"
    return (
        f"this CPU ({machine.model}, {machine.isa_class}) has no {feature}, so OpenVINO "
        f"would run the engine in {_named(kept)}"
    )


def _no_openvino_bf16(machine: Machine) -> str | None:
    from fsanet.convert.openvino import compiled_as

    kept, convs = compiled_as("bf16")
    if kept == "bf16" and convs and all(c == "bf16" for c in convs):
        return None
    if _is_arm(machine):  # measured: OpenVINO's ARM plugin turns a bf16 hint into f16
        return (
            f"OpenVINO's ARM CPU plugin has no bf16 kernels: on this CPU ({machine.model}, "
            f"{machine.isa_class}) a bf16 engine would run in {_named(kept)}, so a bf16 label "
            "would be false (fp16 is the reduced precision it runs)"
        )
    return (
        f"this CPU ({machine.model}, {machine.isa_class}) has no bf16 arithmetic "
        f"(avx512_bf16 or amx_bf16), so OpenVINO would run the engine in {_named(kept)}"
    )


def _no_onnxruntime_fp16(machine: Machine) -> str | None:
    from fsanet.convert.onnx_precision import runs_fp16_conv

    if runs_fp16_conv():
        return None
    cpu = f"this CPU ({machine.model}, {machine.isa_class})"
    if _is_arm(machine):
        return (
            f"{cpu} has no FP16 arithmetic (ARMv8.2 asimdhp), so ONNX Runtime would cast "
            "every layer back to fp32"
        )
    return (
        f"ONNX Runtime's CPU kernels for {cpu} have no fp16 convolution, so it would cast "
        "every layer back to fp32"
    )


# int8's settings.


@dataclass(frozen=True)
class Int8Scheme:
    """How ONNX Runtime quantises: uint8 activations; int8 or uint8 per-channel weights,
    optionally in 7 bits (`reduce_range`).

    On x86-64 without VNNI, ONNX Runtime's u8 x s8 kernels multiply pairs with VPMADDUBSW,
    whose 16-bit sums saturate; u8 x u8 weights or 7-bit weights avoid that (see the ONNX
    Runtime quantization docs). Which one holds the accuracy bound is measured per build.
    """

    name: str
    weight: str  # "int8" or "uint8"
    reduce_range: bool = False

    def to_dict(self) -> dict[str, object]:
        return {"name": self.name, "weight": self.weight, "reduce_range": self.reduce_range}


INT8_SCHEMES = {
    s.name: s
    for s in (
        Int8Scheme("u8s8", "int8"),
        Int8Scheme("u8u8", "uint8"),
        Int8Scheme("u8s8-7bit", "int8", reduce_range=True),
    )
}
# NNCF's presets for OpenVINO: symmetric activations first, then asymmetric ("mixed").
OPENVINO_INT8_PRESETS = ("performance", "mixed")


def int8_scheme_names(backend: str) -> tuple[str, ...]:
    return OPENVINO_INT8_PRESETS if backend == "openvino" else tuple(INT8_SCHEMES)


def int8_schemes(backend: str, machine: Machine) -> list[str]:
    """The int8 settings a build tries on this CPU, best first; the first whose accuracy
    holds the bound is kept. Measured on AFLW2000 (docs/BENCHMARKS.md): ONNX Runtime's
    u8s8 moves the fusion MAE by +0.04° with VNNI but +0.13° on an AVX2-only CPU, where
    u8u8 moves it by 0.00° and 7-bit weights by +0.02°."""
    if backend == "openvino":
        return list(OPENVINO_INT8_PRESETS)
    if machine.int8_dot:
        return ["u8s8", "u8u8"]
    return ["u8u8", "u8s8-7bit"]


# The registry. fp32 and bf16 need no conversion step: OpenVINO runs bf16 when it compiles
# the model (the hint), so the IR stays fp32.
PRECISIONS: dict[str, Precision] = {
    p.name: p
    for p in (
        Precision(
            "fp32",
            ("force_float32", "float32"),
            {"onnxruntime": Backend(), "openvino": Backend()},
            parity=True,
            cpu_specific=False,
            tune_layouts=("plain", "stacked"),
        ),
        Precision(
            "fp16",
            ("force_float16", "float16"),
            {
                "onnxruntime": Backend(_onnx_fp16, _no_onnxruntime_fp16),
                # The IR stays fp32; the f16 hint runs its convolutions in f16, the rest
                # marked to stay fp32 (the capsule part overflows in f16).
                "openvino": Backend(unsupported=_no_openvino_fp16, finish_ir=_openvino_fp16_ir),
            },
            needs_calibration=True,  # ONNX Runtime's range check: ops that would overflow
            mae_bound=0.02,
            hint="fp16",
        ),
        Precision(
            "bf16",
            ("bfloat16",),
            {"openvino": Backend(unsupported=_no_openvino_bf16)},
            mae_bound=0.02,
            hint="bf16",
            # The stacked layout pays off where wide convolutions are much cheaper per
            # FLOP: bf16 on AMX.
            tune_layouts=("plain", "stacked"),
        ),
        Precision(
            "int8",
            ("qint8_mixed_float16", "qint8"),
            {"onnxruntime": Backend(_onnx_int8), "openvino": Backend(_openvino_int8)},
            needs_calibration=True,
            mae_bound=0.10,
            settings=int8_schemes,
        ),
    )
}


def get_precision(name: str, backend: str | None = None) -> Precision:
    """Find a precision by any of its spellings; check the backend can run it."""
    for precision in PRECISIONS.values():
        if name.lower() in (precision.name, *precision.aliases):
            if backend is not None and backend not in precision.backends:
                raise FsanetError(
                    f"precision {precision.name} is not available on {backend}: use "
                    f"{' or '.join(precision.backends)}"
                )
            return precision
    known = ", ".join(f"{p.name} ({'/'.join(p.aliases)})" for p in PRECISIONS.values())
    raise FsanetError(f"unknown precision '{name}': choose {known}")


def normalize_precision(name: str, backend: str | None = None) -> str:
    return get_precision(name, backend).name


def unsupported(precision: str, backend: str, machine: Machine) -> str | None:
    """Why `backend` cannot run `precision` natively on this CPU (None: it can)."""
    entry = PRECISIONS[precision].backends.get(backend)
    return None if entry is None else entry.unsupported(machine)


def check_supported(precision: str, backend: str, machine: Machine) -> None:
    """A one-line error naming what is missing and what runs here instead."""
    reason = unsupported(precision, backend, machine)
    if reason is None:
        return
    alternatives = [
        f"{p.name} ({b})"
        for p in PRECISIONS.values()
        for b in p.backends
        if p.name != precision and _safe_supported(p.name, b, machine)
    ]
    raise FsanetError(
        f"{precision} is not available on {backend} here: {reason}; use "
        f"{', '.join(alternatives)} or --precision auto (the fastest accurate engine here)"
    )


def _safe_supported(precision: str, backend: str, machine: Machine) -> bool:
    try:
        return unsupported(precision, backend, machine) is None
    except FsanetError:  # the backend is not installed
        return False

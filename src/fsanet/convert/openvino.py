"""ONNX -> OpenVINO IR (kept in the artifact), with NNCF int8 when asked."""

from __future__ import annotations

import contextlib
import io
import logging
import tempfile
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from fsanet.core.errors import BuildError

# Only convolutions are quantised: the capsule routing and the stage-wise regression heads
# are small, range-sensitive and gain nothing from int8.
_KEEP_FLOAT = [
    "MatMul",
    "Multiply",
    "Add",
    "Divide",
    "Subtract",
    "AvgPool",
    "MaxPool",
    "Concat",
    "ReduceSum",
    "Sqrt",
    "Softmax",
    "Tanh",
    "Sigmoid",
    "Power",
]


def import_openvino():
    try:
        import openvino
    except ImportError as e:
        raise BuildError("OpenVINO is not installed: pip install 'fsanet[openvino]'") from e
    return openvino


def to_openvino(
    model: onnx.ModelProto, xml_path: Path, convert: Callable[[Any], Any] | None = None
) -> None:
    """Write `model` as IR (`xml_path` and its .bin), through `convert`: the precision's step
    on the IR (fsanet.convert.precision; NNCF int8). fp32/bf16 are chosen at compile time,
    so their IR stays fp32."""
    ov = import_openvino()
    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp) / "model.onnx"
        onnx.save(model, source)
        ov_model = ov.convert_model(str(source))
    if convert is not None:
        ov_model = convert(ov_model)
    ov.save_model(ov_model, str(xml_path), compress_to_fp16=False)


def quantize(ov_model: object, calibration: np.ndarray | None, method: str, preset: str) -> object:
    """int8 with NNCF: the convolutions, with ranges calibrated on `calibration`."""
    if calibration is None or len(calibration) == 0:
        raise BuildError("int8 needs calibration images")
    try:
        import nncf
        from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters
        from nncf.quantization.range_estimator import RangeEstimatorParametersSet
    except ImportError as e:
        raise BuildError("NNCF is not installed: pip install 'fsanet[openvino]'") from e
    estimators = {
        "minmax": RangeEstimatorParametersSet.MINMAX,
        "percentile": RangeEstimatorParametersSet.MEAN_QUANTILE,
        "entropy": RangeEstimatorParametersSet.HISTOGRAM,
    }
    logging.getLogger("nncf").setLevel(logging.ERROR)
    dataset = nncf.Dataset([calibration[i : i + 1] for i in range(len(calibration))])
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        return nncf.quantize(
            ov_model,
            dataset,
            preset=nncf.QuantizationPreset(preset),
            target_device=nncf.TargetDevice.CPU,
            subset_size=len(calibration),
            ignored_scope=nncf.IgnoredScope(types=_KEEP_FLOAT, validate=False),
            advanced_parameters=AdvancedQuantizationParameters(
                activations_range_estimator_params=estimators[method]
            ),
        )


def compiled_as(hint: str) -> tuple[str, list[str]]:
    """Ask OpenVINO what a one-convolution model compiled with this inference precision hint
    really runs: the hint it kept (e.g. "f32" where the CPU lacks the type; on ARM "bf16"
    becomes "f16") and the runtime precision of its convolution."""
    ov = import_openvino()
    import openvino.opset13 as ops

    x = ops.parameter([1, 8, 16, 16], ov.Type.f32, name="x")
    weights = ops.constant(np.ones((8, 8, 3, 3), np.float32))
    conv = ops.convolution(x, weights, [1, 1], [1, 1], [1, 1], [1, 1])
    compiled = ov.Core().compile_model(
        ov.Model([conv], [x], "probe"), "CPU", {"INFERENCE_PRECISION_HINT": hint}
    )
    kept = compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()
    convs = [
        op.get_rt_info()["runtimePrecision"].astype(str)
        for op in compiled.get_runtime_model().get_ordered_ops()
        if op.get_rt_info()["layerType"].astype(str) == "Convolution"
    ]
    return kept, convs


# The layers an fp16 engine lets OpenVINO run in f16: the convolutions (with what it fuses
# into them). With the f16 hint on ARM, OpenVINO otherwise runs everything in f16, and the
# capsule routing and regression heads overflow (NaN angles on AFLW2000, measured under
# emulation; docs/ARM.md).
_F16_LAYERS = {"Convolution", "GroupConvolution", "Parameter", "Result", "Const"}
# OpenVINO's runtime attribute that keeps a layer out of a lower inference precision. Its
# Python API cannot set it, but its IR reader restores it from this element.
_KEEP_FP32 = {"name": "DisablePrecisionConversion", "version": "0", "value": "dynamic:f16"}


def keep_fp32_outside_convolutions(xml_path: Path) -> int:
    """Mark every IR layer but the convolutions to stay in fp32 under an f16 hint; returns
    how many were marked."""
    tree = ET.parse(xml_path)
    marked = 0
    for layer in tree.getroot().iter("layer"):
        if layer.get("type") in _F16_LAYERS:
            continue
        info = layer.find("rt_info")
        if info is None:
            info = ET.Element("rt_info")
            # The IR reader expects rt_info before the ports.
            ports = [i for i, child in enumerate(layer) if child.tag in ("input", "output")]
            layer.insert(ports[0] if ports else len(layer), info)
        ET.SubElement(info, "attribute", _KEEP_FP32)
        marked += 1
    tree.write(xml_path, encoding="utf-8", xml_declaration=True)
    return marked

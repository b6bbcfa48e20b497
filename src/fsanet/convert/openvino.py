"""ONNX -> OpenVINO IR (kept in the artifact), with NNCF int8 when asked."""

from __future__ import annotations

import contextlib
import io
import logging
import tempfile
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

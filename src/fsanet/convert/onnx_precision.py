"""Reduced precisions written into the ONNX graph itself (what ONNX Runtime runs): fp16
islands and int8 static quantisation. Which precision uses which is fsanet.convert.precision.

fp16 follows the usual mixed-precision rule: the compute-heavy ops (Conv, MatMul, Gemm)
run in fp16 and everything else stays fp32, and any op whose fp32 values on the
calibration images leave fp16's safe range stays fp32 too (FSA-Net's capsule "squash"
sums squares past 65504). int8 uses ONNX Runtime's static quantisation (QDQ, per-channel
weights) of the convolutions, after ONNX Runtime's pre-processing has folded the batch
norms into them, with the calibration method the user picks; the capsule routing and the
regression heads stay fp32 (small, and sensitive to their ranges).
"""

from __future__ import annotations

import contextlib
import functools
import io
import logging
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from fsanet.convert.passes import sort_topologically
from fsanet.core.errors import FsanetError

FP16_OPS = frozenset({"Conv", "MatMul", "Gemm"})
FP16_SAFE_MAX = 4096.0  # well inside fp16's 65504, leaving room for the op's own arithmetic
QUANTIZED_OPS = ["Conv"]
# Histogram settings of the usual entropy (KL, as TensorRT's) and percentile calibrations.
_HISTOGRAMS = {
    "entropy": {"num_bins": 2048, "num_quantized_bins": 128},
    "percentile": {"num_bins": 2048, "percentile": 99.999},
}


@functools.cache
def runs_fp16_conv() -> bool:
    """Does ONNX Runtime's CPU provider run an fp16 Conv as fp16? Where it has no such
    kernel it wraps the node in casts to fp32 (seen on x86-64)."""
    from onnx import TensorProto, helper, numpy_helper

    weights = numpy_helper.from_array(np.ones((4, 3, 3, 3), np.float16), "w")
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["y"])],
        "probe",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT16, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT16, [1, 4, 6, 6])],
        [weights],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    options = ort.SessionOptions()
    options.log_severity_level = 3
    with tempfile.TemporaryDirectory() as tmp:
        options.optimized_model_filepath = str(Path(tmp) / "optimized.onnx")
        ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
        optimized = onnx.load(options.optimized_model_filepath)
    return not any(node.op_type == "Cast" for node in optimized.graph.node)


def _all_values(model: onnx.ModelProto, images: np.ndarray) -> dict[str, np.ndarray]:
    """Every intermediate tensor of `model` on `images` (fp32 reference run)."""
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    have = {o.name for o in probe.graph.output}
    names = [out for node in probe.graph.node for out in node.output if out and out not in have]
    probe.graph.output.extend(onnx.helper.make_empty_tensor_value_info(n) for n in names)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 3
    session = ort.InferenceSession(
        probe.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )
    feed = {probe.graph.input[0].name: images}
    return dict(zip([o.name for o in session.get_outputs()], session.run(None, feed), strict=True))


def fp32_islands(model: onnx.ModelProto, images: np.ndarray) -> list[str]:
    """Names of the nodes that must stay fp32: not compute-heavy, or out of fp16's range."""
    values = _all_values(model, images)
    too_big = {
        name
        for name, v in values.items()
        if v.dtype == np.float32 and v.size and float(np.abs(v).max()) > FP16_SAFE_MAX
    }
    return [
        node.name
        for node in model.graph.node
        if node.op_type not in FP16_OPS or any(t in too_big for t in [*node.input, *node.output])
    ]


def to_fp16(model: onnx.ModelProto, calibration: np.ndarray) -> onnx.ModelProto:
    """Mixed fp16 with fp32 inputs and outputs (see the module docstring)."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    for i, node in enumerate(model.graph.node):  # the converter selects nodes by name
        node.name = node.name or f"node_{i}"
    keep = fp32_islands(model, calibration)
    with _quiet():
        converted = convert_float_to_float16(model, keep_io_types=True, node_block_list=keep)
    return sort_topologically(_drop_cast_round_trips(converted))


def _cast_to(node: onnx.NodeProto) -> int:
    return next(a.i for a in node.attribute if a.name == "to")


def _drop_cast_round_trips(model: onnx.ModelProto) -> onnx.ModelProto:
    """Remove fp32 -> fp16 -> fp32 cast pairs between two fp32 nodes.

    The converter casts every fp32 island's output to fp16 and back for the next island,
    which overflows exactly the values the island exists to protect.
    """
    graph = model.graph
    outputs = {o.name for o in graph.output}
    users: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            users.setdefault(name, []).append(node)
    f16, f32 = onnx.TensorProto.FLOAT16, onnx.TensorProto.FLOAT
    rename: dict[str, str] = {}
    dropped: set[int] = set()
    for node in graph.node:
        if node.op_type != "Cast" or _cast_to(node) != f16:
            continue
        after = users.get(node.output[0], [])
        if not after or any(u.op_type != "Cast" or _cast_to(u) != f32 for u in after):
            continue
        for user in after:
            if user.output[0] in outputs:
                user.input[0] = node.input[0]  # keep the graph output's name
            else:
                rename[user.output[0]] = node.input[0]
                dropped.add(id(user))
        dropped.add(id(node))
    kept = [n for n in graph.node if id(n) not in dropped]
    for node in kept:
        node.input[:] = [rename.get(name, name) for name in node.input]
    del graph.node[:]
    graph.node.extend(kept)
    return model


def quantize_int8(
    model: onnx.ModelProto,
    calibration: np.ndarray,
    method: str,
    weight: str = "int8",
    reduce_range: bool = False,
) -> onnx.ModelProto:
    """Static int8 (QDQ): uint8 activations, per-channel `weight` ("int8" or "uint8")
    weights, in 7 bits with `reduce_range`; calibrated ranges."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.calibrate import create_calibrator, save_tensors_data
    from onnxruntime.quantization.shape_inference import quant_pre_process

    methods = {
        "minmax": CalibrationMethod.MinMax,
        "entropy": CalibrationMethod.Entropy,
        "percentile": CalibrationMethod.Percentile,
    }
    if method not in methods:
        raise FsanetError(f"unknown calibration method '{method}': choose {', '.join(methods)}")
    input_name = model.graph.input[0].name

    class Reader(CalibrationDataReader):
        # One image per call: the histogram calibrators need equal-sized batches.
        def __init__(self) -> None:
            self._batches = iter(calibration[i : i + 1] for i in range(len(calibration)))

        def get_next(self) -> dict[str, np.ndarray] | None:
            batch = next(self._batches, None)
            return None if batch is None else {input_name: batch}

    with tempfile.TemporaryDirectory() as tmp, _quiet():
        source, ready = Path(tmp) / "fp32.onnx", Path(tmp) / "prepared.onnx"
        target, ranges = Path(tmp) / "int8.onnx", Path(tmp) / "ranges.json"
        onnx.save(model, source)
        quant_pre_process(source, ready, skip_symbolic_shape=True)
        # Ranges are computed here rather than inside quantize_static, which cannot set the
        # histogram sizes: with its default 128 bins, "entropy" degenerates to min-max.
        calibrator = create_calibrator(
            ready,
            QUANTIZED_OPS,
            augmented_model_path=str(Path(tmp) / "augmented.onnx"),
            calibrate_method=methods[method],
            extra_options=_HISTOGRAMS.get(method, {}),
        )
        calibrator.collect_data(Reader())
        save_tensors_data(calibrator.compute_data(), ranges)
        quantize_static(
            ready,
            target,
            None,
            quant_format=QuantFormat.QDQ,
            op_types_to_quantize=QUANTIZED_OPS,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8 if weight == "int8" else QuantType.QUInt8,
            reduce_range=reduce_range,
            calibrate_method=methods[method],
            calibration_cache_path=ranges,
        )
        return onnx.load(target)


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    # The converters log and print per-node chatter; keep the user's terminal readable.
    logging.disable(logging.WARNING)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        logging.disable(logging.NOTSET)

"""FLOPs per image, counted from an ONNX graph with ONNX shape inference.

Only the multiply-accumulate work is counted (Conv, ConvTranspose, MatMul, Gemm, and the same
ops inside Loop bodies), one multiply-add = 2 FLOPs: that is the work a matrix-multiply peak
bounds. Element-wise ops, pooling and normalisation are left out (a few % of FSA-Net).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import onnx
from onnx import numpy_helper, shape_inference

from fsanet.core.errors import FsanetError

Shape = list[int | None]

# A Loop whose trip count is this large (or absent) ends on its condition: tf2onnx writes
# TensorFlow while-loops that way, and FSA-Net's map_fn runs once per image of the batch.
_UNBOUNDED_TRIPS = 2**31
_MAX_PASSES = 4  # shape-inference passes to resolve loop outputs that feed later loops


@dataclass
class FlopCount:
    """FLOPs of one model file (or several, summed), counted at batch size `batch`."""

    flops: int
    batch: int
    by_op: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)  # assumptions and nodes left uncounted

    @property
    def per_image(self) -> float:
        return self.flops / self.batch

    def __add__(self, other: FlopCount) -> FlopCount:
        # Sum per image: files of one engine may have different fixed batch sizes.
        by_op = {k: self.by_op.get(k, 0) / self.batch for k in self.by_op}
        for k, v in other.by_op.items():
            by_op[k] = by_op.get(k, 0) + v / other.batch
        return FlopCount(
            round(self.per_image + other.per_image),
            1,
            {k: round(v) for k, v in by_op.items()},
            sorted(set(self.notes + other.notes)),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "per_image": round(self.per_image),
            "by_op_per_image": {k: round(v / self.batch) for k, v in sorted(self.by_op.items())},
            "notes": self.notes,
        }


def count_flops(model: str | Path | onnx.ModelProto) -> FlopCount:
    """Count the FLOPs of one ONNX model; a dynamic batch dimension is counted at 1."""
    if not isinstance(model, onnx.ModelProto):
        try:
            model = onnx.load(str(model))
        except Exception as e:  # protobuf decode errors, missing files
            raise FsanetError(f"cannot read ONNX model {model} to count FLOPs ({e})") from e
    model = onnx.ModelProto.FromString(model.SerializeToString())  # we edit shapes: a copy
    batch = _fix_batch(model.graph)
    notes: list[str] = []
    inferred = _infer(model)
    for _ in range(_MAX_PASSES):
        if not _pin_loop_outputs(inferred.graph, batch, notes):
            break
        inferred = _infer(inferred)
    counter = _Counter(batch)
    counter.graph(inferred.graph, {}, 1)
    notes += counter.notes
    return FlopCount(counter.total, batch, counter.by_op, sorted(set(notes)))


def count_flops_files(paths: list[Path]) -> FlopCount | None:
    """FLOPs per image of an engine made of several ONNX files; None when none is ONNX."""
    counts = [count_flops(p) for p in paths if Path(p).suffix == ".onnx"]
    if not counts:
        return None
    total = counts[0]
    for c in counts[1:]:
        total = total + c
    return total


def _infer(model: onnx.ModelProto) -> onnx.ModelProto:
    try:
        return shape_inference.infer_shapes(model, data_prop=True)
    except Exception as e:  # onnx raises InferenceError and plain RuntimeErrors
        raise FsanetError(f"ONNX shape inference failed, cannot count FLOPs ({e})") from e


def _fix_batch(graph: onnx.GraphProto) -> int:
    """Give the first dimension of the inputs a value: 1 when dynamic, else the fixed batch."""
    initializers = {i.name for i in graph.initializer}
    batch = 1
    for value in graph.input:
        if value.name in initializers or not value.type.tensor_type.shape.dim:
            continue
        dim = value.type.tensor_type.shape.dim[0]
        if dim.HasField("dim_value") and dim.dim_value > 0:
            batch = dim.dim_value
    for value in graph.input:
        dims = value.type.tensor_type.shape.dim
        if value.name not in initializers and dims and not dims[0].HasField("dim_value"):
            dims[0].dim_value = batch
    return batch


def _shape(value: onnx.ValueInfoProto) -> Shape:
    return [
        d.dim_value if d.HasField("dim_value") else None for d in value.type.tensor_type.shape.dim
    ]


def _shapes(graph: onnx.GraphProto, outer: dict[str, Shape]) -> dict[str, Shape]:
    shapes = dict(outer)
    for value in [*graph.input, *graph.value_info, *graph.output]:
        if value.type.tensor_type.HasField("shape"):
            shapes[value.name] = _shape(value)
    for init in graph.initializer:
        shapes[init.name] = list(init.dims)
    for node in graph.node:
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value":
                    shapes[node.output[0]] = list(attr.t.dims)
    return shapes


def _constant(graph: onnx.GraphProto, name: str) -> int | None:
    for init in graph.initializer:
        if init.name == name:
            return int(numpy_helper.to_array(init).reshape(-1)[0])
    for node in graph.node:
        if node.op_type == "Constant" and node.output[0] == name:
            for attr in node.attribute:
                if attr.name == "value":
                    return int(numpy_helper.to_array(attr.t).reshape(-1)[0])
    return None


def _loop_trips(graph: onnx.GraphProto, node: onnx.NodeProto, batch: int) -> tuple[int, bool]:
    """The iterations of a Loop node, and whether that was assumed rather than read."""
    trips = _constant(graph, node.input[0]) if node.input and node.input[0] else None
    if trips is not None and trips < _UNBOUNDED_TRIPS:
        return trips, False
    return batch, True


def _pin_loop_outputs(graph: onnx.GraphProto, batch: int, notes: list[str]) -> bool:
    """Give each Loop's scan outputs their length (its trip count); True if any changed."""
    values = {v.name: v for v in graph.value_info}
    changed = False
    for node in graph.node:
        if node.op_type != "Loop":
            continue
        trips, assumed = _loop_trips(graph, node, batch)
        if assumed:
            notes.append("a Loop ending on its condition is taken to run once per image (map_fn)")
        carried = len(node.input) - 2
        for name in node.output[carried:]:
            value = values.get(name)
            if value is None or not value.type.tensor_type.shape.dim:
                continue
            dim = value.type.tensor_type.shape.dim[0]
            if not dim.HasField("dim_value"):
                dim.dim_value = trips
                changed = True
    return changed


class _Counter:
    def __init__(self, batch: int) -> None:
        self.batch = batch
        self.total = 0
        self.by_op: dict[str, int] = {}
        self.notes: list[str] = []

    def add(self, op: str, flops: int) -> None:
        self.total += flops
        self.by_op[op] = self.by_op.get(op, 0) + flops

    def graph(self, graph: onnx.GraphProto, outer: dict[str, Shape], times: int) -> None:
        shapes = _shapes(graph, outer)
        for node in graph.node:
            if node.op_type == "Loop":
                trips, _ = _loop_trips(graph, node, self.batch)
                body = next(a.g for a in node.attribute if a.name == "body")
                self.graph(body, shapes, times * trips)
            elif node.op_type in ("If", "Scan"):
                self.notes.append(f"{node.op_type} subgraphs are not counted")
            elif node.op_type in _OPS:
                flops = _OPS[node.op_type](node, shapes)
                if flops is None:
                    self.notes.append(f"{node.op_type} with unknown shapes not counted")
                else:
                    self.add(node.op_type, flops * times)


def _known(*shapes: Shape | None) -> bool:
    return all(s is not None and all(d is not None for d in s) for s in shapes)


def _conv(node: onnx.NodeProto, shapes: dict[str, Shape]) -> int | None:
    weight, out = shapes.get(node.input[1]), shapes.get(node.output[0])
    if not _known(weight, out):
        return None
    # Conv weight: [C_out, C_in/groups, k...]; each output element is C_in/groups * k MACs.
    return 2 * math.prod(out) * math.prod(weight[1:])  # type: ignore[index, arg-type]


def _conv_transpose(node: onnx.NodeProto, shapes: dict[str, Shape]) -> int | None:
    x, weight = shapes.get(node.input[0]), shapes.get(node.input[1])
    if not _known(x, weight):
        return None
    # ConvTranspose weight: [C_in, C_out/groups, k...]; every input element feeds that many.
    return 2 * math.prod(x) * math.prod(weight[1:])  # type: ignore[index, arg-type]


def _matmul(node: onnx.NodeProto, shapes: dict[str, Shape]) -> int | None:
    a, out = shapes.get(node.input[0]), shapes.get(node.output[0])
    if not _known(a, out) or not a:
        return None
    return 2 * math.prod(out) * a[-1]  # type: ignore[index, arg-type, operator]


def _gemm(node: onnx.NodeProto, shapes: dict[str, Shape]) -> int | None:
    a, out = shapes.get(node.input[0]), shapes.get(node.output[0])
    if not _known(a, out) or len(a) != 2:  # type: ignore[arg-type]
        return None
    trans_a = any(attr.name == "transA" and attr.i for attr in node.attribute)
    k = a[0] if trans_a else a[1]  # type: ignore[index]
    return 2 * math.prod(out) * k  # type: ignore[arg-type, operator]


_OPS = {"Conv": _conv, "ConvTranspose": _conv_transpose, "MatMul": _matmul, "Gemm": _gemm}

"""The flip pass: an engine graph that runs each crop and its mirror image in one batch.

    input [N, H, W, C] -> Concat(input, Gather(input, W-1..0, axis W)) -> network [2N, ...]
    each output [2N, 3] -> Reshape [2, N, 3] -> * [[1, 1, 1], [-1, 1, -1]]
                        -> views [N, 3] (crop, mirror) -> their mean [N, 3]

The network itself is untouched (its ops simply see twice the batch), so every backend and
precision runs it as it would run the plain graph; only the mirroring and the averaging are
new, and they stay float (int8 quantises convolutions only).
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from fsanet.core.errors import BuildError
from fsanet.engine.tta import MIRROR_SIGNS, VIEWS, WIDTH_AXIS, view_name

PREFIX = "tta"


def add_flip(model: onnx.ModelProto) -> onnx.ModelProto:
    """Wrap `model` (one input N x H x W x C; outputs N x 3) in the flip augmentation.

    A fixed-batch `model` must have been made for 2B crops: the result takes B."""
    graph = model.graph
    if len(graph.input) != 1:
        raise BuildError("the flip pass needs a model with one input")
    source = graph.input[0]
    dims = source.type.tensor_type.shape.dim
    if len(dims) != 4 or not dims[WIDTH_AXIS].HasField("dim_value"):
        raise BuildError("the flip pass needs N x H x W x C crops with a known width")
    width = dims[WIDTH_AXIS].dim_value
    outputs = [o.name for o in graph.output]
    both = f"{PREFIX}/crop_and_mirror"
    inner = {source.name: both, **{o: f"{o}/{PREFIX}_views" for o in outputs}}
    for node in graph.node:
        node.input[:] = [inner.get(n, n) for n in node.input]
        node.output[:] = [inner.get(n, n) for n in node.output]
    for info in graph.value_info:
        info.name = inner.get(info.name, info.name)

    graph.initializer.extend(
        [
            numpy_helper.from_array(np.arange(width - 1, -1, -1, dtype=np.int64), f"{PREFIX}/flip"),
            numpy_helper.from_array(np.array([2, -1, 3], np.int64), f"{PREFIX}/pair_shape"),
            numpy_helper.from_array(
                np.stack([np.ones(3, np.float32), MIRROR_SIGNS])[:, None, :], f"{PREFIX}/signs"
            ),
            numpy_helper.from_array(np.array(0, np.int64), f"{PREFIX}/first"),
            numpy_helper.from_array(np.array(1, np.int64), f"{PREFIX}/second"),
            numpy_helper.from_array(np.array(0.5, np.float32), f"{PREFIX}/half"),
        ]
    )
    mirrored = f"{PREFIX}/mirror"
    head = [
        helper.make_node(
            "Gather", [source.name, f"{PREFIX}/flip"], [mirrored], axis=WIDTH_AXIS, name=mirrored
        ),
        helper.make_node("Concat", [source.name, mirrored], [both], axis=0, name=both),
    ]
    tail: list[onnx.NodeProto] = []
    new_outputs: list[onnx.ValueInfoProto] = []
    batch = _half_batch(dims[0])
    for declared in graph.output:
        name = declared.name
        views, pair, aligned = inner[name], f"{name}/{PREFIX}_pair", f"{name}/{PREFIX}_aligned"
        crop, mirror = (view_name(name, v) for v in VIEWS)
        summed = f"{name}/{PREFIX}_sum"
        tail += [
            helper.make_node("Reshape", [views, f"{PREFIX}/pair_shape"], [pair], name=pair),
            helper.make_node("Mul", [pair, f"{PREFIX}/signs"], [aligned], name=aligned),
            helper.make_node("Gather", [aligned, f"{PREFIX}/first"], [crop], axis=0, name=crop),
            helper.make_node(
                "Gather", [aligned, f"{PREFIX}/second"], [mirror], axis=0, name=mirror
            ),
            helper.make_node("Add", [crop, mirror], [summed], name=summed),
            helper.make_node("Mul", [summed, f"{PREFIX}/half"], [name], name=f"{name}/{PREFIX}"),
        ]
        for out in (name, crop, mirror):
            new_outputs.append(_angles(out, batch))
    nodes = [*head, *graph.node, *tail]
    del graph.node[:]
    graph.node.extend(nodes)
    del graph.output[:]
    graph.output.extend(new_outputs)
    outer = helper.make_tensor_value_info(source.name, source.type.tensor_type.elem_type, None)
    outer.type.CopyFrom(source.type)
    if batch is not None:
        outer.type.tensor_type.shape.dim[0].dim_value = batch
    del graph.input[:]
    graph.input.append(outer)
    onnx.checker.check_model(model)
    return model


def _half_batch(dim: onnx.TensorShapeProto.Dimension) -> int | None:
    """The outer batch of a fixed-batch graph (half its inner one); None when dynamic."""
    if not dim.HasField("dim_value"):
        return None
    if dim.dim_value % 2:
        raise BuildError(f"a fixed-batch graph for the flip pass needs an even batch, got {dim}")
    return dim.dim_value // 2


def _angles(name: str, batch: int | None) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(
        name, onnx.TensorProto.FLOAT, [batch if batch is not None else "N", 3]
    )

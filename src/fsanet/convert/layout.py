"""Two rewrites of the fused graph that pay off only where matrix units are fast: bf16 on
OpenVINO (Intel AMX). Each one keeps the numbers (up to float rounding).

- `fuse_input_separable`: FSA-Net's first layers are separable convolutions on the 3-channel
  image: a 3x3 depthwise convolution, then a 1x1 one with K = 3, far too thin for a matrix
  unit. Both become one dense 3x3 convolution (K = 27).
- `stack_variants`: the three variants share their architecture up to the capsule layer, but
  not their weights. Where they apply the same op to corresponding tensors, one op now runs
  on their channels side by side: a third as many ops, each three times as wide.

Both add work in fp32 (the dense stem has 5.8x the FLOPs of the separable one; grouped
convolutions are slower than dense ones in ONNX Runtime and in OpenVINO fp32 on the machines
measured), so they are not applied by default: `--layout stacked` asks for them, and
`fsanet build --precision auto` tries them and keeps them where they measure faster;
docs/BENCHMARKS.md has the measurements.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import helper, numpy_helper, shape_inference

from fsanet.convert.passes import Pass, drop_dead_nodes, sort_topologically

# The most input channels a separable stem may have to be made dense (an image has 3).
STEM_MAX_CHANNELS = 4


LAYOUTS = ("plain", "stacked")


def layout_passes(layout: str, fused: bool) -> list[str]:
    """The layout passes a build applies, after the generic ones and fusion: none for the
    "plain" layout; the dense stem and (for a fused graph) stacked variants for "stacked"."""
    if layout == "plain":
        return []
    return ["fuse_input_separable", *(["stack_variants"] if fused else [])]


def _attrs(node: onnx.NodeProto) -> dict:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _consumers(nodes: list[onnx.NodeProto]) -> dict[str, list[onnx.NodeProto]]:
    users: dict[str, list[onnx.NodeProto]] = defaultdict(list)
    for node in nodes:
        for name in node.input:
            users[name].append(node)
    return users


# --- the dense stem ---------------------------------------------------------------------------


def fuse_input_separable(model: onnx.ModelProto) -> onnx.ModelProto:
    """Depthwise conv (<= 4 input channels) -> 1x1 conv becomes one dense conv.

    With depthwise weights D [C*m, 1, kh, kw] (m outputs per input channel) and pointwise
    weights P [O, C*m, 1, 1]: W[o, c] = sum_j P[o, c*m + j] * D[c*m + j], and a depthwise
    bias b adds P @ b to the pointwise bias.
    """
    graph = model.graph
    params = {init.name: init for init in graph.initializer}
    users = _consumers(list(graph.node))
    outputs = {o.name for o in graph.output}
    removed: set[str] = set()
    for depthwise in list(graph.node):
        dw = _attrs(depthwise)
        if depthwise.op_type != "Conv" or depthwise.input[1] not in params:
            continue
        d = numpy_helper.to_array(params[depthwise.input[1]])
        channels = dw.get("group", 1)
        if channels > STEM_MAX_CHANNELS or d.ndim != 4 or d.shape[1] != 1 or channels == 1:
            continue
        followers = users[depthwise.output[0]]
        if len(followers) != 1 or depthwise.output[0] in outputs:
            continue
        pointwise = followers[0]
        pw = _attrs(pointwise)
        if pointwise.op_type != "Conv" or pointwise.input[1] not in params:
            continue
        p = numpy_helper.to_array(params[pointwise.input[1]])
        if pw.get("group", 1) != 1 or p.shape[2:] != (1, 1) or any(pw.get("pads", [0])):
            continue
        if any(s != 1 for s in pw.get("strides", [1])) or p.shape[1] != d.shape[0]:
            continue
        per_channel = d.shape[0] // channels
        mix = p[:, :, 0, 0].reshape(p.shape[0], channels, per_channel)
        taps = d[:, 0].reshape(channels, per_channel, *d.shape[2:])
        dense = np.einsum("ocj,cjhw->ochw", mix, taps).astype(d.dtype)
        bias = numpy_helper.to_array(params[pointwise.input[2]]) if len(pointwise.input) > 2 else 0
        if len(depthwise.input) > 2 and depthwise.input[2]:
            bias = bias + p[:, :, 0, 0] @ numpy_helper.to_array(params[depthwise.input[2]])
        name = f"{pointwise.name or pointwise.output[0]}/dense_stem"
        graph.initializer.append(numpy_helper.from_array(dense, f"{name}/W"))
        graph.initializer.append(
            numpy_helper.from_array(
                np.broadcast_to(bias, (p.shape[0],)).astype(d.dtype), f"{name}/B"
            )
        )
        spatial = {
            k: v
            for k, v in dw.items()
            if k in ("kernel_shape", "pads", "strides", "dilations", "auto_pad")
        }
        stem = helper.make_node(
            "Conv",
            [depthwise.input[0], f"{name}/W", f"{name}/B"],
            list(pointwise.output),
            name=name,
            **spatial,
        )
        pointwise.CopyFrom(stem)
        removed.add(depthwise.output[0])
    kept = [n for n in graph.node if n.output[0] not in removed]
    del graph.node[:]
    graph.node.extend(kept)
    return drop_dead_nodes(model)


# --- the stacked backbone ---------------------------------------------------------------------

# Ops that treat each channel of an NCHW tensor on its own, so that k copies run as one op on
# k times the channels; Conv and BatchNormalization take their parameters stacked (axis 0).
_UNARY = frozenset({"Relu", "Tanh", "Sigmoid", "Identity", "MaxPool", "AveragePool"})
_BINARY = frozenset({"Add", "Mul", "Sub", "Div", "Max", "Min"})
_WITH_PARAMS = frozenset({"Conv", "BatchNormalization"})


@dataclass
class _Stacking:
    """Which variant tensors run stacked: tensor -> (group, output index, variant)."""

    variants: list[str]
    groups: list[list[onnx.NodeProto]] = field(default_factory=list)
    slot: dict[str, tuple[int, int, int]] = field(default_factory=dict)

    def stacked_name(self, group: int, output: int) -> str:
        return f"stacked/{self.groups[group][0].output[output]}"

    def tensor(self, group: int, output: int, variant: int) -> str:
        return self.groups[group][variant].output[output]

    def add(self, nodes: list[onnx.NodeProto]) -> None:
        for variant, node in enumerate(nodes):
            for index, name in enumerate(node.output):
                self.slot[name] = (len(self.groups), index, variant)
        self.groups.append(nodes)


def stack_variants(model: onnx.ModelProto) -> onnx.ModelProto:
    """Run the fused variants' matching ops as one op over their channels side by side.

    The stacked tensor holds each variant's channels as one block along axis 1, in variant
    order. A convolution becomes grouped (k x its groups, weights and biases stacked along
    axis 0); batch norms take stacked parameters; pools and element-wise ops apply as they
    are. A Split hands each variant its own channels where the variants' graphs part.
    """
    graph = model.graph
    _merge_duplicates(graph)
    variants = _variant_names(graph)
    if len(variants) < 2:
        return model
    channels = _channel_counts(model)
    params = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
    nodes = list(graph.node)  # one wrapper per node: the identity of a node is used below
    shared = _shared_tensors(graph, nodes)
    by_variant: dict[int, list[onnx.NodeProto]] = defaultdict(list)
    for node in nodes:
        owner = _owner(node, variants)
        if owner is not None and not all(name in shared for name in node.input if name):
            by_variant[owner].append(node)
    users = _consumers(nodes)
    stacking = _Stacking(variants)
    taken: set[int] = set()

    def signature(node: onnx.NodeProto, variant: int) -> list[tuple] | None:
        sig: list[tuple] = []
        for name in node.input:
            if not name:
                sig.append(("absent",))
            elif name in params:
                sig.append(("param", params[name].shape, params[name].dtype.str))
            elif name in shared:
                sig.append(("shared", name))
            elif name in stacking.slot and stacking.slot[name][2] == variant:
                sig.append(("stacked", *stacking.slot[name][:2]))
            else:
                return None
        return sig if _stackable(node, sig, channels) else None

    for first in by_variant[0]:
        sig = signature(first, 0)
        if sig is None:
            continue
        anchor = next(i for i, s in enumerate(sig) if s[0] in ("shared", "stacked"))
        group = [first]
        for variant in range(1, len(variants)):
            s = sig[anchor]
            source = s[1] if s[0] == "shared" else stacking.tensor(s[1], s[2], variant)
            twins = [
                n
                for n in users[source]
                if id(n) not in taken
                and _owner(n, variants) == variant
                and _same_op(n, first)
                and signature(n, variant) == sig
            ]
            if not twins:
                break
            # Any twin computes the right numbers; the one of the same layer (FSA-Net's
            # two streams both start from the image) lets stacking go on past it.
            same_layer = [n for n in twins if _layer(n, variants) == _layer(first, variants)]
            group.append((same_layer or twins)[0])
        if len(group) == len(variants):
            taken.update(id(n) for n in group)
            stacking.add(group)

    rest = [n for n in nodes if id(n) not in taken]
    new_nodes, new_params = _emit(stacking, params, channels, graph, rest)
    graph.initializer.extend(new_params)
    del graph.node[:]
    graph.node.extend([*rest, *new_nodes])
    del graph.value_info[:]
    return drop_dead_nodes(sort_topologically(model))


def _stackable(node: onnx.NodeProto, sig: list[tuple], channels: dict[str, int]) -> bool:
    kinds = [s[0] for s in sig]
    data = [
        name for name, kind in zip(node.input, kinds, strict=True) if kind in ("shared", "stacked")
    ]
    if node.domain not in ("", "ai.onnx") or not data:
        return False
    if any(name not in channels for name in [*data, *node.output]):
        return False  # stacking needs NCHW tensors with a known channel count
    if node.op_type == "Conv":
        return kinds[0] in ("shared", "stacked") and all(
            k in ("param", "absent") for k in kinds[1:]
        )
    if node.op_type == "BatchNormalization":
        return kinds[0] == "stacked" and kinds[1:] == ["param"] * 4 and len(node.output) == 1
    if node.op_type in _UNARY:
        return kinds == ["stacked"]
    if node.op_type in _BINARY:
        return kinds == ["stacked", "stacked"] and channels[data[0]] == channels[data[1]]
    return False


def _emit(
    stacking: _Stacking,
    params: dict[str, np.ndarray],
    channels: dict[str, int],
    graph: onnx.GraphProto,
    rest: list[onnx.NodeProto],
) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto]]:
    """The stacked nodes, the Splits back to per-variant tensors, and the stacked params."""
    k = len(stacking.variants)
    nodes: list[onnx.NodeProto] = []
    new_params: list[onnx.TensorProto] = []
    repeated: set[str] = set()

    def source(name: str) -> str:
        return stacking.stacked_name(*stacking.slot[name][:2]) if name in stacking.slot else name

    for group in stacking.groups:
        first = group[0]
        attrs = _attrs(first)
        inputs = [source(name) for name in first.input]
        if first.op_type in _WITH_PARAMS:
            if first.op_type == "Conv" and first.input[0] not in stacking.slot:
                # A shared input: one dense conv whose outputs are the variants' side by side
                # (group 1), or the input repeated k times for grouped convolutions.
                if attrs.get("group", 1) > 1:
                    inputs[0] = f"stacked/{first.input[0]}/x{k}"
                    if inputs[0] not in repeated:
                        repeated.add(inputs[0])
                        nodes.append(
                            helper.make_node("Concat", [first.input[0]] * k, [inputs[0]], axis=1)
                        )
                    attrs["group"] = attrs["group"] * k
            elif first.op_type == "Conv":
                attrs["group"] = attrs.get("group", 1) * k
            for i in range(1, len(first.input)):
                if not first.input[i]:
                    continue
                inputs[i] = f"stacked/{first.input[i]}"
                stacked = np.concatenate([params[n.input[i]] for n in group], axis=0)
                new_params.append(numpy_helper.from_array(stacked, inputs[i]))
        index = stacking.slot[first.output[0]][0]
        outputs = [stacking.stacked_name(index, o) for o in range(len(first.output))]
        name = f"stacked/{first.name or first.output[0]}"
        nodes.append(helper.make_node(first.op_type, inputs, outputs, name=name, **attrs))

    # Hand each variant its channels wherever something else reads them.
    needed = {o.name for o in graph.output}
    for node in rest:
        needed.update(node.input)
    splits: dict[tuple[int, int], list[str]] = {}
    for name, (group, output, variant) in stacking.slot.items():
        if name in needed:
            splits.setdefault((group, output), [""] * k)[variant] = name
    for (group, output), names in splits.items():
        whole = stacking.stacked_name(group, output)
        outs = [name or f"{whole}/unused{v}" for v, name in enumerate(names)]
        sizes = f"{whole}/split"
        width = channels[stacking.groups[group][0].output[output]]
        new_params.append(numpy_helper.from_array(np.full(k, width, np.int64), sizes))
        nodes.append(helper.make_node("Split", [whole, sizes], outs, axis=1))
    return nodes, new_params


def _merge_duplicates(graph: onnx.GraphProto) -> None:
    """Keep one of several identical nodes (same op, attributes and inputs), such as each
    variant's own transpose of the shared input."""
    outputs = {o.name for o in graph.output}
    seen: dict[tuple, onnx.NodeProto] = {}
    renamed: dict[str, str] = {}
    kept = []
    for node in graph.node:
        node.input[:] = [renamed.get(name, name) for name in node.input]
        key = (
            node.op_type,
            node.domain,
            tuple(node.input),
            _attribute_key(node),
            len(node.output),
        )
        original = seen.get(key)
        if original is None or outputs.intersection(node.output):
            seen.setdefault(key, node)
            kept.append(node)
            continue
        renamed.update(zip(node.output, original.output, strict=True))
    del graph.node[:]
    graph.node.extend(kept)


def _variant_names(graph: onnx.GraphProto) -> list[str]:
    """The fused variants, in output order: outputs whose name prefixes node outputs."""
    prefixes = {name.split("/", 1)[0] for node in graph.node for name in node.output if "/" in name}
    return [o.name for o in graph.output if o.name in prefixes]


def _owner(node: onnx.NodeProto, variants: list[str]) -> int | None:
    prefix = node.output[0].split("/", 1)[0] if node.output else ""
    return variants.index(prefix) if prefix in variants else None


def _layer(node: onnx.NodeProto, variants: list[str]) -> str:
    """The node's output name without its variant prefix: the same in every variant."""
    name = node.output[0]
    prefix = name.split("/", 1)[0]
    return name.split("/", 1)[1] if prefix in variants and "/" in name else name


def _channel_counts(model: onnx.ModelProto) -> dict[str, int]:
    """Axis-1 size of every 4-D tensor whose size there is known."""
    inferred = shape_inference.infer_shapes(model)
    counts = {}
    graph = inferred.graph
    for info in [*graph.value_info, *graph.output]:
        dims = info.type.tensor_type.shape.dim
        if len(dims) == 4 and dims[1].HasField("dim_value") and dims[1].dim_value > 0:
            counts[info.name] = dims[1].dim_value
    return counts


def _shared_tensors(graph: onnx.GraphProto, nodes: list[onnx.NodeProto]) -> set[str]:
    """The graph inputs and what is computed from them alone (no weights): the same for
    every variant."""
    shared = {i.name for i in graph.input}
    for node in nodes:
        if node.input and all(name in shared for name in node.input if name):
            shared.update(node.output)
    return shared


def _attribute_key(node: onnx.NodeProto) -> tuple:
    """A node's attributes, independent of their order (which tf2onnx does not fix)."""
    return tuple(sorted((a.name, a.SerializeToString()) for a in node.attribute))


def _same_op(a: onnx.NodeProto, b: onnx.NodeProto) -> bool:
    return (
        a.op_type == b.op_type and a.domain == b.domain and _attribute_key(a) == _attribute_key(b)
    )


LAYOUT_PASSES: dict[str, Pass] = {
    "fuse_input_separable": fuse_input_separable,
    "stack_variants": stack_variants,
}

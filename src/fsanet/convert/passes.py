"""Graph passes on the converted ONNX models, each small and numerically neutral.

- `batch_capsule_map`: the capsule layer's `K.map_fn` becomes an ONNX `Loop` that multiplies
  one sample at a time; it is replaced by one batched MatMul over the whole batch.
- `fold_constants`: nodes whose inputs are all constants are computed once, here.
- `drop_dead_nodes`: nodes (and initializers) that no graph output depends on are removed.
- `fuse_variants`: several single-variant models become one graph with one input, each
  variant's output and their mean, so fusion is one engine call.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx
from onnx import helper, numpy_helper
from onnx.reference import ReferenceEvaluator

from fsanet.core.errors import BuildError

Pass = Callable[[onnx.ModelProto], onnx.ModelProto]


def _constants(graph: onnx.GraphProto) -> dict[str, np.ndarray]:
    values = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant" and not node.input:
            values[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
    return values


def _producers(graph: onnx.GraphProto) -> dict[str, onnx.NodeProto]:
    return {out: node for node in graph.node for out in node.output}


# --- the capsule map ----------------------------------------------------------------------


def _match_capsule_map(loop: onnx.NodeProto, outer: dict[str, np.ndarray]) -> dict | None:
    """Recognise tf2onnx's loop for `map_fn(lambda x: batch_dot(x, W))`.

    The body must be: Gather(X, i) -> Squeeze(0) -> Reshape(const [..., 1, K]) ->
    MatMul(const W [..., K, E]) -> Squeeze(const axes) -> the only scan output.
    Returns what the batched replacement needs, or None when the loop is something else.
    """
    body = next(a.g for a in loop.attribute if a.name == "body")
    if len(body.output) != 4 or len(loop.output) != 3:
        return None
    consts = {**outer, **_constants(body)}
    producers = _producers(body)
    chain = []
    name = body.output[3].name
    for op in ("Squeeze", "MatMul", "Reshape", "Squeeze", "Gather"):
        node = producers.get(name)
        if node is None or node.op_type != op:
            return None
        chain.append(node)
        name = node.input[0]
    squeeze_out, matmul, reshape, _squeeze_in, gather = chain
    shape, weight = consts.get(reshape.input[1]), consts.get(matmul.input[1])
    axes = consts.get(squeeze_out.input[1]) if len(squeeze_out.input) > 1 else None
    if shape is None or weight is None or axes is None:
        return None
    shape = [int(d) for d in shape]
    # A row vector times one matrix per slot, with the slots of both lined up.
    if len(shape) < 3 or shape[-2] != 1 or list(weight.shape[:-2]) != shape[:-2]:
        return None
    if weight.shape[-2] != shape[-1] or any(d <= 0 for d in shape):
        return None
    index = producers.get(gather.input[1])
    if index is None or index.op_type != "Unsqueeze":
        return None
    if index.input[0] not in _iteration_counters(loop, body, consts):
        return None
    per_sample = [*shape[:-1], int(weight.shape[-1])]
    squeezed = {int(a) % len(per_sample) for a in np.atleast_1d(axes)}
    return {
        "source": gather.input[0],
        "weight": weight,
        "slots": int(np.prod(shape[:-2])),
        "out_shape": [d for i, d in enumerate(per_sample) if i not in squeezed],
    }


def _iteration_counters(
    loop: onnx.NodeProto, body: onnx.GraphProto, consts: dict[str, np.ndarray]
) -> set[str]:
    """Body names that equal the iteration number: the loop's own counter, and any carried
    value that starts at 0 and grows by 1 each iteration (tf2onnx makes two of those, in
    an order that changes from run to run)."""
    counters = {body.input[0].name}
    producers = _producers(body)
    for k, carried in enumerate(body.input[2:]):
        start = consts.get(loop.input[2 + k])
        step = producers.get(body.output[1 + k].name)
        if start is None or step is None or step.op_type != "Add" or int(np.sum(start)) != 0:
            continue
        operands = list(step.input)
        if carried.name in operands:
            operands.remove(carried.name)
            one = consts.get(operands[0])
            if one is not None and one.size == 1 and int(one.ravel()[0]) == 1:
                counters.add(carried.name)
    return counters


def batch_capsule_map(model: onnx.ModelProto) -> onnx.ModelProto:
    """Replace each capsule-map Loop by Reshape -> Transpose -> MatMul -> Transpose -> Reshape.

    Per sample the loop computes x[s] @ W[s] for every slot s (x[s]: 1 x K, W[s]: K x E).
    Batched, the slots become the MatMul batch: [S, N, K] @ [S, K, E] -> [S, N, E].
    """
    graph = model.graph
    outer = _constants(graph)
    nodes: list[onnx.NodeProto] = []
    for node in graph.node:
        match = _match_capsule_map(node, outer) if node.op_type == "Loop" else None
        if match is None:
            nodes.append(node)
            continue
        p = f"{node.name or node.output[2]}/batched"
        weight = match["weight"]
        k, e, s = weight.shape[-2], weight.shape[-1], match["slots"]
        graph.initializer.extend(
            [
                numpy_helper.from_array(np.array([-1, s, k], np.int64), f"{p}/in_shape"),
                numpy_helper.from_array(weight.reshape(s, k, e).astype(weight.dtype), f"{p}/W"),
                numpy_helper.from_array(
                    np.array([-1, *match["out_shape"]], np.int64), f"{p}/out_shape"
                ),
            ]
        )
        nodes += [
            helper.make_node("Reshape", [match["source"], f"{p}/in_shape"], [f"{p}/x"]),
            helper.make_node("Transpose", [f"{p}/x"], [f"{p}/xt"], perm=[1, 0, 2]),
            helper.make_node("MatMul", [f"{p}/xt", f"{p}/W"], [f"{p}/yt"]),
            helper.make_node("Transpose", [f"{p}/yt"], [f"{p}/y"], perm=[1, 0, 2]),
            helper.make_node("Reshape", [f"{p}/y", f"{p}/out_shape"], [node.output[2]]),
        ]
    del graph.node[:]
    graph.node.extend(nodes)
    return model


# --- generic clean-up ----------------------------------------------------------------------


def sort_topologically(model: onnx.ModelProto) -> onnx.ModelProto:
    """Order the nodes so that each comes after the producers of its inputs."""
    graph = model.graph
    ready = {i.name for i in graph.input} | {i.name for i in graph.initializer} | {""}
    ordered, pending = [], list(graph.node)
    while pending:
        waiting = []
        for node in pending:
            if all(name in ready for name in node.input):
                ordered.append(node)
                ready.update(node.output)
            else:
                waiting.append(node)
        if len(waiting) == len(pending):
            raise BuildError("internal: the rewritten graph has a cycle or a missing input")
        pending = waiting
    del graph.node[:]
    graph.node.extend(ordered)
    return model


def drop_dead_nodes(model: onnx.ModelProto) -> onnx.ModelProto:
    """Remove nodes and initializers that no graph output depends on."""
    graph = model.graph
    needed = {out.name for out in graph.output}
    kept: list[onnx.NodeProto] = []
    for node in reversed(graph.node):
        if any(out in needed for out in node.output):
            kept.append(node)
            needed.update(node.input)
            for attr in node.attribute:  # subgraphs read outer names too
                if attr.type == onnx.AttributeProto.GRAPH:
                    needed.update(_names_used(attr.g))
    del graph.node[:]
    graph.node.extend(reversed(kept))
    inits = [init for init in graph.initializer if init.name in needed]
    del graph.initializer[:]
    graph.initializer.extend(inits)
    values = [v for v in graph.value_info if v.name in needed]
    del graph.value_info[:]
    graph.value_info.extend(values)
    return model


def _names_used(graph: onnx.GraphProto) -> set[str]:
    names = set()
    for node in graph.node:
        names.update(node.input)
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                names |= _names_used(attr.g)
    return names


def fold_constants(model: onnx.ModelProto) -> onnx.ModelProto:
    """Compute once every node whose inputs are all constants; keep its outputs as initializers."""
    graph = model.graph
    consts = _constants(graph)
    opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    kept: list[onnx.NodeProto] = []
    for node in graph.node:
        foldable = (
            node.op_type not in ("Constant", "Loop", "If", "Scan")
            and node.domain in ("", "ai.onnx")
            and all(name == "" or name in consts for name in node.input)
            and node.input
        )
        if not foldable:
            kept.append(node)
            continue
        single = helper.make_model(
            helper.make_graph(
                [node],
                "fold",
                [],
                [helper.make_value_info(o, onnx.TypeProto()) for o in node.output],
            ),
            opset_imports=[helper.make_opsetid("", opset)],
        )
        feeds = {name: consts[name] for name in node.input if name}
        try:
            results = ReferenceEvaluator(single).run(None, feeds)
        except Exception:  # an op the reference cannot run: leave it to the runtime
            kept.append(node)
            continue
        for name, value in zip(node.output, results, strict=True):
            consts[name] = np.asarray(value)
            graph.initializer.append(numpy_helper.from_array(np.asarray(value), name))
    del graph.node[:]
    graph.node.extend(kept)
    return drop_dead_nodes(model)


# --- one graph for the ensemble ---------------------------------------------------------------


def _rename(graph: onnx.GraphProto, mapping: Callable[[str], str]) -> None:
    for node in graph.node:
        if any(a.type == onnx.AttributeProto.GRAPH for a in node.attribute):
            raise BuildError("cannot fuse graphs that still hold subgraphs (Loop/If)")
        node.name = mapping(node.name) if node.name else node.name
        node.input[:] = [mapping(n) if n else n for n in node.input]
        node.output[:] = [mapping(n) for n in node.output]
    for seq in (graph.initializer, graph.input, graph.output, graph.value_info):
        for item in seq:
            item.name = mapping(item.name)


def fuse_variants(models: dict[str, onnx.ModelProto], fusion_name: str) -> onnx.ModelProto:
    """One model: the shared input, one output per variant (named after it), and their mean."""
    first = next(iter(models.values()))
    input_name = first.graph.input[0].name
    nodes, inits, values, outputs = [], [], [], []
    for variant, model in models.items():
        graph = onnx.GraphProto()
        graph.CopyFrom(model.graph)
        if graph.input[0].name != input_name or len(graph.output) != 1:
            raise BuildError("variants to fuse must share one input and have one output each")
        out_name = graph.output[0].name

        def mapping(n: str, v: str = variant, o: str = out_name) -> str:
            return n if n == input_name else v if n == o else f"{v}/{n}"

        _rename(graph, mapping)
        nodes += graph.node
        inits += graph.initializer
        values += graph.value_info
        outputs += graph.output
    mean = helper.make_node("Mean", [o.name for o in outputs], [fusion_name], name="fusion")
    fused_out = helper.make_tensor_value_info(fusion_name, onnx.TensorProto.FLOAT, None)
    fused_out.type.CopyFrom(outputs[0].type)
    graph = helper.make_graph(
        [*nodes, mean],
        "fsanet_fusion",
        [first.graph.input[0]],
        [*outputs, fused_out],
        initializer=inits,
        value_info=values,
    )
    model = helper.make_model(graph, opset_imports=first.opset_import, producer_name="fsanet")
    model.ir_version = first.ir_version
    onnx.checker.check_model(model)
    return model


# The per-model pipeline, in order.
PASSES: dict[str, Pass] = {
    "batch_capsule_map": batch_capsule_map,
    "fold_constants": fold_constants,
    "drop_dead_nodes": drop_dead_nodes,
}


def optimize(
    model: onnx.ModelProto, passes: list[str] | tuple[str, ...] = tuple(PASSES)
) -> onnx.ModelProto:
    for name in passes:
        model = PASSES[name](model)
    onnx.checker.check_model(model)
    return model

"""Convert one FSA-Net frozen graph to ONNX with tf2onnx."""

from __future__ import annotations

import contextlib
import io
import logging
from pathlib import Path

import onnx

from fsanet.assets.zoo import INPUT_SIZE, Variant
from fsanet.core.errors import BuildError
from fsanet.engine.backends.tensorflow import import_tensorflow, load_graph_def

# Names of the converted model's tensors (the TF names carry ":0" and slashes).
ONNX_INPUT = "input"
ONNX_OUTPUT = "pose"


def tf_to_onnx(
    graph_path: Path, variant: Variant, opset: int, batch_size: int | None
) -> onnx.ModelProto:
    """Convert `graph_path`; a `batch_size` fixes the batch dimension, None keeps it dynamic."""
    import_tensorflow()
    try:
        import tf2onnx
    except ImportError as e:
        raise BuildError("tf2onnx is not installed: pip install 'fsanet[build]'") from e
    logging.getLogger("tf2onnx").setLevel(logging.ERROR)
    logging.getLogger("tensorflow").setLevel(logging.ERROR)

    graph_def = load_graph_def(graph_path)
    names = {node.name for node in graph_def.node}
    for needed in (variant.input_name, variant.output_name):
        if needed not in names:
            raise BuildError(f"{graph_path} has no node '{needed}': not an FSA-Net graph")
    tf_in, tf_out = f"{variant.input_name}:0", f"{variant.output_name}:0"
    shapes = {tf_in: [batch_size, INPUT_SIZE, INPUT_SIZE, 3]} if batch_size else None
    # tf2onnx prints deprecation chatter to stdout; keep our output clean.
    with contextlib.redirect_stdout(io.StringIO()):
        model, _ = tf2onnx.convert.from_graph_def(
            graph_def,
            name=f"fsanet_{variant.name}",
            input_names=[tf_in],
            output_names=[tf_out],
            opset=opset,
            shape_override=shapes,
            tensors_to_rename={tf_in: ONNX_INPUT, tf_out: ONNX_OUTPUT},
        )
    onnx.checker.check_model(model)
    return model

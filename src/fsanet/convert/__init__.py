"""TensorFlow frozen graph -> ONNX. Needs the `build` extra (TensorFlow, tf2onnx)."""

from fsanet.convert.tf2onnx import tf_to_onnx

__all__ = ["tf_to_onnx"]

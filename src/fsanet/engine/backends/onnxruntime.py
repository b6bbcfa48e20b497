"""ONNX Runtime: the CPU, or NVIDIA GPUs through the TensorRT and CUDA execution providers
when the installed onnxruntime has them (onnxruntime-gpu)."""

from __future__ import annotations

import json
import os
import tempfile
from collections import Counter
from typing import Any

import numpy as np
import onnxruntime as ort

from fsanet.core.errors import ArtifactError
from fsanet.engine.backends.base import EXECUTED_PRECISIONS, IMAGE_SHAPE, Runner

# Best first; ONNX Runtime falls back along the list for any node a provider cannot run.
PREFERRED_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")


def providers(available: list[str] | None = None) -> list[str]:
    """The execution providers to use: every preferred one this onnxruntime offers."""
    offered = ort.get_available_providers() if available is None else available
    return [p for p in PREFERRED_PROVIDERS if p in offered] or ["CPUExecutionProvider"]


class OnnxRuntimeRunner(Runner):
    backend = "onnxruntime"

    def _options(self) -> ort.SessionOptions:
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # "split": one thread per session call, the base runner spreads a batch over the
        # cores instead (FSA-Net's tiny convolutions rarely split well inside one op).
        options.intra_op_num_threads = self.threads if self.cores == "shared" else 1
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        return options

    def _load(self) -> None:
        chosen = providers()
        if chosen[0] != "CPUExecutionProvider":
            self.threads = 1  # a GPU takes the whole batch in one call
        try:
            self._session = ort.InferenceSession(
                str(self.model_path), self._options(), providers=chosen
            )
        except Exception as e:  # onnxruntime raises its own unexported exception types
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ArtifactError(
                f"{self.model_path} cannot be loaded by ONNX Runtime ({first}): rebuild the engine"
            ) from e
        self._check_names(
            {i.name for i in self._session.get_inputs()},
            {o.name for o in self._session.get_outputs()},
        )

    @property
    def providers(self) -> list[str]:
        """The providers the session really uses (after load)."""
        return self._session.get_providers()

    def _run(self, batch: np.ndarray, worker: int, cores: int) -> list[np.ndarray]:
        # One session serves every worker: InferenceSession.run is thread-safe. A lone call
        # stays on one thread too: two intra-op threads gain only ~5% at batch 1 here.
        return self._session.run(self.output_names, {self.input_name: batch})

    def execution(self) -> dict[str, Any]:
        """Profile one call: the kernel each node ran and the types of its inputs."""
        options = self._options()
        options.enable_profiling = True
        with tempfile.TemporaryDirectory() as tmp:
            options.profile_file_prefix = os.path.join(tmp, "profile")
            session = ort.InferenceSession(
                str(self.model_path), options, providers=self._session.get_providers()
            )
            batch = np.full((self.batch_size or 2, *IMAGE_SHAPE), 128.0, np.float32)
            session.run(self.output_names, {self.input_name: batch})
            with open(session.end_profiling()) as f:
                events = json.load(f)
        ops: dict[str, Counter[str]] = {"conv": Counter(), "matmul": Counter()}
        for event in events:
            args = event.get("args", {})
            kind = _heavy_kind(args.get("op_name", ""))
            if event.get("cat") != "Node" or kind is None:
                continue
            ops[kind][_node_precision(args)] += 1
        return {
            "device": self._session.get_providers()[0],
            "ops": {kind: dict(counts) for kind, counts in ops.items() if counts},
        }


def _heavy_kind(op: str) -> str | None:
    if "Conv" in op:
        return "conv"
    if "MatMul" in op or "Gemm" in op:
        return "matmul"
    return None


def _node_precision(args: dict[str, Any]) -> str:
    """int8 for the quantised kernels (QLinearConv, ConvInteger...), else the float type."""
    op = args["op_name"]
    if op.startswith("QLinear") or op.endswith("Integer"):
        return "int8"
    types = [t for shapes in args.get("input_type_shape", []) for t in shapes]
    floats = [EXECUTED_PRECISIONS[t] for t in types if t in ("float", "float16", "bfloat16")]
    return floats[0] if floats else "fp32"

"""ONNX Runtime: the CPU, or NVIDIA GPUs through the TensorRT and CUDA execution providers
when the installed onnxruntime has them (onnxruntime-gpu)."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort

from fsanet.backends.base import Runner
from fsanet.errors import ArtifactError

# Best first; ONNX Runtime falls back along the list for any node a provider cannot run.
PREFERRED_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")


def providers(available: list[str] | None = None) -> list[str]:
    """The execution providers to use: every preferred one this onnxruntime offers."""
    offered = ort.get_available_providers() if available is None else available
    return [p for p in PREFERRED_PROVIDERS if p in offered] or ["CPUExecutionProvider"]


class OnnxRuntimeRunner(Runner):
    backend = "onnxruntime"

    def _load(self) -> None:
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # One thread per session call: the base runner spreads a batch over the cores
        # instead (FSA-Net's tiny convolutions do not split well inside one op).
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        chosen = providers()
        if chosen[0] != "CPUExecutionProvider":
            self.threads = 1  # a GPU takes the whole batch in one call
        try:
            self._session = ort.InferenceSession(str(self.model_path), options, providers=chosen)
        except Exception as e:  # onnxruntime raises its own unexported exception types
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ArtifactError(
                f"{self.model_path} cannot be loaded by ONNX Runtime ({first}): rebuild the engine"
            ) from e

    @property
    def providers(self) -> list[str]:
        """The providers the session really uses (after load)."""
        return self._session.get_providers()

    def _run(self, batch: np.ndarray, worker: int, cores: int) -> list[np.ndarray]:
        # One session serves every worker: InferenceSession.run is thread-safe. A lone call
        # stays on one thread too: two intra-op threads gain only ~5% at batch 1 here.
        return self._session.run(self.output_names, {self.input_name: batch})

"""ONNX Runtime on the CPU."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort

from fsanet.backends.base import Runner
from fsanet.errors import ArtifactError


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
        try:
            self._session = ort.InferenceSession(
                str(self.model_path), options, providers=["CPUExecutionProvider"]
            )
        except Exception as e:  # onnxruntime raises its own unexported exception types
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ArtifactError(
                f"{self.model_path} cannot be loaded by ONNX Runtime ({first}): rebuild the engine"
            ) from e

    def _run(self, batch: np.ndarray, worker: int) -> list[np.ndarray]:
        # One session serves every worker: InferenceSession.run is thread-safe.
        return self._session.run(self.output_names, {self.input_name: batch})

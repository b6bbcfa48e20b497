"""OpenVINO on the CPU: runs the IR kept in the artifact."""

from __future__ import annotations

import numpy as np
import openvino as ov

from fsanet.backends.base import Runner
from fsanet.errors import ArtifactError

# Our precision names -> OpenVINO's inference precision hint. int8 IR carries its own
# quantised ops; the float parts around them stay fp32.
_HINTS = {"fp32": "f32", "bf16": "bf16", "int8": "f32"}


class OpenVinoRunner(Runner):
    backend = "openvino"

    def _load(self) -> None:
        config = {
            "INFERENCE_PRECISION_HINT": _HINTS.get(self.precision, "f32"),
            # One stream (with one thread) per worker of the base runner.
            "INFERENCE_NUM_THREADS": self.threads,
            "NUM_STREAMS": self.threads,
        }
        try:
            compiled = ov.Core().compile_model(str(self.model_path), "CPU", config)
        except Exception as e:  # OpenVINO raises RuntimeError with multi-line text
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ArtifactError(
                f"{self.model_path} cannot be loaded by OpenVINO ({first}): rebuild the engine"
            ) from e
        # An infer request is not thread-safe: one per worker.
        self._requests = [compiled.create_infer_request() for _ in range(self.threads)]
        self._outputs = [compiled.output(name) for name in self.output_names]

    def _run(self, batch: np.ndarray, worker: int) -> list[np.ndarray]:
        results = self._requests[worker].infer({0: batch})
        return [np.array(results[port]) for port in self._outputs]

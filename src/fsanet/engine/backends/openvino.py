"""OpenVINO on the CPU: runs the IR kept in the artifact.

On an Intel Xeon with AMX, OpenVINO's CPU plugin ran a model with a dynamic batch
dimension 15-30% slower than the same model with fixed shapes (docs/BENCHMARKS.md). With
`shapes="fixed"` (the default) each call runs a copy of the model compiled for a fixed
batch: the call's batch rounded up to a power of two (padded with copies of its last crop),
compiled on first use and kept. `shapes="dynamic"` compiles one model for every batch size;
`fsanet build --precision auto` measures which is faster on the machine at hand.
"""

from __future__ import annotations

import threading
from collections import Counter
from typing import Any

import numpy as np
import openvino as ov

from fsanet.core.errors import ArtifactError
from fsanet.engine.backends.base import (
    EXECUTED_PRECISIONS,
    IMAGE_SHAPE,
    SHAPE_MODES,
    Runner,
    pad_batch,
)

# Our precision names -> OpenVINO's inference precision hint. int8 IR carries its own
# quantised ops; the float parts around them stay fp32.
_HINTS = {"fp32": "f32", "fp16": "f16", "bf16": "bf16", "int8": "f32"}


_MATMULS = ("FullyConnected", "MatMul")


def fixed_batch(size: int) -> int:
    """The batch a call of `size` crops runs at: the next power of two."""
    return 1 << (size - 1).bit_length()


class OpenVinoRunner(Runner):
    backend = "openvino"

    def _load(self) -> None:
        if self.shapes not in SHAPE_MODES:
            raise ArtifactError(f"shapes must be one of {SHAPE_MODES}, got {self.shapes!r}")
        self._core = ov.Core()
        self._compiled: dict[tuple[int, int], list[ov.InferRequest]] = {}
        self._compiling = threading.Lock()
        try:
            self._model = self._core.read_model(str(self.model_path))
            # Compile once now, so that a broken IR fails at load and not at the first call.
            self._requests(self._size(self.batch_size or 1), self.threads)
        except Exception as e:  # OpenVINO raises RuntimeError with multi-line text
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ArtifactError(
                f"{self.model_path} cannot be loaded by OpenVINO ({first}): rebuild the engine"
            ) from e
        self._check_names(
            {n for port in self._model.inputs for n in port.get_names()},
            {n for port in self._model.outputs for n in port.get_names()},
        )

    def _size(self, n: int) -> int:
        """The batch size the model is compiled for (-1: dynamic) for a call of `n` crops."""
        if self.batch_size is not None:
            return self.batch_size
        return fixed_batch(n) if self.shapes == "fixed" else -1

    def _requests(self, size: int, cores: int) -> list[ov.InferRequest]:
        """Infer requests (one per worker) of the model compiled for batch `size` on `cores`."""
        key = (size, cores)
        with self._compiling:
            if key not in self._compiled:
                model = self._model.clone()
                model.reshape([size, *IMAGE_SHAPE])
                # A lone call: one stream with every core. Otherwise one single-thread stream
                # per worker of the base runner.
                streams = 1 if cores > 1 else self.threads
                config = {
                    "INFERENCE_PRECISION_HINT": _HINTS.get(self.precision, "f32"),
                    "INFERENCE_NUM_THREADS": self.threads,
                    "NUM_STREAMS": streams,
                }
                compiled = self._core.compile_model(model, "CPU", config)
                # An infer request is not thread-safe: one per worker.
                self._compiled[key] = [compiled.create_infer_request() for _ in range(streams)]
            return self._compiled[key]

    def _infer_parts(self, parts: list[np.ndarray]) -> list[dict[str, np.ndarray]]:
        if self.batch_size is not None:
            return super()._infer_parts(parts)
        # OpenVINO runs the parts on its own streams: start them all, then collect.
        started = []
        for worker, part in enumerate(parts):
            size = self._size(len(part))
            request = self._requests(size, 1)[worker]
            request.start_async({0: pad_batch(part, size)})
            started.append((request, len(part)))
        results = []
        for request, n in started:
            request.wait()
            results.append({name: self._output(request, name, n) for name in self.output_names})
        return results

    def _run(self, batch: np.ndarray, worker: int, cores: int) -> list[np.ndarray]:
        size = self._size(len(batch))
        request = self._requests(size, cores)[worker if cores == 1 else 0]
        request.infer({0: pad_batch(batch, size)})
        return [self._output(request, name, len(batch)) for name in self.output_names]

    def execution(self) -> dict[str, Any]:
        """The compiled model's inference precision and each heavy layer's runtime precision."""
        size = self._size(self.batch_size or 1)
        compiled = self._requests(size, self.threads)[0].get_compiled_model()
        ops: dict[str, Counter[str]] = {"conv": Counter(), "matmul": Counter()}
        for op in compiled.get_runtime_model().get_ordered_ops():
            info = op.get_rt_info()
            layer = info["layerType"].astype(str)
            kind = "conv" if "Conv" in layer else "matmul" if layer in _MATMULS else None
            if kind is not None:
                precision = info["runtimePrecision"].astype(str)
                ops[kind][EXECUTED_PRECISIONS.get(precision, precision)] += 1
        hint = compiled.get_property("INFERENCE_PRECISION_HINT")
        return {
            "device": f"OpenVINO CPU ({self._core.get_property('CPU', 'FULL_DEVICE_NAME')})",
            "inference_precision": EXECUTED_PRECISIONS.get(hint.get_type_name(), str(hint)),
            "ops": {kind: dict(counts) for kind, counts in ops.items() if counts},
        }

    @staticmethod
    def _output(request: ov.InferRequest, name: str, n: int) -> np.ndarray:
        return request.get_tensor(name).data[:n].copy()

"""The runner interface: one model file on one backend, float32 images in, named arrays out.

A backend writes only `_load` and `_run`; input checks, batching to a fixed engine batch
size, spreading a batch over the cores and the context-manager protocol live here.
"""

from __future__ import annotations

import itertools
import os
import threading
from abc import ABC, abstractmethod
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from fsanet.assets.zoo import INPUT_SIZE
from fsanet.core.errors import ArtifactError, InputError

IMAGE_SHAPE = (INPUT_SIZE, INPUT_SIZE, 3)
# How a runner uses the cores: "split" cuts a batch into one single-threaded part per core;
# "shared" runs the whole batch in one call whose operators use every core.
CORE_MODES = ("split", "shared")
# How OpenVINO compiles a dynamic-batch model: one copy per padded batch size, or one for all.
SHAPE_MODES = ("fixed", "dynamic")
# The canonical names of the precisions the runtimes report for their compute-heavy ops.
EXECUTED_PRECISIONS = {
    "float": "fp32", "f32": "fp32", "float32": "fp32",
    "float16": "fp16", "f16": "fp16",
    "bfloat16": "bf16", "bf16": "bf16",
    "uint8": "int8", "int8": "int8", "u8": "int8", "i8": "int8",
}  # fmt: skip


def executed_precision(counts: dict[str, dict[str, int]]) -> str:
    """The precision most convolutions ran in, from {op kind: {precision: count}}."""
    convs = counts.get("conv") or next(iter(counts.values()), {})
    return max(convs, key=convs.__getitem__) if convs else "unknown"


def check_images(images: object) -> np.ndarray:
    """Validate a batch of crops and return it as contiguous float32 N x 64 x 64 x 3."""
    if not isinstance(images, np.ndarray):
        raise InputError(f"expected a numpy array of crops, got {type(images).__name__}")
    if images.ndim == 3 and images.shape == IMAGE_SHAPE:
        images = images[None]
    if images.ndim != 4 or images.shape[1:] != IMAGE_SHAPE:
        raise InputError(
            f"crops have shape {images.shape}, expected N x {INPUT_SIZE} x {INPUT_SIZE} x 3 "
            "(NHWC, BGR)"
        )
    if images.dtype == np.uint8:
        return images.astype(np.float32)
    if images.dtype != np.float32:
        raise InputError(
            f"crops have dtype {images.dtype}, expected float32 or uint8 BGR pixel values 0-255"
        )
    # Out-of-range pixels make the model return NaN; two reductions cost ~1% of a call.
    # A NaN fails both comparisons; an empty batch has no range to check.
    if images.size and not (images.min() >= 0.0 and images.max() <= 255.0):
        bad = images[~((images >= 0.0) & (images <= 255.0))].flat[0]
        what = "NaN or infinite values" if not np.isfinite(bad) else f"a value of {bad:g}"
        raise InputError(f"crops contain {what}: expected BGR pixel values 0-255")
    return np.ascontiguousarray(images)


def pad_batch(batch: np.ndarray, size: int) -> np.ndarray:
    """The batch grown to `size` crops with copies of its last one (outputs are sliced back)."""
    if len(batch) >= size:
        return batch
    return np.concatenate([batch, np.repeat(batch[-1:], size - len(batch), axis=0)])


def available_cpus() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def split_batch(size: int, workers: int, step: int = 1) -> list[tuple[int, int]]:
    """Cut `size` items into at most `workers` contiguous [start, stop) parts of whole steps."""
    units = -(-size // step)
    parts = max(1, min(workers, units))
    bounds = [round(i * units / parts) * step for i in range(parts + 1)]
    return [(a, min(b, size)) for a, b in itertools.pairwise(bounds) if a < size]


class Runner(ABC):
    """Runs one model. `batch_size` set means the engine only accepts that batch size.

    `threads` is the number of cores to use (default: all this process may use). FSA-Net's
    layers are too small to split well inside one op, so a batch is instead cut into one
    part per core and the parts run concurrently, each on one thread (data parallelism).
    A batch too small to cut (one crop) runs alone and may use every core. `cores="shared"`
    never cuts: every call runs alone on all the cores (better where the runtime's own
    threading wins, measured by `fsanet build --precision auto`). `shapes` is for OpenVINO:
    "fixed" compiles one model per padded batch size, "dynamic" one model for all. Calls to
    `infer` from several threads are safe; they take turns, since each one uses all the cores.
    """

    backend: ClassVar[str]

    def __init__(
        self,
        model_path: Path,
        input_name: str,
        output_names: list[str],
        batch_size: int | None = None,
        threads: int | None = None,
        precision: str = "fp32",
        cores: str = "split",
        shapes: str = "fixed",
    ) -> None:
        if cores not in CORE_MODES:
            raise ValueError(f"cores must be one of {CORE_MODES}, got {cores!r}")
        self.model_path = Path(model_path)
        self.input_name = input_name
        self.output_names = list(output_names)
        self.batch_size = batch_size
        self.threads = threads or available_cpus()
        self.precision = precision
        self.cores = cores
        self.shapes = shapes
        self._loaded = False
        self._pool: ThreadPoolExecutor | None = None
        self._turn = threading.Lock()

    def __enter__(self) -> Runner:
        self.load()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def load(self) -> None:
        if not self._loaded:
            self._load()
            if self.threads > 1 and self.cores == "split":
                self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix=self.backend)
            self._loaded = True

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None
        self._loaded = False

    def infer(self, images: np.ndarray) -> dict[str, np.ndarray]:
        """Run a batch of crops; returns output name -> N x 3 float32."""
        batch = check_images(images)
        with self._turn:
            self.load()
            if len(batch) == 0:
                return {name: np.zeros((0, 3), np.float32) for name in self.output_names}
            parts = split_batch(len(batch), self.threads, self.batch_size or 1)
            if len(parts) == 1 or self._pool is None:
                return self._infer_part(batch, 0, self.threads)
            results = self._infer_parts([batch[start:stop] for start, stop in parts])
        return {name: np.concatenate([r[name] for r in results]) for name in self.output_names}

    def execution(self) -> dict[str, Any]:
        """What the runtime really runs (after load): {"device": ..., "ops": {op kind:
        {precision: count}}}, the precisions as in EXECUTED_PRECISIONS' values."""
        return {"device": "CPU", "ops": {}}

    def warm_up(self, max_batch: int) -> None:
        """Run each batch shape that calls of up to `max_batch` crops use, so that the first
        real calls do not pay for setting them up (OpenVINO compiles a model per shape)."""
        sizes = {min(1 << i, max_batch) for i in range(max(max_batch, 1).bit_length() + 1)}
        for size in sorted(sizes):
            self.infer(np.full((size, *IMAGE_SHAPE), 128, np.float32))

    def _infer_parts(self, parts: list[np.ndarray]) -> list[dict[str, np.ndarray]]:
        """Run the parts of one batch concurrently, part i on worker i."""
        assert self._pool is not None
        futures = [
            self._pool.submit(self._infer_part, part, worker, 1)
            for worker, part in enumerate(parts)
        ]
        return [f.result() for f in futures]

    def _infer_part(self, batch: np.ndarray, worker: int, cores: int) -> dict[str, np.ndarray]:
        size = self.batch_size
        if size is None:
            return dict(zip(self.output_names, self._run(batch, worker, cores), strict=True))
        # A fixed-shape engine: split into chunks of `size`, padding the last one.
        parts: dict[str, list[np.ndarray]] = {name: [] for name in self.output_names}
        for start in range(0, len(batch), size):
            chunk = batch[start : start + size]
            n = len(chunk)
            outputs = self._run(pad_batch(chunk, size), worker, cores)
            for name, out in zip(self.output_names, outputs, strict=True):
                parts[name].append(out[:n])
        return {name: np.concatenate(arrays) for name, arrays in parts.items()}

    def _check_names(self, inputs: set[str], outputs: set[str]) -> None:
        """The manifest's tensor names must be the model's: a damaged manifest fails at load
        with one line, not at the first call (for a backend's `_load`)."""
        wanted = [self.input_name] if self.input_name not in inputs else []
        wanted += [name for name in self.output_names if name not in outputs]
        if wanted:
            raise ArtifactError(
                f"{self.model_path} has no tensor named {', '.join(map(repr, wanted))} "
                f"(inputs: {', '.join(sorted(inputs))}; outputs: {', '.join(sorted(outputs))}): "
                "the manifest does not match the model; rebuild with `fsanet build --force`"
            )

    @abstractmethod
    def _load(self) -> None:
        """Create the backend session(s); `_run` may then be called from `threads` threads."""

    @abstractmethod
    def _run(self, batch: np.ndarray, worker: int, cores: int) -> list[np.ndarray]:
        """Run one valid batch on behalf of `worker` (0 .. threads-1); outputs in order.

        `cores` is how many cores this call may use: 1 while the other workers run too,
        `threads` when it runs alone."""

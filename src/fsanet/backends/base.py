"""The runner interface: one model file on one backend, float32 images in, named arrays out.

A backend writes only `_load` and `_run`; input checks, batching to a fixed engine batch
size and the context-manager protocol live here.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import ClassVar

import numpy as np

from fsanet.errors import InputError
from fsanet.zoo import INPUT_SIZE

IMAGE_SHAPE = (INPUT_SIZE, INPUT_SIZE, 3)


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
    if not np.isfinite(images).all():
        raise InputError("crops contain NaN or infinite values")
    return np.ascontiguousarray(images)


class Runner(ABC):
    """Runs one model. `batch_size` set means the engine only accepts that batch size."""

    backend: ClassVar[str]

    def __init__(
        self,
        model_path: Path,
        input_name: str,
        output_names: list[str],
        batch_size: int | None = None,
        threads: int | None = None,
    ) -> None:
        self.model_path = Path(model_path)
        self.input_name = input_name
        self.output_names = list(output_names)
        self.batch_size = batch_size
        self.threads = threads
        self._loaded = False

    def __enter__(self) -> Runner:
        self.load()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def load(self) -> None:
        if not self._loaded:
            self._load()
            self._loaded = True

    def close(self) -> None:
        self._loaded = False

    def infer(self, images: np.ndarray) -> dict[str, np.ndarray]:
        """Run a batch of crops; returns output name -> N x 3 float32."""
        batch = check_images(images)
        self.load()
        if len(batch) == 0:
            return {name: np.zeros((0, 3), np.float32) for name in self.output_names}
        if self.batch_size is None:
            return dict(zip(self.output_names, self._run(batch), strict=True))
        return self._infer_fixed(batch, self.batch_size)

    def _infer_fixed(self, batch: np.ndarray, size: int) -> dict[str, np.ndarray]:
        # A fixed-shape engine: split into chunks of `size`, padding the last one.
        parts: dict[str, list[np.ndarray]] = {name: [] for name in self.output_names}
        for start in range(0, len(batch), size):
            chunk = batch[start : start + size]
            n = len(chunk)
            if n < size:
                pad = np.repeat(chunk[-1:], size - n, axis=0)
                chunk = np.concatenate([chunk, pad])
            for name, out in zip(self.output_names, self._run(chunk), strict=True):
                parts[name].append(out[:n])
        return {name: np.concatenate(arrays) for name, arrays in parts.items()}

    @abstractmethod
    def _load(self) -> None:
        """Create the backend session."""

    @abstractmethod
    def _run(self, batch: np.ndarray) -> list[np.ndarray]:
        """Run one valid batch; return the outputs in `output_names` order."""

"""The two Ray Serve deployments behind `fsanet serve --ray`: the pose engine and the face
detector. They scale separately; each replica loads its model once, from files the driver
sent through the object store (sha256-checked on arrival), and never builds one.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from fsanet.deploy.cluster._ray import ray, serve
from fsanet.deploy.cluster.config import FaceOptions
from fsanet.deploy.cluster.transfer import Package, Unpacked
from fsanet.deploy.serve.app import decode_and_detect
from fsanet.deploy.serve.config import Limits
from fsanet.deploy.serve.limits import HttpError
from fsanet.deploy.serve.service import Detected

# Replicas log warnings only and no line per request: that costs CPU on every call.
QUIET = {"enable_access_log": False, "log_level": "WARNING"}


def _crops(batches: list[np.ndarray]) -> int:
    return sum(len(b) for b in batches)


@serve.deployment(name="pose", logging_config=QUIET)
class PoseDeployment:
    """Angles for batches of checked float32 crops. A call of fewer than `batch` crops waits
    up to `max_wait_ms` in `@serve.batch` for others (from other fronts, or queued while the
    engine was busy) and runs with them as one engine call of up to `batch` crops; a call
    of `batch` crops or more runs at once. The engine is warmed up to `warm_batch`."""

    async def __init__(
        self,
        engine: ray.ObjectRef,
        threads: int,
        batch: int,
        max_wait_ms: float,
        warm_batch: int,
    ) -> None:
        package: Package = await engine
        # Off the event loop, which also serves Ray's health checks.
        self._files = await asyncio.to_thread(Unpacked, package)
        try:
            self.engine = await asyncio.to_thread(_load_engine, self._files, threads, warm_batch)
        except BaseException:
            self._files.close()
            raise
        self.batch = batch
        self._batched.set_max_batch_size(batch)
        self._batched.set_batch_wait_timeout_s(max_wait_ms / 1000.0)
        # One engine thread: the engine's own threads are the only parallelism inside it.
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="fsanet-engine")

    async def __call__(self, crops: np.ndarray) -> np.ndarray:
        if len(crops) >= self.batch:  # a full batch already (or one request's many crops)
            return await self._run(crops)
        return await self._batched(crops)

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.005, batch_size_fn=_crops)
    async def _batched(self, batches: list[np.ndarray]) -> list[np.ndarray]:
        angles = await self._run(batches[0] if len(batches) == 1 else np.concatenate(batches))
        bounds = np.cumsum([len(b) for b in batches])[:-1]
        return np.split(angles, bounds)

    async def _run(self, crops: np.ndarray) -> np.ndarray:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._infer, crops)

    def _infer(self, crops: np.ndarray) -> np.ndarray:
        return np.asarray(self.engine(crops), np.float64)

    def __del__(self) -> None:  # Ray Serve calls it when it stops a replica
        if hasattr(self, "engine"):
            self.engine.close()
        if hasattr(self, "_files"):
            self._files.close()


def _load_engine(files: Unpacked, threads: int, max_batch: int) -> Any:
    from fsanet.engine.pose import PoseEngine

    engine = PoseEngine.from_artifact(files.artifact(), threads).load()
    engine.warm_up(max_batch)
    return engine


@dataclass(frozen=True)
class Refusal:
    """A client's fault found on the replica (an undecodable image): the HttpError to raise
    on the front, sent as a value so it crosses the process boundary unchanged."""

    status: int
    message: str
    headers: dict[str, str]


class _FaceCrops:
    """What `decode_and_detect` reads: the detector and the crop settings."""

    def __init__(self, detector: Any, faces: FaceOptions) -> None:
        self.detector = detector
        self.crop, self.margin, self.normalize = faces.crop, faces.margin, faces.normalize


@serve.deployment(name="detect", logging_config=QUIET)
class DetectDeployment:
    """Images' bytes -> for each, the detections, their crops and the faces found (or a
    Refusal): decoding and YuNet on `threads` threads, as single-process `fsanet serve`
    runs them."""

    async def __init__(
        self, model: ray.ObjectRef, faces: FaceOptions, limits: Limits, threads: int
    ) -> None:
        package: Package = await model
        self._files = await asyncio.to_thread(Unpacked, package)
        try:
            import cv2

            from fsanet.faces.vision.detect import YuNet

            # OpenCV's own pool defaults to every core of the node: keep to this replica's.
            cv2.setNumThreads(threads)
            (name,) = package.files
            detector = YuNet(
                self._files.path / name, score_threshold=faces.score_threshold, threads=threads
            )
        except BaseException:
            self._files.close()
            raise
        self.faces = _FaceCrops(detector, faces)
        self.limits = limits
        self._executor = ThreadPoolExecutor(threads, thread_name_prefix="fsanet-vision")

    async def __call__(self, images: list[bytes]) -> list[Detected | Refusal | Exception]:
        """Each image on its own (one's fault is its own answer), `threads` at a time."""
        return list(await asyncio.gather(*(self._one(data) for data in images)))

    async def _one(self, data: bytes) -> Detected | Refusal | Exception:
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(
                self._executor, decode_and_detect, data, self.limits, self.faces
            )
        except HttpError as e:
            return Refusal(e.status, e.message, e.headers)
        except Exception as e:  # a bug: a 500 for this image only, as in one process
            return e

    def __del__(self) -> None:
        if hasattr(self, "_files"):
            self._files.close()

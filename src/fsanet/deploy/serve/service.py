"""The pose service behind the routes: the batcher, the memory budget, the metrics, and the
face detector's work off the event loop."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from fsanet.deploy.serve.batcher import DynamicBatcher
from fsanet.deploy.serve.budget import MB, MemoryBudget
from fsanet.deploy.serve.config import ServeConfig
from fsanet.deploy.serve.limits import (
    HttpError,
)
from fsanet.deploy.serve.metrics import ServeMetrics
from fsanet.engine.backends.base import available_cpus

if TYPE_CHECKING:
    from fastapi import Request

    from fsanet.engine.pose import PoseEngine
    from fsanet.faces.estimator import HeadPoseEstimator
    from fsanet.faces.vision.detect import Detector



REQUEST_ID = "fsanet.request_id"  # scope key; also sent back as the x-request-id header
log = logging.getLogger("uvicorn.error")  # uvicorn's handler and format


class ClientGone(Exception):
    """The client closed its connection before the answer."""


async def disconnected(request: Request) -> None:
    # After the body has been read, the next ASGI message is the disconnect (if any).
    while (await request.receive())["type"] != "http.disconnect":
        pass


# What detection gives for one image: the kept detections, their crops, the faces found.
Detected = tuple[list[Any], np.ndarray, int]


class FaceCropper(Protocol):
    """What detection reads of a HeadPoseEstimator: its detector and crop settings."""

    detector: Detector
    crop: str
    margin: float
    normalize: bool


@dataclass(frozen=True)
class Offload:
    """The engine and the detector running elsewhere (fsanet.deploy.cluster: Ray replicas) instead
    of in this process: `infer` turns a batch of checked float32 crops into angles (up to
    `concurrency` batches of up to `max_batch` crops at once; None: the config's), `detect`
    turns an image's bytes into `Detected` (None: no face detection). Both raise HttpError
    for what the client should see."""

    infer: Callable[[np.ndarray], Awaitable[np.ndarray]]
    detect: Callable[[bytes], Awaitable[Detected]] | None
    concurrency: int = 1
    max_batch: int | None = None


class PoseService:
    """The state behind the routes: engine, batcher, detector, metrics.

    With `remote`, the engine and the detector are `remote`'s, and only `engine.name` and
    `engine.variants` are read."""

    def __init__(
        self,
        engine: PoseEngine,
        config: ServeConfig,
        estimator: HeadPoseEstimator | None = None,
        remote: Offload | None = None,
    ) -> None:
        self.engine = engine
        self.config = config
        self.limits = config.limits
        self.estimator = estimator
        self.remote = remote
        self.faces = estimator is not None or (remote is not None and remote.detect is not None)
        self.in_flight = 0
        self.streams = 0  # open streams (WS /v1/stream)
        self.draining = False
        self.batcher = DynamicBatcher(
            self._infer if remote is None else remote.infer,
            max_batch=config.max_batch if remote is None else remote.max_batch or config.max_batch,
            max_wait_ms=config.max_wait_ms,
            max_queue=config.limits.max_queue,
            concurrency=1 if remote is None else remote.concurrency,
        )
        self.budget = MemoryBudget(
            int(config.max_inflight_mb * MB),
            max_waiting=config.max_waiting,
            wait_s=config.limits.request_timeout_s,
        )
        self.metrics = ServeMetrics(
            lambda: self.batcher.queue_depth,
            lambda: self.in_flight,
            lambda: self.budget.used,
            lambda: self.budget.waiting,
            lambda: self.budget.peak,
            lambda: self.streams,
            lambda: self.budget.capacity,
        )
        self.batcher.metrics = self.metrics
        # Detection and decoding are CPU work too: off the event loop, on every core (one
        # YuNet session serves every thread).
        self.vision = ThreadPoolExecutor(available_cpus(), thread_name_prefix="fsanet-vision")
        # JSON crops are parsed by one thread: a parser holds the GIL in stretches, and several
        # at once would starve the event loop.
        self.parsing = ThreadPoolExecutor(1, thread_name_prefix="fsanet-json")

    def _infer(self, crops: np.ndarray) -> np.ndarray:
        return np.asarray(self.engine(crops), np.float64)

    async def start(self) -> None:
        await self.batcher.start()

    async def stop(self) -> None:
        self.draining = True
        await self.batcher.stop()
        self.vision.shutdown(wait=True)
        self.parsing.shutdown(wait=True)

    async def angles(self, request: Request, crops: np.ndarray) -> np.ndarray:
        """Run crops through the batcher; 503 on timeout or overload, `ClientGone` if the
        client disconnects first (its crops are then dropped from the queue)."""
        result = asyncio.ensure_future(self.batcher.submit(crops))
        gone = asyncio.ensure_future(disconnected(request))
        done, _ = await asyncio.wait(
            {result, gone},
            timeout=self.limits.request_timeout_s,
            return_when=asyncio.FIRST_COMPLETED,
        )
        gone.cancel()
        if result in done:
            angles = result.result()
            if not np.isfinite(angles).all():  # the input was checked: the engine's fault
                rid = request.scope.get(REQUEST_ID, "?")
                log.error("request %s: the engine returned non-finite angles", rid)
                raise HttpError(500, f"internal error: non-finite angles (request {rid})")
            return angles
        result.cancel()
        if gone in done:
            raise ClientGone
        raise HttpError(
            503,
            f"no result within {self.limits.request_timeout_s:g} s (server overloaded)",
            {"Retry-After": "1"},
        )

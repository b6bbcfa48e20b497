"""Dynamic batching: crops from concurrent requests go through the engine together.

A request submits its crops (all faces of one image stay in one submission) and awaits its own
rows of the result. One worker gathers submissions until it has `max_batch` crops or the
oldest has waited `max_wait_ms`, then runs the engine on a thread of its own so the event
loop keeps accepting requests meanwhile. While the engine is busy, the queue fills, so under
load the next batch leaves at once: the wait only costs latency when the server is idle.
`max_batch=1` turns batching off (one engine call per request, in arrival order).

An engine elsewhere (`fsanet.deploy.cluster`: replicas on Ray) is an async `infer`; with
`concurrency` > 1 that many batches may be in flight at once, one per replica or more.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections import deque
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from fsanet.deploy.serve.metrics import ServeMetrics


class Overloaded(Exception):
    """The queue is full, or the batcher is shutting down: the client should retry later."""


@dataclass
class _Job:
    crops: np.ndarray
    future: asyncio.Future[np.ndarray]
    wait: bool = True  # False: its batch leaves without waiting for more (a stream's frame)
    enqueued: float = field(default_factory=time.perf_counter)


class DynamicBatcher:
    """Gathers crops from concurrent `submit` calls into engine calls of up to `max_batch`."""

    def __init__(
        self,
        infer: Callable[[np.ndarray], np.ndarray] | Callable[[np.ndarray], Awaitable[np.ndarray]],
        *,
        max_batch: int = 32,
        max_wait_ms: float = 5.0,
        max_queue: int = 4096,
        metrics: ServeMetrics | None = None,
        concurrency: int = 1,
    ) -> None:
        if max_batch < 1 or max_wait_ms < 0 or max_queue < 1 or concurrency < 1:
            raise ValueError("max_batch, max_queue and concurrency must be >= 1, max_wait_ms >= 0")
        self._infer = infer
        self._remote = inspect.iscoroutinefunction(infer)
        self.concurrency = concurrency
        self._batches: set[asyncio.Task[None]] = set()
        self.max_batch = max_batch
        self.max_wait = max_wait_ms / 1000.0
        self.max_queue = max_queue
        self.metrics = metrics
        self._queue: deque[_Job] = deque()
        self._queued_crops = 0
        self._hurried = 0  # queued jobs that do not wait for company
        self._wakeup: asyncio.Event | None = None
        self._worker: asyncio.Task[None] | None = None
        self._closing = False
        # One engine thread: ONNX Runtime releases the GIL while it runs, and a single caller
        # keeps the engine's own threading the only parallelism inside it.
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="fsanet-engine")

    @property
    def queue_depth(self) -> int:
        """Crops waiting for the engine (not counting the batch that is running)."""
        return self._queued_crops

    @property
    def running(self) -> bool:
        return self._worker is not None and not self._worker.done()

    async def start(self) -> None:
        self._wakeup = asyncio.Event()
        self._worker = asyncio.get_running_loop().create_task(self._run(), name="fsanet-batcher")

    async def stop(self) -> None:
        """Finish every job already queued, then stop (graceful shutdown drains the queue)."""
        self._closing = True
        if self._wakeup is not None:
            self._wakeup.set()
        if self._worker is not None:
            await self._worker
        self._executor.shutdown(wait=True)

    async def submit(self, crops: np.ndarray, *, wait: bool = True) -> np.ndarray:
        """Angles (N x 3) for N validated float32 crops, computed in some batch. `wait=False`:
        the batch leaves as soon as the engine is free, with whatever is queued (a stream's
        frame: its next one comes a camera frame later, so waiting for company only adds
        latency; under load the queue fills while the engine runs, and it still shares)."""
        if self._closing or not self.running:
            raise Overloaded("the server is shutting down")
        if self._queued_crops + len(crops) > self.max_queue:
            raise Overloaded(f"the queue is full ({self._queued_crops} crops waiting)")
        job = _Job(crops, asyncio.get_running_loop().create_future(), wait)
        self._queue.append(job)
        self._queued_crops += len(crops)
        self._hurried += not wait
        assert self._wakeup is not None
        self._wakeup.set()
        # The caller may cancel (timeout, client gone): the worker then skips the job.
        return await job.future

    async def _run(self) -> None:
        assert self._wakeup is not None
        # A slot is taken before gathering: while every slot is busy the queue fills, so the
        # next batch leaves full as soon as one frees.
        slots = asyncio.Semaphore(self.concurrency)
        while True:
            while not self._queue:
                if self._closing:
                    if self._batches:
                        await asyncio.wait(self._batches)
                    return
                self._wakeup.clear()
                await self._wakeup.wait()
            await slots.acquire()
            await self._gather()
            jobs = self._take()
            if not jobs:
                slots.release()
                continue
            task = asyncio.get_running_loop().create_task(self._run_batch(jobs, slots))
            self._batches.add(task)
            task.add_done_callback(self._batches.discard)

    async def _run_batch(self, jobs: list[_Job], slots: asyncio.Semaphore) -> None:
        try:
            await self._run_jobs(jobs)
        finally:
            slots.release()

    async def _run_jobs(self, jobs: list[_Job]) -> None:
        batch = jobs[0].crops if len(jobs) == 1 else np.concatenate([j.crops for j in jobs])
        start = time.perf_counter()
        try:
            if self._remote:
                angles = await self._infer(batch)  # type: ignore[misc]
            else:
                loop = asyncio.get_running_loop()
                angles = await loop.run_in_executor(self._executor, self._infer, batch)
        except Exception as e:  # a failed batch fails its requests, never the server
            for job in jobs:
                if not job.future.done():
                    job.future.set_exception(e)
            return
        if self.metrics is not None:
            self.metrics.batch_size.observe(len(batch))
            self.metrics.engine_seconds.observe(time.perf_counter() - start)
            self.metrics.crops.inc(len(batch))
        offset = 0
        for job in jobs:
            n = len(job.crops)
            if not job.future.done():
                job.future.set_result(angles[offset : offset + n])
            offset += n

    async def _gather(self) -> None:
        """Wait until `max_batch` crops are queued or the oldest job's wait is over."""
        assert self._wakeup is not None
        deadline = self._queue[0].enqueued + self.max_wait
        while self._queued_crops < self.max_batch and not self._closing and not self._hurried:
            remaining = deadline - time.perf_counter()
            if remaining <= 0:
                return
            self._wakeup.clear()
            try:
                await asyncio.wait_for(self._wakeup.wait(), remaining)
            except TimeoutError:
                return

    def _take(self) -> list[_Job]:
        """Pop jobs in arrival order up to `max_batch` crops (at least one job)."""
        jobs: list[_Job] = []
        total = 0
        while self._queue:
            job = self._queue[0]
            n = len(job.crops)
            if job.future.done():  # cancelled while waiting: drop it
                self._queue.popleft()
                self._queued_crops -= n
                self._hurried -= not job.wait
                continue
            if jobs and total + n > self.max_batch:
                break
            self._queue.popleft()
            self._queued_crops -= n
            self._hurried -= not job.wait
            jobs.append(job)
            total += n
        return jobs

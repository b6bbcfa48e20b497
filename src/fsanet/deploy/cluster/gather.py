"""Images sent to the detection replicas several per call: each call costs the front and the
replica ~1-2 ms of CPU each, as much as a tenth of detecting the image itself.

No timed wait: an image leaves at once while a call slot is free; while every slot is busy
images queue, and the next call takes what has queued (up to `max_items` images or
`max_bytes`). So batches only form under load, when they pay, and an idle server adds no
latency.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any


class Gather:
    """`submit(item)` -> its result, from `call(items) -> results` (one result per item, in
    order); an exception raised by `call` fails every item of that call."""

    def __init__(
        self,
        call: Callable[[list[bytes]], Awaitable[list[Any]]],
        *,
        concurrency: int,
        max_items: int = 8,
        max_bytes: int = 8 * 1024 * 1024,
    ) -> None:
        if concurrency < 1 or max_items < 1:
            raise ValueError("concurrency and max_items must be 1 or more")
        self._call = call
        self.concurrency, self.max_items, self.max_bytes = concurrency, max_items, max_bytes
        self._queue: deque[tuple[bytes, asyncio.Future[Any]]] = deque()
        self._busy = 0
        self._tasks: set[asyncio.Task[None]] = set()

    async def submit(self, item: bytes) -> Any:
        future = asyncio.get_running_loop().create_future()
        self._queue.append((item, future))
        self._pump()
        return await future  # cancelled (client gone): the item is skipped or its result dropped

    def _pump(self) -> None:
        while self._queue and self._busy < self.concurrency:
            batch = self._take()
            if not batch:
                return
            self._busy += 1
            task = asyncio.get_running_loop().create_task(self._send(batch))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def _take(self) -> list[tuple[bytes, asyncio.Future[Any]]]:
        batch: list[tuple[bytes, asyncio.Future[Any]]] = []
        size = 0
        while self._queue and len(batch) < self.max_items:
            item, future = self._queue[0]
            if future.done():  # cancelled while waiting
                self._queue.popleft()
                continue
            if batch and size + len(item) > self.max_bytes:
                break
            self._queue.popleft()
            batch.append((item, future))
            size += len(item)
        return batch

    async def _send(self, batch: list[tuple[bytes, asyncio.Future[Any]]]) -> None:
        try:
            results = await self._call([item for item, _ in batch])
        except Exception as e:
            for _, future in batch:
                if not future.done():
                    future.set_exception(e)
        else:
            for (_, future), result in zip(batch, results, strict=True):
                if not future.done():
                    future.set_result(result)
        finally:
            self._busy -= 1
            self._pump()

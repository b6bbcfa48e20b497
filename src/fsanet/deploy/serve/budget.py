"""Admission control: the memory that requests in flight hold, counted against a budget.

A request reserves what it will hold (its body, the decoded image, its crops) once that is
known and before the big allocations happen, and resizes its reservation as it learns more
(an image's faces are only known once it is decoded). Over budget it waits, first come first
served, in a bounded queue and for a bounded time; past either it gets 503 with
`Retry-After`. Everything runs on the event loop, so no locks are needed.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass

MB = 1024 * 1024


def machine_memory() -> int | None:
    """Bytes of physical memory, or None where the platform does not say."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def default_inflight_mb() -> float:
    """1/24 of the machine's memory, at most 1 GiB: with the process's own ~0.3-0.5 GB that
    keeps the peak under 1.5 GB on a 24 GB machine."""
    total = machine_memory()
    return 1024.0 if total is None else float(min(1024, max(64, total // 24 // MB)))


class OverBudget(Exception):
    """The memory budget is spent and the wait queue is full or the wait timed out."""

    def __init__(self, message: str, status: int = 503) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class Reservation:
    budget: MemoryBudget
    nbytes: int

    def shrink(self, nbytes: int) -> None:
        """Give back `nbytes` early (an image freed once its faces are cropped)."""
        nbytes = min(nbytes, self.nbytes)
        self.nbytes -= nbytes
        self.budget.release(nbytes)

    async def resize(self, nbytes: int) -> None:
        """Hold `nbytes` from now on: less gives the rest back at once; more waits, ahead of
        requests that hold nothing yet (this one finishing is what frees memory soonest)."""
        if nbytes <= self.nbytes:
            self.shrink(self.nbytes - nbytes)
            return
        if nbytes > self.budget.capacity:
            raise OverBudget(self.budget.too_big(nbytes), 413)
        await self.budget.acquire(nbytes - self.nbytes, first=True)
        self.nbytes = nbytes


@dataclass
class _Waiter:
    nbytes: int
    future: asyncio.Future[None]


class MemoryBudget:
    """Bytes in flight, at most `capacity`; waiting requests are served in arrival order."""

    def __init__(self, capacity: int, *, max_waiting: int = 64, wait_s: float = 10.0) -> None:
        self.capacity = capacity
        self.max_waiting = max_waiting
        self.wait_s = wait_s
        self.used = 0
        self.peak = 0  # the most ever reserved at once (never above `capacity`)
        self._waiters: deque[_Waiter] = deque()

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    @contextlib.asynccontextmanager
    async def reserve(self, nbytes: int) -> AsyncIterator[Reservation]:
        """Hold `nbytes` for the body of the `async with` (less after `shrink`)."""
        await self.acquire(nbytes)
        held = Reservation(self, nbytes)
        try:
            yield held
        finally:
            self.release(held.nbytes)

    def too_big(self, nbytes: int) -> str:
        return (
            f"the request needs {nbytes / MB:.0f} MB, more than the server's in-flight "
            f"budget of {self.capacity / MB:.0f} MB"
        )

    async def acquire(self, nbytes: int, *, first: bool = False) -> None:
        """Take `nbytes`, waiting if need be; `first`: at the head of the queue."""
        if nbytes > self.capacity:  # could never fit: no point in waiting
            raise OverBudget(self.too_big(nbytes), 413)
        if (first or not self._waiters) and self.used + nbytes <= self.capacity:
            self._take(nbytes)
            return
        # The queue bound is for newcomers: requests that hold memory already are bounded by
        # the budget itself, and refusing them would waste what they hold.
        if not first and len(self._waiters) >= self.max_waiting:
            raise OverBudget(f"the server is busy ({len(self._waiters)} requests waiting)")
        waiter = _Waiter(nbytes, asyncio.get_running_loop().create_future())
        if first:
            self._waiters.appendleft(waiter)
        else:
            self._waiters.append(waiter)
        try:
            await asyncio.wait_for(asyncio.shield(waiter.future), self.wait_s)
        except (TimeoutError, asyncio.CancelledError) as e:
            if waiter.future.done() and not waiter.future.cancelled():
                self.release(nbytes)  # granted just as the wait ended: give it back
            else:
                waiter.future.cancel()
                self._waiters.remove(waiter)
                self._wake()  # a smaller request behind this one may fit now
            if isinstance(e, asyncio.CancelledError):
                raise
            raise OverBudget(f"the server is busy (no memory free for {self.wait_s:g} s)") from None

    def take_now(self, nbytes: int) -> bool:
        """Take `nbytes` if they are free now and nobody waits for them, without waiting."""
        if self._waiters or self.used + nbytes > self.capacity:
            return False
        self._take(nbytes)
        return True

    def release(self, nbytes: int) -> None:
        self.used -= nbytes
        self._wake()

    def _wake(self) -> None:
        while self._waiters and self.used + self._waiters[0].nbytes <= self.capacity:
            waiter = self._waiters.popleft()
            self._take(waiter.nbytes)
            waiter.future.set_result(None)

    def _take(self, nbytes: int) -> None:
        self.used += nbytes
        self.peak = max(self.peak, self.used)

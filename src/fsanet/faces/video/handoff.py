"""Hand-offs between pipeline threads: a bounded queue for files, the newest item for cameras.

`background(items)` runs an iterator in its own thread and gives its items back through a
hand-off, so the stages of a chain overlap (OpenCV and the engines release the GIL). With
`latest=True` the hand-off keeps only the newest item: a slow consumer skips stale camera
frames instead of falling further and further behind.
"""

from __future__ import annotations

import queue
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")

_POLL = 0.05  # s: how often a blocked thread looks whether the other side has gone


class Closed(Exception):
    """The producer has finished and every item has been taken."""


class Latest(Generic[T]):
    """A hand-off of one slot: `put` replaces an item not yet taken (counted in `dropped`)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._item: T | None = None
        self._full = False
        self._closed = False
        self.dropped = 0

    def put(self, item: T, stop: threading.Event | None = None) -> None:
        with self._cond:  # never waits, so `stop` is not needed
            self.dropped += self._full
            self._item, self._full = item, True
            self._cond.notify()

    def close(self, stop: threading.Event | None = None) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify()

    def get(self, timeout: float | None = None) -> T:
        """The newest item; Closed when the producer has finished; queue.Empty on timeout."""
        with self._cond:
            if not self._cond.wait_for(lambda: self._full or self._closed, timeout):
                raise queue.Empty
            if not self._full:
                raise Closed
            item, self._item, self._full = self._item, None, False
            return item  # type: ignore[return-value]


class Bounded(Generic[T]):
    """A FIFO hand-off of at most `depth` items: the producer waits when it is full."""

    def __init__(self, depth: int) -> None:
        self._queue: queue.Queue[tuple[bool, T | None]] = queue.Queue(maxsize=depth)
        self.dropped = 0  # never: every item is kept

    def put(self, item: T, stop: threading.Event | None = None) -> None:
        self._put((True, item), stop)

    def close(self, stop: threading.Event | None = None) -> None:
        self._put((False, None), stop)

    def _put(self, entry: tuple[bool, T | None], stop: threading.Event | None) -> None:
        """Wait for room, giving up once `stop` is set (the consumer has gone)."""
        while True:
            try:
                self._queue.put(entry, timeout=_POLL)
                return
            except queue.Full:
                if stop is not None and stop.is_set():
                    return

    def get(self, timeout: float | None = None) -> T:
        more, item = self._queue.get(timeout=timeout)
        if not more:
            raise Closed
        return item  # type: ignore[return-value]


class _Failed:
    def __init__(self, error: BaseException) -> None:
        self.error = error


def background(
    items: Iterable[T], depth: int = 4, *, hand: Bounded[Any] | Latest[Any] | None = None
) -> Iterator[T]:
    """Iterate `items` in a thread of its own, handing them over through `hand` (default: a
    queue of `depth`); the producer's exception is raised here.

    Closing the returned generator (or an exception in the consumer) stops the producer
    at its next item; its iterator is closed in its own thread."""
    hand = Bounded(depth) if hand is None else hand
    stop = threading.Event()

    def produce() -> None:
        source = iter(items)
        try:
            for item in source:
                if stop.is_set():
                    break
                hand.put(item, stop)
        except BaseException as e:  # handed to the consumer, raised in its thread
            hand.put(_Failed(e), stop)  # in a Latest, it replaces any frame not yet taken
        finally:
            close = getattr(source, "close", None)
            if close is not None:
                close()
            hand.close(stop)

    thread = threading.Thread(target=produce, name="fsanet-stage", daemon=True)
    thread.start()
    try:
        while True:
            try:
                item = hand.get(timeout=_POLL)
            except queue.Empty:
                continue
            except Closed:
                return
            if isinstance(item, _Failed):
                raise item.error
            yield item
    finally:
        stop.set()
        thread.join()


def ordered_map(function: Callable[[T], R], items: Iterable[T], workers: int) -> Iterator[R]:
    """`map(function, items)` on `workers` threads at once, results in the items' order.

    At most `workers` + 1 items are taken ahead of the one handed out. An error is raised
    in its item's turn; closing the returned generator (or an error) waits for the calls
    in flight and closes `items`."""
    source = iter(items)
    pending: deque[Future[R]] = deque()
    pool = ThreadPoolExecutor(workers, thread_name_prefix="fsanet-stage")
    try:
        for item in source:
            pending.append(pool.submit(function, item))
            if len(pending) > workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    finally:
        for future in pending:
            future.cancel()  # not started yet: dropped; running: waited for below
        pool.shutdown(wait=True)
        close = getattr(source, "close", None)
        if close is not None:
            close()

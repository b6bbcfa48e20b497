"""Hand-offs between pipeline threads: order kept for files, stale frames dropped for cameras."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import numpy as np
import pytest

from fsanet.faces.video import Closed, Latest, background, decoded, ordered_map


def test_background_keeps_order_and_bounds_the_queue() -> None:
    produced: list[int] = []

    def items() -> Iterator[int]:
        for i in range(50):
            produced.append(i)
            yield i

    out = []
    for item in background(items(), depth=2):
        # The producer runs at most the queue's depth (+1 in its hand) ahead of the consumer.
        time.sleep(0.002)
        assert len(produced) - len(out) <= 4
        out.append(item)
    assert out == list(range(50))


def test_background_raises_the_producers_error_and_stops_it_when_closed() -> None:
    def failing() -> Iterator[int]:
        yield 1
        raise RuntimeError("decoder broke")

    with pytest.raises(RuntimeError, match="decoder broke"):
        list(background(failing()))

    finished = threading.Event()

    def endless() -> Iterator[int]:
        try:
            i = 0
            while True:
                yield i
                i += 1
        finally:
            finished.set()  # closed in the producer's own thread

    stream = background(endless(), depth=1)
    assert next(stream) == 0
    stream.close()
    assert finished.wait(2.0)


class _FastCamera:
    """A fake camera: a new frame every `period` seconds, whether read or not."""

    def __init__(self, period: float, frames: int) -> None:
        self.period, self.frames, self.start = period, frames, time.perf_counter()
        self.read_count = 0

    def read(self) -> tuple[bool, np.ndarray | None]:
        due = self.start + self.read_count * self.period
        time.sleep(max(0.0, due - time.perf_counter()))
        if self.read_count >= self.frames:
            return False, None
        image = np.full((4, 4, 3), self.read_count % 256, np.uint8)
        self.read_count += 1
        return True, image


def test_a_slow_consumer_of_a_camera_gets_fresh_frames_not_a_backlog() -> None:
    camera = _FastCamera(period=0.002, frames=300)  # 500 frames/s
    hand: Latest = Latest()
    seen, ages = [], []
    frames = decoded(camera.read, 500.0, camera=True)
    start = time.perf_counter()
    for frame in background(frames, hand=hand):
        # Counted in frames the camera has given since this one, when it is handed over: no
        # assumption on how fast either side runs on this machine.
        ages.append(camera.read_count - 1 - frame.index)
        seen.append(frame.index)
        time.sleep(0.02)  # a consumer 10x slower than the camera
    took = time.perf_counter() - start
    assert len(seen) + hand.dropped == 300
    # The consumer took at most one frame per 20 ms step; the rest were dropped, not queued.
    assert len(seen) <= took / 0.02 + 1 and hand.dropped > 0, (len(seen), took)
    assert seen == sorted(seen) and seen[-1] == 299  # in order, and the last frame arrives
    # Bounded latency: each frame handed over is the newest the camera gave (one more may be
    # in the producer's hand), where a queue would fall 270 frames behind.
    assert max(ages) <= 2, ages


def test_latest_keeps_only_the_newest_item() -> None:
    hand: Latest[int] = Latest()
    for i in range(5):
        hand.put(i)
    assert hand.get() == 4 and hand.dropped == 4
    hand.close()
    with pytest.raises(Closed):
        hand.get(timeout=0.1)


def test_ordered_map_runs_items_at_once_and_keeps_their_order() -> None:
    running, most = 0, 0
    lock = threading.Lock()

    def slow(n: int) -> int:
        nonlocal running, most
        with lock:
            running += 1
            most = max(most, running)
        time.sleep(0.02 if n % 2 else 0.001)  # odd items finish after the next even one
        with lock:
            running -= 1
        return n * n

    assert list(ordered_map(slow, range(10), 2)) == [n * n for n in range(10)]
    assert most == 2


def test_ordered_map_raises_in_order_and_closes_its_source() -> None:
    closed = threading.Event()

    def items():
        try:
            yield from range(100)
        finally:
            closed.set()

    def fail_at_3(n: int) -> int:
        if n == 3:
            raise ValueError("bad item 3")
        return n

    results = ordered_map(fail_at_3, items(), 2)
    assert [next(results) for _ in range(3)] == [0, 1, 2]
    with pytest.raises(ValueError, match="bad item 3"):
        next(results)
    assert closed.is_set()

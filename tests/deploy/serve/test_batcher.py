"""The dynamic batcher on a fake engine: gathering, splitting, cancelling, failing, draining."""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest

from fsanet.deploy.serve.batcher import DynamicBatcher, Overloaded
from fsanet.deploy.serve.metrics import ServeMetrics


class FakeEngine:
    """Angles = the crop's first pixel, so every row says which crop it came from."""

    def __init__(self, delay: float = 0.0, fail_on: float | None = None) -> None:
        self.calls: list[int] = []
        self.delay, self.fail_on = delay, fail_on
        self.threads: set[str] = set()

    def __call__(self, crops: np.ndarray) -> np.ndarray:
        self.threads.add(threading.current_thread().name)
        self.calls.append(len(crops))
        time.sleep(self.delay)
        if self.fail_on is not None and (crops[:, 0, 0, 0] == self.fail_on).any():
            raise RuntimeError("engine failure")
        return np.repeat(crops[:, 0, 0, :1], 3, axis=1).astype(np.float64)


def crops(*ids: float) -> np.ndarray:
    out = np.zeros((len(ids), 64, 64, 3), np.float32)
    out[:, 0, 0, 0] = ids
    return out


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 20))


def test_concurrent_requests_share_one_engine_call_and_get_their_own_rows():
    engine = FakeEngine()

    async def main() -> list[np.ndarray]:
        batcher = DynamicBatcher(engine, max_batch=64, max_wait_ms=200)
        await batcher.start()
        # Requests of 1, 2 and 3 crops: 6 crops in one call, each request its own rows.
        results = await asyncio.gather(
            batcher.submit(crops(1)), batcher.submit(crops(2, 3)), batcher.submit(crops(4, 5, 6))
        )
        await batcher.stop()
        return results

    results = run(main())
    assert engine.calls == [6]
    assert [r[:, 0].tolist() for r in results] == [[1], [2, 3], [4, 5, 6]]
    assert engine.threads == {"fsanet-engine_0"}  # never on the event loop's thread


def test_max_batch_caps_each_call_and_keeps_arrival_order():
    engine = FakeEngine()

    async def main() -> list[np.ndarray]:
        batcher = DynamicBatcher(engine, max_batch=4, max_wait_ms=50)
        await batcher.start()
        results = await asyncio.gather(*(batcher.submit(crops(i, i)) for i in range(5)))
        await batcher.stop()
        return results

    results = run(main())
    assert engine.calls == [4, 4, 2]  # a request's crops are never split between calls
    assert [r[:, 0].tolist() for r in results] == [[i, i] for i in range(5)]


def test_a_request_larger_than_max_batch_runs_alone():
    engine = FakeEngine()

    async def main() -> np.ndarray:
        batcher = DynamicBatcher(engine, max_batch=2, max_wait_ms=0)
        await batcher.start()
        result = await batcher.submit(crops(1, 2, 3, 4, 5))
        await batcher.stop()
        return result

    assert run(main())[:, 0].tolist() == [1, 2, 3, 4, 5]
    assert engine.calls == [5]


def test_batching_off_is_one_call_per_request():
    engine = FakeEngine()

    async def main() -> None:
        batcher = DynamicBatcher(engine, max_batch=1, max_wait_ms=50)
        await batcher.start()
        await asyncio.gather(*(batcher.submit(crops(i)) for i in range(6)))
        await batcher.stop()

    run(main())
    assert engine.calls == [1] * 6


def test_max_wait_bounds_the_wait_of_a_lone_request():
    # Ordering, not a time limit: a lone request in a 30 ms batcher is answered while one in a
    # 10 s batcher, submitted at the same moment, still waits; and not before its 30 ms.
    async def main() -> tuple[bool, bool, float]:
        short = DynamicBatcher(FakeEngine(), max_batch=32, max_wait_ms=30)
        long = DynamicBatcher(FakeEngine(), max_batch=32, max_wait_ms=10_000)
        await short.start()
        await long.start()
        start = time.perf_counter()
        quick = asyncio.ensure_future(short.submit(crops(1)))
        slow = asyncio.ensure_future(long.submit(crops(2)))
        await asyncio.wait([quick, slow], return_when=asyncio.FIRST_COMPLETED)
        elapsed = time.perf_counter() - start
        answered = quick.done(), slow.done()
        await short.stop()
        await long.stop()  # flushes the 10 s one at once
        await slow
        return *answered, elapsed

    quick_done, slow_done, elapsed = run(main())
    assert quick_done and not slow_done
    assert elapsed >= 0.025


def test_a_cancelled_request_is_dropped_before_the_engine_runs():
    engine = FakeEngine()

    async def main() -> np.ndarray:
        batcher = DynamicBatcher(engine, max_batch=32, max_wait_ms=100)
        await batcher.start()
        gone = asyncio.ensure_future(batcher.submit(crops(7, 7, 7)))
        await asyncio.sleep(0.01)
        gone.cancel()  # the client went away while queued
        result = await batcher.submit(crops(1))
        await batcher.stop()
        return result

    assert run(main())[:, 0].tolist() == [1]
    assert engine.calls == [1]


def test_an_engine_error_fails_its_batch_only():
    engine = FakeEngine(fail_on=9)

    async def main() -> tuple[list[object], np.ndarray]:
        batcher = DynamicBatcher(engine, max_batch=32, max_wait_ms=20)
        await batcher.start()
        failed = await asyncio.gather(
            batcher.submit(crops(9)), batcher.submit(crops(1)), return_exceptions=True
        )
        after = await batcher.submit(crops(2))  # the worker survived
        await batcher.stop()
        return failed, after

    failed, after = run(main())
    assert all(isinstance(r, RuntimeError) for r in failed)
    assert after[:, 0].tolist() == [2]


def test_a_full_queue_refuses_with_overloaded():
    async def main() -> None:
        batcher = DynamicBatcher(FakeEngine(delay=0.2), max_batch=2, max_wait_ms=0, max_queue=4)
        await batcher.start()
        first = asyncio.ensure_future(batcher.submit(crops(1, 2)))
        await asyncio.sleep(0.05)  # the engine is busy with the first two crops
        queued = [asyncio.ensure_future(batcher.submit(crops(3, 4, 5, 6)))]
        await asyncio.sleep(0)
        with pytest.raises(Overloaded, match="queue is full"):
            await batcher.submit(crops(7))
        await asyncio.gather(first, *queued)
        await batcher.stop()
        with pytest.raises(Overloaded, match="shutting down"):
            await batcher.submit(crops(8))

    run(main())


def test_stop_drains_the_queue():
    engine = FakeEngine()

    async def main() -> list[np.ndarray]:
        batcher = DynamicBatcher(engine, max_batch=32, max_wait_ms=10_000)
        await batcher.start()
        pending = [asyncio.ensure_future(batcher.submit(crops(i))) for i in range(3)]
        await asyncio.sleep(0.01)
        await batcher.stop()  # does not wait the 10 s: closing flushes at once
        return await asyncio.gather(*pending)

    start = time.perf_counter()
    results = run(main())
    assert [r[:, 0].tolist() for r in results] == [[0], [1], [2]]
    # Shorter than the batcher's own max wait: stop flushed the queue, it did not wait it out.
    assert time.perf_counter() - start < 10.0


def test_metrics_count_batches_and_queue_depth():
    async def main() -> ServeMetrics:
        batcher = DynamicBatcher(FakeEngine(), max_batch=8, max_wait_ms=20)
        metrics = ServeMetrics(lambda: batcher.queue_depth, lambda: 0)
        batcher.metrics = metrics
        await batcher.start()
        await asyncio.gather(*(batcher.submit(crops(i)) for i in range(8)))
        await batcher.stop()
        return metrics

    metrics = run(main())
    text = metrics.render()
    assert metrics.batch_size.count() == 1
    assert "fsanet_batch_size_sum 8" in text
    assert 'fsanet_batch_size_bucket{le="8"} 1' in text
    assert 'fsanet_batch_size_bucket{le="4"} 0' in text
    assert "fsanet_crops_total 8" in text
    assert "fsanet_queue_depth 0" in text


def test_bad_settings_are_refused():
    with pytest.raises(ValueError):
        DynamicBatcher(FakeEngine(), max_batch=0)


def test_serve_config_refuses_bad_settings():
    from fsanet.core.errors import FsanetError
    from fsanet.deploy.serve.config import Limits, ServeConfig

    with pytest.raises(FsanetError, match="max wait must be 0 or more"):
        ServeConfig(max_wait_ms=-1)
    with pytest.raises(FsanetError, match="request timeout must be positive"):
        ServeConfig(limits=Limits(request_timeout_s=0))
    assert ServeConfig(max_wait_ms=0).max_wait_ms == 0


def test_a_job_that_does_not_wait_takes_what_is_queued_and_leaves():
    engine = FakeEngine()

    async def main() -> tuple[list[np.ndarray], bool]:
        batcher = DynamicBatcher(engine, max_batch=64, max_wait_ms=10_000)
        await batcher.start()
        waiting = asyncio.ensure_future(batcher.submit(crops(1)))
        await asyncio.sleep(0.05)
        # A stream's frame: its batch leaves now, with the job queued before it.
        hurried = await asyncio.wait_for(batcher.submit(crops(2), wait=False), 5)
        alone = await asyncio.wait_for(batcher.submit(crops(3), wait=False), 5)
        first = await waiting
        late = asyncio.ensure_future(batcher.submit(crops(4)))  # waits its 10 s again
        await asyncio.sleep(0.2)
        still_waiting = not late.done()
        late.cancel()
        await batcher.stop()
        return [first, hurried, alone], still_waiting

    results, still_waiting = run(main())
    assert engine.calls == [2, 1]
    assert [r[:, 0].tolist() for r in results] == [[1], [2], [3]]
    assert still_waiting  # the hurry ended with the jobs that asked for it

"""Images gathered into calls to the detection replicas: at once while a slot is free,
several per call while every slot is busy."""

from __future__ import annotations

import asyncio

import pytest

from fsanet.deploy.cluster.gather import Gather


class Replica:
    def __init__(self, delay: float = 0.05, fail: Exception | None = None) -> None:
        self.calls: list[list[bytes]] = []
        self.in_flight = self.most = 0
        self.delay, self.fail = delay, fail

    async def __call__(self, items: list[bytes]) -> list[bytes]:
        self.calls.append(items)
        self.in_flight += 1
        self.most = max(self.most, self.in_flight)
        try:
            await asyncio.sleep(self.delay)
            if self.fail is not None:
                raise self.fail
            return [item.upper() for item in items]
        finally:
            self.in_flight -= 1


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 10))


def test_one_image_goes_at_once_and_busy_slots_gather_the_rest():
    replica = Replica()

    async def main() -> list[bytes]:
        gather = Gather(replica, concurrency=2, max_items=4)
        return await asyncio.gather(*(gather.submit(b"img%d" % i) for i in range(10)))

    assert run(main()) == [b"IMG%d" % i for i in range(10)]  # each its own answer
    # Two slots: the first two images leave alone, the eight that queued go four per call.
    assert [len(c) for c in replica.calls] == [1, 1, 4, 4]
    assert replica.most == 2


def test_a_call_holds_at_most_max_bytes_but_always_one_image():
    replica = Replica(delay=0.01)

    async def main() -> None:
        gather = Gather(replica, concurrency=1, max_items=8, max_bytes=10)
        await asyncio.gather(*(gather.submit(b"x" * 6) for _ in range(4)))
        await gather.submit(b"y" * 50)  # larger than max_bytes: sent alone

    run(main())
    assert [len(c) for c in replica.calls] == [1, 1, 1, 1, 1]


def test_a_failed_call_fails_its_images_only():
    async def main() -> list[object]:
        failing = Gather(Replica(fail=RuntimeError("lost")), concurrency=1)
        fine = Gather(Replica(), concurrency=1)
        return await asyncio.gather(
            failing.submit(b"a"), failing.submit(b"b"), fine.submit(b"c"), return_exceptions=True
        )

    a, b, c = run(main())
    assert isinstance(a, RuntimeError) and isinstance(b, RuntimeError) and c == b"C"


def test_a_cancelled_image_is_not_sent():
    replica = Replica()

    async def main() -> bytes:
        gather = Gather(replica, concurrency=1)
        first = asyncio.ensure_future(gather.submit(b"first"))
        await asyncio.sleep(0)
        gone = asyncio.ensure_future(gather.submit(b"gone"))
        await asyncio.sleep(0)
        gone.cancel()  # its client went away while it queued
        last = await gather.submit(b"last")
        await first
        return last

    assert run(main()) == b"LAST"
    assert replica.calls == [[b"first"], [b"last"]]


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="1 or more"):
        Gather(Replica(), concurrency=0)

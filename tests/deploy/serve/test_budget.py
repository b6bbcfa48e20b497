"""The memory budget without a server: waits in order, bounded queue and wait, 413 for giants."""

from __future__ import annotations

import asyncio

import pytest

from fsanet.deploy.serve.budget import MemoryBudget, OverBudget, default_inflight_mb


def run(coro):
    return asyncio.run(coro)


def test_requests_within_budget_pass_and_release():
    async def main() -> None:
        budget = MemoryBudget(100)
        async with budget.reserve(60) as held:
            assert budget.used == 60
            held.shrink(50)
            assert budget.used == 10
            async with budget.reserve(90):
                assert budget.used == 100
        assert budget.used == 0

    run(main())


def test_over_budget_waits_in_arrival_order_until_memory_is_freed():
    async def main() -> None:
        budget = MemoryBudget(100, wait_s=5)
        order: list[str] = []
        await budget.acquire(80)

        async def request(name: str, size: int) -> None:
            async with budget.reserve(size):
                order.append(name)
                await asyncio.sleep(0.01)

        tasks = [asyncio.ensure_future(request(n, s)) for n, s in (("a", 50), ("b", 10))]
        await asyncio.sleep(0.05)
        assert order == [] and budget.waiting == 2  # b fits, but waits behind a: no starvation
        budget.release(80)
        await asyncio.gather(*tasks)
        assert order == ["a", "b"] and budget.used == 0

    run(main())


def test_full_queue_and_long_wait_are_503_and_giants_413():
    async def main() -> None:
        budget = MemoryBudget(100, max_waiting=1, wait_s=0.2)
        await budget.acquire(100)
        waiter = asyncio.ensure_future(budget.acquire(10))
        await asyncio.sleep(0.01)
        with pytest.raises(OverBudget, match="waiting") as e:
            await budget.acquire(10)
        assert e.value.status == 503
        with pytest.raises(OverBudget, match="no memory free") as e:
            await waiter
        assert e.value.status == 503 and budget.waiting == 0
        with pytest.raises(OverBudget, match="more than") as e:
            await budget.acquire(101)
        assert e.value.status == 413
        budget.release(100)
        assert budget.used == 0

    run(main())


def test_a_cancelled_waiter_lets_the_next_one_in():
    async def main() -> None:
        budget = MemoryBudget(100, wait_s=5)
        await budget.acquire(60)
        big = asyncio.ensure_future(budget.acquire(50))
        small = asyncio.ensure_future(budget.acquire(30))
        await asyncio.sleep(0.01)
        big.cancel()  # the client went away
        await asyncio.sleep(0.01)
        assert small.done() and budget.used == 90

    run(main())


@pytest.mark.parametrize(
    ("memory_gib", "expected_mb"),
    [
        (24, 1024),  # 24 GiB / 24 = 1 GiB: the cap
        (96, 1024),  # capped at 1 GiB
        (12, 512),
        (2, 85),  # 2048 MiB / 24 = 85.3, whole MiB
        (1, 64),  # 42.7 MiB: raised to the floor of 64
        (None, 1024),  # unknown memory: the cap
    ],
)
def test_default_budget_is_a_24th_of_memory_within_64_mb_and_1_gib(
    monkeypatch, memory_gib, expected_mb
):
    from fsanet.deploy.serve import budget

    memory = None if memory_gib is None else memory_gib * 2**30
    monkeypatch.setattr(budget, "machine_memory", lambda: memory)
    assert default_inflight_mb() == expected_mb


def test_default_budget_of_this_machine_from_proc_meminfo():
    import os

    from fsanet.deploy.serve.budget import machine_memory

    if not os.path.exists("/proc/meminfo"):
        pytest.skip("no /proc/meminfo here (not Linux): the default is checked by hand above")
    with open("/proc/meminfo") as f:  # MemTotal: N kB, read here independently
        kib = next(int(line.split()[1]) for line in f if line.startswith("MemTotal:"))
    assert machine_memory() == kib * 1024
    assert default_inflight_mb() == min(1024, max(64, kib * 1024 // 24 // 2**20))


def test_a_reservation_resizes_and_a_growing_one_goes_first():
    async def main() -> None:
        budget = MemoryBudget(100, max_waiting=1, wait_s=5)
        order: list[str] = []
        async with budget.reserve(40) as held:
            await held.resize(10)  # the image is freed: 30 back at once
            assert budget.used == 10 and held.nbytes == 10
            await budget.acquire(90)  # the budget is full now
            newcomer = asyncio.ensure_future(budget.acquire(20))  # fills the waiting queue
            await asyncio.sleep(0.01)

            async def grow() -> None:  # its faces need more: not refused for the full queue
                await held.resize(30)
                order.append("grown")

            growing = asyncio.ensure_future(grow())
            newcomer.add_done_callback(lambda _: order.append("newcomer"))
            await asyncio.sleep(0.01)
            assert budget.waiting == 2 and not growing.done()
            budget.release(90)  # both fit now: the growing request is served first
            await asyncio.gather(growing, newcomer)
            assert order == ["grown", "newcomer"] and budget.used == 50
            with pytest.raises(OverBudget, match="more than") as e:
                await held.resize(101)
            assert e.value.status == 413 and held.nbytes == 30
        budget.release(20)
        assert budget.used == 0 and budget.peak == 100  # the most ever held: never above 100

    run(main())

"""The decoded-audio budget and the load pool on their own: reservations, waits, timeouts, cancellation."""

from __future__ import annotations

import asyncio
import threading

import pytest

from parakeet_worker.errors import EngineOverloadedError
from parakeet_worker.serving.budget import (
    AudioBudget,
    JobLimits,
    default_worker_audio_budget_s,
    machine_memory_bytes,
    reserve,
)
from parakeet_worker.serving.load_pool import LoadPool


async def test_a_reservation_waits_for_a_release_first_come_first_served() -> None:
    budget = AudioBudget(100.0, "job")
    await budget.acquire(70.0, None)
    order: list[str] = []

    async def take(name: str, seconds: float) -> None:
        await budget.acquire(seconds, None)
        order.append(name)

    big = asyncio.create_task(take("big", 60.0))
    await asyncio.sleep(0.01)
    small = asyncio.create_task(take("small", 10.0))  # would fit now, but waits behind the larger one
    await asyncio.sleep(0.05)
    assert order == [] and budget.used_s == 70.0
    budget.release(70.0)
    await asyncio.gather(big, small)
    assert order == ["big", "small"] and budget.used_s == 70.0


async def test_a_timed_out_or_cancelled_wait_holds_nothing() -> None:
    budget = AudioBudget(10.0, "worker")
    await budget.acquire(10.0, None)
    with pytest.raises(TimeoutError):
        await budget.acquire(5.0, 0.05)
    waiting = asyncio.create_task(budget.acquire(5.0, None))
    await asyncio.sleep(0.01)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    budget.release(10.0)
    assert budget.used_s == 0.0
    await budget.acquire(10.0, 0.05)  # the whole budget is free again


async def test_a_release_from_another_thread_wakes_the_waiter() -> None:
    budget = AudioBudget(1.0, "worker")
    await budget.acquire(1.0, None)
    threading.Timer(0.05, budget.release, args=(1.0,)).start()
    await budget.acquire(1.0, 5.0)
    assert budget.used_s == 1.0


async def test_reserve_shrinks_releases_and_refuses_with_overloaded_when_the_worker_stays_full() -> None:
    job, worker = AudioBudget(100.0, "job"), AudioBudget(50.0, "worker")
    first = await reserve(job, worker, 50.0, wait_s=1.0)
    first.shrink(20.0)
    assert (job.used_s, worker.used_s) == (20.0, 20.0)
    with pytest.raises(EngineOverloadedError, match="PARAKEET_WORKER_AUDIO_BUDGET_S") as refused:
        await reserve(job, worker, 50.0, wait_s=0.05)
    assert refused.value.code == "overloaded" and job.used_s == 20.0  # the job's share went back
    first.release()
    first.release()  # twice gives back once
    assert (job.used_s, worker.used_s) == (0.0, 0.0)


def test_the_worker_budget_is_sized_from_memory() -> None:
    memory = machine_memory_bytes()
    assert 0 < memory <= 1 << 50
    assert default_worker_audio_budget_s() == pytest.approx(memory / 4 / 64_000, abs=1)
    assert JobLimits().worker_audio_budget_s == default_worker_audio_budget_s()
    with pytest.raises(ValueError, match="job_audio_budget_s"):
        JobLimits(job_audio_budget_s=0)


def test_the_load_pool_runs_calls_on_daemon_threads_and_refuses_after_shutdown() -> None:
    pool = LoadPool(4)
    names = [pool.submit(lambda: threading.current_thread()).result(timeout=5) for _ in range(4)]
    assert all(t.daemon and t.name.startswith("audio-load") for t in names)
    assert pool.threads == 1  # one call at a time: the idle thread takes the next, no other is started
    gate = threading.Event()
    held = [pool.submit(gate.wait, 5) for _ in range(6)]
    assert pool.threads == 4  # never more than its maximum; the other two wait their turn
    gate.set()
    assert all(f.result(timeout=5) for f in held)
    failed = pool.submit(int, "x")
    with pytest.raises(ValueError):
        failed.result(timeout=5)
    pool.shutdown()
    with pytest.raises(RuntimeError):
        pool.submit(int, "1")

"""asyncio-specific: a rollout awaited inside an application's already running loop."""

from __future__ import annotations

import asyncio

import pytest

from async_rollout import RolloutRunner


@pytest.mark.asyncio
async def test_runs_inside_an_already_running_asyncio_loop() -> None:
    """pytest-asyncio's running loop stands in for an application's: no asyncio.run inside."""
    loop = asyncio.get_running_loop()
    served = loop.create_future()
    loop.call_later(0.001, served.set_result, "served")
    result = await RolloutRunner(20, 200, concurrency=4).run_with("CartPole-v1")
    assert result.summary["n_episodes"] == 20
    assert await served == "served"


@pytest.mark.asyncio
async def test_host_tasks_progress_during_rollout() -> None:
    """Another task of the application keeps running while a CPU-bound rollout is awaited."""
    ticks: list[float] = []

    async def heartbeat() -> None:
        while True:
            ticks.append(asyncio.get_running_loop().time())
            await asyncio.sleep(0.005)

    task = asyncio.ensure_future(heartbeat())
    try:
        result = await RolloutRunner(200, 500, concurrency=8).run_with("CartPole-v1")
    finally:
        task.cancel()
    assert result.summary["total_steps"] > 3000
    assert len(ticks) >= 3

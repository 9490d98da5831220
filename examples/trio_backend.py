"""The CartPole rollout of cartpole.py, on Trio instead of asyncio.

Nothing in the rollout changes: async-rollout runs on anyio, so only the
``backend`` argument does. The same seeds give the same episodes on both
backends, so this prints what ``python examples/cartpole.py`` prints (but for
the speed). Needs ``pip install trio`` (or ``pip install 'async-rollout[trio]'``).
"""

import anyio

from async_rollout import RolloutRunner


async def main() -> None:
    runner = RolloutRunner(n_episodes=32, max_episode_steps=500, concurrency=16, seed=0)
    result = await runner.run_with("CartPole-v1")  # agent=None: RandomPolicy
    summary = result.summary
    print(
        f"{summary['n_episodes']} episodes, {summary['total_steps']} steps: "
        f"return {summary['mean_return']:.1f} ± {summary['std_return']:.1f} "
        f"(min {summary['min_return']:.0f}, max {summary['max_return']:.0f}), "
        f"{summary['steps_per_s']:.0f} steps/s"
    )


if __name__ == "__main__":
    anyio.run(main, backend="trio")

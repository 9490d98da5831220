"""The minimal rollout: CartPole with a random policy, 32 episodes, 16 at a time."""

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
    anyio.run(main)

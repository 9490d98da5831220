"""Batched inference: one numpy MLP serving 64 concurrent CartPole episodes.

Each episode asks for one action at a time; BatchedPolicy coalesces the
concurrent requests into one forward pass over a batch of observations, and
gives each episode its own row back. Run it with ``python examples/batched_policy.py``.
"""

import anyio
import gymnasium as gym

from async_rollout import BatchedPolicy, RolloutRunner
from async_rollout.policies_batched import MLPBatchFn

CONCURRENCY = 64


async def main() -> None:
    # Only the spaces are needed to shape the network.
    probe = gym.make("CartPole-v1")
    batch_fn = MLPBatchFn(probe.observation_space, probe.action_space, hidden=32, seed=0)
    probe.close()
    # A batch as large as the number of episodes in flight goes as soon as every
    # episode has asked; max_delay_s bounds the wait once fewer are left.
    policy = BatchedPolicy(batch_fn, max_batch_size=CONCURRENCY, max_delay_s=0.002)

    runner = RolloutRunner(n_episodes=64, max_episode_steps=500, concurrency=CONCURRENCY)
    result = await runner.run_with("CartPole-v1", [], policy)

    print(result.summary)
    print(policy.statistics())


if __name__ == "__main__":
    anyio.run(main)

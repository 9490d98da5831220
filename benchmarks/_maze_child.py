"""Maze's SequentialRolloutRunner side by side with a plain loop and the runner.

Run with the Python of the Maze virtualenv (``benchmarks/setup_maze_venv.sh``):
``python -m benchmarks._maze_child '{"episodes": 200, "reps": 5}'``. Prints
one JSON object: seconds per repetition of each candidate, and step counts.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any

import gymnasium as gym


class _CountSteps(gym.Wrapper[Any, Any, Any, Any]):
    steps = 0

    def step(self, action: Any) -> Any:
        _CountSteps.steps += 1
        return self.env.step(action)


def main() -> None:
    args = json.loads(sys.argv[1])
    n, reps = int(args["episodes"]), int(args["reps"])

    from maze.core.agent.random_policy import RandomPolicy as MazeRandomPolicy
    from maze.core.log_stats.log_stats import GlobalLogState
    from maze.core.rollout.sequential_rollout_runner import SequentialRolloutRunner
    from maze.core.utils.seeding import MazeSeeding
    from maze.core.wrappers.maze_gym_env_wrapper import GymMazeEnv

    from async_rollout import RolloutRunner

    from ._common import interleaved, run_anyio
    from ._envs import contract_seeds, plain_gym_loop

    env_seeds, agent_seeds = contract_seeds(n)
    outcomes: dict[str, Any] = {}

    def maze() -> float:
        GlobalLogState.global_log_stats_writers.clear()
        _CountSteps.steps = 0
        t0 = time.process_time()
        env = GymMazeEnv(_CountSteps(gym.make("CartPole-v1")), render_mode=None)
        agent = MazeRandomPolicy(env.action_spaces_dict)
        runner = SequentialRolloutRunner(
            n_episodes=n,
            max_episode_steps=500,
            deterministic=False,
            record_trajectory=False,
            record_event_logs=False,
            render=False,
        )
        runner.maze_seeding = MazeSeeding(
            env_seed=0,
            agent_seed=0,
            cudnn_determinism_flag=False,
            explicit_env_seeds=env_seeds,
            explicit_env_eval_seeds=None,
            explicit_agent_seeds=agent_seeds,
            shuffle_seeds=False,
        )
        runner.run_with(env=env, wrappers={}, agent=agent)
        elapsed = time.process_time() - t0
        outcomes["maze_steps"] = _CountSteps.steps
        return elapsed

    def plain() -> float:
        t0 = time.process_time()
        env = gym.make("CartPole-v1")
        out = plain_gym_loop(env, env_seeds, agent_seeds)
        env.close()
        elapsed = time.process_time() - t0
        outcomes["plain"] = out
        return elapsed

    async def runner_main() -> float:
        t0 = time.process_time()
        result = await RolloutRunner(n, concurrency=1).run_with("CartPole-v1")
        elapsed = time.process_time() - t0
        outcomes["runner"] = [(ep.total_reward, ep.length) for ep in result.episodes]
        return elapsed

    got = interleaved(
        {"plain": plain, "runner": lambda: run_anyio(runner_main, "asyncio"), "maze": maze},
        reps,
    )
    print(
        json.dumps(
            {
                **got,
                "plain_steps": sum(length for _, length in outcomes["plain"]),
                "maze_steps": outcomes["maze_steps"],
                "same_outcomes": outcomes["runner"] == outcomes["plain"],
            }
        ),
        flush=True,
    )


if __name__ == "__main__":
    main()

"""100 episodes in flight against a remote simulator, from one process.

A simulator server (``serve_env``) and the rollout that drives it over TCP
(``RemoteEnv``) share this script so that it runs on its own; in practice the
server runs next to the simulator, e.g.
``await serve_env(MySimulator, host="0.0.0.0", port=7000, token=secret)``,
and only the client half runs here. Every step waits 5 ms for the simulator,
yet 100 episodes of 50 steps take a second or so, not 25 s: while one
episode waits for its simulator, the others step.

Run it with ``python examples/remote_simulator.py``.
"""

from functools import partial

import anyio

from async_rollout import RemoteEnv, RolloutRunner, serve_env
from async_rollout.testing import ScriptedEnv

N_EPISODES = 100
STEP_LATENCY_S = 0.005

# Stands in for a real simulator: each step takes 5 ms, each episode 50 steps.
simulator = partial(ScriptedEnv, episode_length=50, step_latency=STEP_LATENCY_S)


async def main() -> None:
    async with anyio.create_task_group() as tg:
        # The server: one simulator per connection, on a free port of the loopback interface.
        host, port = await tg.start(serve_env, simulator)

        # The client: one RemoteEnv (one connection, one simulator) per episode in flight.
        runner = RolloutRunner(
            n_episodes=N_EPISODES,
            max_episode_steps=200,
            concurrency=N_EPISODES,
            step_timeout=5.0,  # a simulator that stops answering fails its episode ...
            on_env_error="retry",  # ... which is re-run with the same seeds on a fresh connection
        )
        result = await runner.run_with(partial(RemoteEnv, host, port))
        tg.cancel_scope.cancel()  # stop the server

    summary = result.summary
    sequential_s = summary["total_steps"] * STEP_LATENCY_S
    print(
        f"{summary['n_episodes']} episodes ({summary['n_failed']} failed), "
        f"{summary['total_steps']} steps, mean return {summary['mean_return']:.2f}"
    )
    print(
        f"{summary['wall_time_s']:.2f} s on one event loop; "
        f"one episode at a time would wait {sequential_s:.0f} s for the simulator"
    )


if __name__ == "__main__":
    anyio.run(main)

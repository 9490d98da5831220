"""The same rollout on a Ray cluster: 2 workers, each with 16 episodes in flight.

Run it with ``python examples/ray_cluster.py``: it starts a local Ray cluster
when none is running (``ray_address=None``). To use a running cluster, start
one (``ray start --head`` here, ``ray start --address=<head>:6379`` on the
other machines) and pass ``--address auto``.

The env is a simulated remote simulator (each step waits 5 ms), built on the
workers from a ``_target_`` config; the seeds are fixed on the driver, so the
returns are those of a local run, which the script checks. At this size the
local run is faster: starting the Ray workers takes about a second, which
pays off only for rollouts that need more than one process's CPU.
"""

import argparse

import anyio

from async_rollout import RolloutRunner

ENV = {
    "_target_": "async_rollout.testing.ScriptedEnv",
    "episode_length": 20,
    "step_latency": 0.005,
}


async def main(address: str | None, n_episodes: int) -> None:
    ray_runner = RolloutRunner(
        n_episodes,
        concurrency=16,
        seed=0,
        backend="ray",
        n_workers=2,
        ray_address=address,
        # Small actors, so that both fit on a laptop's cluster.
        ray_actor_options={"num_cpus": 0.5},
    )
    result = await ray_runner.run_with(ENV)
    summary = result.summary
    print(
        f"Ray: {summary['n_episodes']} episodes, return {summary['mean_return']:.2f} "
        f"± {summary['std_return']:.2f}, {summary['wall_time_s']:.2f} s "
        "(starting the workers included)"
    )

    local = await RolloutRunner(n_episodes, concurrency=32, seed=0).run_with(ENV)
    same = local.returns == result.returns
    print(f"local: {local.summary['wall_time_s']:.2f} s; same returns as on Ray: {same}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--address", default=None, help="a Ray cluster to join, e.g. auto")
    parser.add_argument("--episodes", type=int, default=64)
    args = parser.parse_args()
    anyio.run(main, args.address, args.episodes)

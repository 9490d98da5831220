"""The Ray backend: the same rollout, sharded over a Ray cluster.

``RolloutRunner(..., backend="ray", n_workers=2, ray_address=None)`` (or
``runner.backend=ray`` on the command line) runs the episodes on Ray actors.
Each worker is an async actor with its own event loop running the local
interaction loop with ``concurrency`` episodes in flight, so a run has up
to ``n_workers * concurrency`` of them. What to know:

- **Same results.** Episode seeds are fixed on the driver and sent with each
  episode, so the episodes equal a local run's, whatever ``n_workers`` and
  ``concurrency``.
- **Work stealing.** The driver hands out episodes in small chunks as workers
  run low; faster workers take more. Results stream back as episodes end and
  go through the run's sinks (stats, progress, event log, files): sinks see
  every result, episode start and retry; ``on_step`` hooks are not called.
  Trajectories come back with the results and are written by the driver.
- **Shared output directory.** With ``shared_output_dir=True`` (and
  ``record_trajectory``), each worker writes its episodes' trajectory files
  into ``output_dir/trajectories/`` itself (the names and bytes a local run
  writes, through a temporary name) before sending the result, which comes
  back without them: the arrays never cross Ray's object store. The driver
  still writes ``run.json``, ``stats.json``, the journal and the event log,
  so resume works as usual. ``output_dir`` must be seen by every node at the
  same path (NFS, a shared volume): the driver checks it can write there and
  leaves a check file, and each worker checks that it sees that file and can
  write, before playing; else the run fails with a ConfigError naming the
  path and the worker. Sinks get a :class:`StoredTrajectory` naming the file
  (it reads the file when its fields are used).
- **What is shipped.** The env spec (a gymnasium id, a ``_target_`` config,
  resolved to plain values, or a callable) and the agent (an object, a
  config, or None) are pickled with cloudpickle and rebuilt on each worker:
  each worker has its own copy of the policy. Workers must be able to import
  what they name (install it there, or set ``runtime_env`` in
  ``ray_actor_options``). A user callable with a ``worker_index`` keyword gets
  ``rank * concurrency + slot``, unique over the cluster.
- **Faults.** A worker that dies gives its episodes back; other workers (and
  itself once Ray restarts it, ``max_restarts`` in ``ray_actor_options``,
  default 2) play them, and every episode still gets exactly one result.
  Under ``on_env_error="raise"`` a failure raises with its own type and notes
  naming the episode and the worker; a worker whose env factory fails raises
  the factory's error naming the worker and its first episode. When a run
  stops early, each episode handed out without a result (in flight, or
  queued on a worker) is recorded as ``"cancelled"``.
- **Connecting.** Ray is initialized only when it is not already:
  ``ray_address=None`` starts a local cluster (or joins ``RAY_ADDRESS``),
  ``"auto"`` joins the cluster of this machine (``ray start --head``),
  ``"ray://host:10001"`` a remote one. The connection stays open for later
  runs; each run starts its workers (about a second) and ends them.
- **asyncio only.** Ray's object refs are asyncio awaitables: under Trio, a
  run raises :class:`~async_rollout.ConfigError` at once.
- **Optional.** Ray is an extra (``pip install 'async-rollout[ray]'``),
  imported only when a run uses it; without it, ``backend="ray"`` is a
  :class:`~async_rollout.ConfigError` with that hint when the runner is made.
"""

from ._deps import INSTALL_HINT as INSTALL_HINT
from ._deps import ray_available as ray_available
from ._deps import require_ray as require_ray
from ._driver import ACTOR_NAME_PREFIX as ACTOR_NAME_PREFIX
from ._driver import DEFAULT_ACTOR_OPTIONS as DEFAULT_ACTOR_OPTIONS
from ._driver import run_on_ray as run_on_ray
from ._shared import StoredTrajectory as StoredTrajectory
from ._worker import RolloutWorker as RolloutWorker
from ._worker import WorkerCore as WorkerCore

__all__ = [
    "ACTOR_NAME_PREFIX",
    "DEFAULT_ACTOR_OPTIONS",
    "INSTALL_HINT",
    "RolloutWorker",
    "StoredTrajectory",
    "WorkerCore",
    "ray_available",
    "require_ray",
    "run_on_ray",
]

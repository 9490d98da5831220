"""Recording a rollout to disk: stats, trajectories, the event log, and resuming.

Readers: :func:`load_trajectory` and :func:`iter_trajectories`. The runner
calls :func:`prepare_output_dir` when it is given an ``output_dir``; the sinks
it returns can also be used on their own.
"""

from .._results import Trajectory as Trajectory
from ._events import EventLogSink as EventLogSink
from ._journal import EpisodeJournal as EpisodeJournal
from ._run_dir import OutputDir as OutputDir
from ._run_dir import prepare_output_dir as prepare_output_dir
from ._stats import StatsFileSink as StatsFileSink
from ._trajectories import TrajectorySink as TrajectorySink
from ._trajectories import iter_trajectories as iter_trajectories
from ._trajectories import load_trajectory as load_trajectory
from ._trajectories import write_trajectory as write_trajectory

__all__ = [
    "EpisodeJournal",
    "EventLogSink",
    "OutputDir",
    "StatsFileSink",
    "Trajectory",
    "TrajectorySink",
    "iter_trajectories",
    "load_trajectory",
    "prepare_output_dir",
    "write_trajectory",
]

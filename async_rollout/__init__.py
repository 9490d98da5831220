"""async-rollout: reinforcement-learning rollouts on one event loop.

Environments and policies are wrapped in async adapters and many episodes are
interleaved concurrently, so envs that wait on I/O overlap instead of queueing.
"""

from typing import TYPE_CHECKING

from ._batching import BatchedPolicy as BatchedPolicy
from ._config import load_config as load_config
from ._env import AsyncEnv as AsyncEnv
from ._env import AsyncEnvWrapper as AsyncEnvWrapper
from ._env import env_factory as env_factory
from ._env import wrap_env as wrap_env
from ._instantiate import instantiate as instantiate
from ._policy import AsyncPolicy as AsyncPolicy
from ._policy import EpisodeContext as EpisodeContext
from ._policy import RandomPolicy as RandomPolicy
from ._policy import wrap_policy as wrap_policy
from ._results import EpisodeResult as EpisodeResult
from ._results import RolloutResult as RolloutResult
from ._runner import RolloutRunner as RolloutRunner
from ._sinks import Sink as Sink
from ._version import __version__ as __version__
from .errors import ConfigError as ConfigError
from .errors import EnvError as EnvError
from .errors import PolicyError as PolicyError
from .errors import RemoteEnvError as RemoteEnvError
from .errors import RolloutError as RolloutError
from .errors import RolloutTimeout as RolloutTimeout

if TYPE_CHECKING:  # for type checkers and the API docs; at run time, see __getattr__
    from .remote import RemoteEnv as RemoteEnv
    from .remote import serve_env as serve_env

_LAZY = {"RemoteEnv": ".remote", "serve_env": ".remote"}


def __getattr__(name: str) -> object:
    # The remote subpackage (ssl, msgpack, anyio streams) loads on first use.
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "AsyncEnv",
    "AsyncEnvWrapper",
    "AsyncPolicy",
    "BatchedPolicy",
    "ConfigError",
    "EnvError",
    "EpisodeContext",
    "EpisodeResult",
    "PolicyError",
    "RandomPolicy",
    "RemoteEnv",
    "RemoteEnvError",
    "RolloutError",
    "RolloutResult",
    "RolloutRunner",
    "RolloutTimeout",
    "Sink",
    "__version__",
    "env_factory",
    "instantiate",
    "load_config",
    "serve_env",
    "wrap_env",
    "wrap_policy",
]

"""Remote environments: serve an env over the network, and use one from afar.

``serve_env`` runs an env server (one env per connection); ``RemoteEnv`` is
the :class:`~async_rollout.AsyncEnv` that talks to it. The wire protocol is
versioned (``PROTOCOL_VERSION``) and documented in ``docs/PROTOCOL.md``.
"""

from ._client import RemoteEnv as RemoteEnv
from ._client import RemoteEnvState as RemoteEnvState
from ._server import serve_env as serve_env
from ._server import serve_from_config as serve_from_config
from ._wire import DEFAULT_MAX_FRAME_SIZE as DEFAULT_MAX_FRAME_SIZE
from ._wire import PROTOCOL_VERSION as PROTOCOL_VERSION

__all__ = [
    "DEFAULT_MAX_FRAME_SIZE",
    "PROTOCOL_VERSION",
    "RemoteEnv",
    "RemoteEnvState",
    "serve_env",
    "serve_from_config",
]

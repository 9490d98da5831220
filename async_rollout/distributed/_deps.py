"""Ray as an optional dependency: detect it cheaply, import it lazily, fail loudly once."""

from __future__ import annotations

import importlib.util
import sys
from types import ModuleType

from ..errors import ConfigError

__all__ = ["INSTALL_HINT", "import_ray", "missing_ray", "ray_available", "require_ray"]

#: How to get Ray with a version this backend works with.
INSTALL_HINT = "pip install 'async-rollout[ray]'"


def missing_ray() -> ConfigError:
    """The error for ``backend="ray"`` without Ray installed (key ``runner.backend``)."""
    return ConfigError(
        f"backend 'ray' needs Ray, which is not installed: {INSTALL_HINT} (or use backend 'local')",
        key="runner.backend",
    )


def ray_available() -> bool:
    """True when ``import ray`` can work, found without importing it (importing Ray is slow)."""
    if "ray" in sys.modules:
        # None there means an import of it failed (or a test blocks it).
        return sys.modules["ray"] is not None
    try:
        return importlib.util.find_spec("ray") is not None
    except (ImportError, ValueError):
        return False


def require_ray() -> None:
    """Check that Ray is installed, without importing it.

    Raises:
        ConfigError: Ray is not installed; the message gives the install hint.
    """
    if not ray_available():
        raise missing_ray()


def import_ray() -> ModuleType:
    """Import Ray (the first time costs about a second).

    Raises:
        ConfigError: Ray cannot be imported; the message gives the install hint.
    """
    try:
        import ray
    except ImportError as exc:
        raise missing_ray() from exc
    return ray

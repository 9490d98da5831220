"""Names for the input unions and modes, validated in one place."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Literal, TypeAlias, get_args

Offload = Literal["inline", "thread", "process"]
OnEnvError = Literal["raise", "skip", "retry"]
Backend = Literal["local", "ray"]
Outcome = Literal["completed", "env_error", "policy_error", "timeout", "cancelled"]

OUTCOMES: tuple[Outcome, ...] = get_args(Outcome)
FAILED_OUTCOMES: frozenset[Outcome] = frozenset({"env_error", "policy_error", "timeout"})

#: Anything :func:`async_rollout.env_factory` turns into a factory: a callable,
#: a gymnasium id, or a ``_target_`` mapping.
EnvSpec: TypeAlias = Callable[..., Any] | str | Mapping[str, Any]
#: One wrapper entry: a class or callable, a dotted path, a ``_target_`` mapping,
#: or a Maze-style ``{class or dotted path: kwargs}`` mapping.
WrapperSpec: TypeAlias = Callable[..., Any] | str | Mapping[Any, Any]


def check_choice(name: str, value: object, choices: tuple[str, ...]) -> None:
    """Raise a ValueError naming ``name`` unless ``value`` is one of ``choices``."""
    if value not in choices:
        valid = ", ".join(repr(c) for c in choices)
        raise ValueError(f"{name} must be one of {valid}; got {value!r}")


def to_container(value: Any) -> Any:
    """Turn an omegaconf DictConfig/ListConfig into plain dicts and lists; anything else as is."""
    from omegaconf import Container, OmegaConf

    if isinstance(value, Container):
        return OmegaConf.to_container(value, resolve=True)
    return value

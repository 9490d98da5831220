"""FunctionPolicy: an AsyncPolicy made from a plain function, counting its calls."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import numpy as np

__all__ = ["FunctionPolicy"]


class FunctionPolicy:
    """An :class:`~async_rollout.AsyncPolicy` that calls ``fn(observation, rng)``.

    For tests: the policy's behaviour is the function's, and :attr:`calls`
    tells how often the runner asked for an action. ``fn`` may be sync or
    async (decided once, here); ``rng`` is the episode's generator, so a
    function that draws only from it keeps episodes reproducible.
    ``deterministic`` is not passed on: close over it if the test needs it.

    Args:
        fn: ``fn(observation, rng) -> action``, or a coroutine function with
            that signature.

    Attributes:
        fn: The function.
        calls: How many times ``compute_action`` was called, including calls
            that raised or were cancelled.
    """

    def __init__(self, fn: Callable[[Any, np.random.Generator], Any]) -> None:
        if not callable(fn):
            raise TypeError(
                f"FunctionPolicy needs a callable fn(observation, rng) -> action; got {fn!r}"
            )
        self.fn = fn
        self.calls = 0
        # An object with an async __call__ is not a coroutine function itself.
        self._is_async = inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(
            type(fn).__call__
        )

    async def compute_action(
        self, observation: Any, *, deterministic: bool, rng: np.random.Generator
    ) -> Any:
        """Return ``fn(observation, rng)``, awaited when ``fn`` is async."""
        self.calls += 1
        action = self.fn(observation, rng)
        if self._is_async:
            action = await action
        return action

    def __repr__(self) -> str:
        return f"FunctionPolicy({self.fn!r}, calls={self.calls})"

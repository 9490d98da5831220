"""Example policies for the ``agent`` config group.

Both are :class:`~async_rollout.AsyncPolicy` implementations that hold no
per-episode state, so one instance serves every concurrent episode; their only
randomness is the ``rng`` of the episode.
"""

from __future__ import annotations

from os import PathLike
from pathlib import Path
from typing import Any, Self

import numpy as np
import numpy.typing as npt
from gymnasium import spaces

__all__ = ["HeuristicCartPolePolicy", "LinearPolicy"]


class HeuristicCartPolePolicy:
    """CartPole's classic hand-written controller: push towards the side the pole leans to.

    Deterministic: ``deterministic`` and ``rng`` are accepted and ignored.
    """

    async def compute_action(
        self, observation: Any, *, deterministic: bool, rng: np.random.Generator
    ) -> int:
        """Return 1 (push right) when the pole leans or falls to the right, else 0."""
        angle, angular_velocity = float(observation[2]), float(observation[3])
        # Weighing in the angular velocity anticipates the fall; the angle alone oscillates.
        return 1 if angle + 0.5 * angular_velocity > 0 else 0


class LinearPolicy:
    """A linear policy in numpy on the flattened observation.

    For a ``Discrete`` action space, ``logits = W @ obs + b``: the argmax when
    ``deterministic``, else a sample of ``softmax(logits)`` drawn with the
    episode's rng. For a ``Box`` action space, ``tanh(W @ obs + b)`` (plus
    Gaussian noise before the tanh when not deterministic) scaled to the bounds;
    unbounded dimensions stay in [-1, 1].

    Args:
        observation_space: Any space ``gymnasium.spaces.flatten`` handles.
        action_space: A ``Discrete`` or ``Box`` space.
        weights_file: An ``.npz`` file written by :meth:`save`, relative to
            ``input_dir`` when that is given. None: random weights drawn from ``seed``.
        input_dir: The directory ``weights_file`` is read from (the config's
            ``input_dir``, passed by the runner).
        seed: Seeds the random weights used without ``weights_file``.
        noise_std: Standard deviation of the noise added for ``Box`` actions when
            not deterministic.

    Raises:
        TypeError: The action space is neither ``Discrete`` nor ``Box``.
        FileNotFoundError: ``weights_file`` does not exist.
        ValueError: ``weights_file`` does not hold weights fitting the spaces.
    """

    def __init__(
        self,
        observation_space: spaces.Space[Any],
        action_space: spaces.Space[Any],
        *,
        weights_file: str | PathLike[str] | None = None,
        input_dir: str | PathLike[str] | None = None,
        seed: int = 0,
        noise_std: float = 0.1,
    ) -> None:
        self.observation_space = observation_space
        self.action_space = action_space
        self.noise_std = noise_std
        if isinstance(action_space, spaces.Discrete):
            n_out = int(action_space.n)
        elif isinstance(action_space, spaces.Box):
            n_out = int(np.prod(action_space.shape))
            finite = np.isfinite(action_space.low) & np.isfinite(action_space.high)
            low = np.where(finite, action_space.low, -1.0).astype(np.float64)
            high = np.where(finite, action_space.high, 1.0).astype(np.float64)
            self._center = ((high + low) / 2).ravel()
            self._half_range = ((high - low) / 2).ravel()
        else:
            raise TypeError(
                f"LinearPolicy needs a Discrete or Box action_space, got {action_space}"
            )
        shape = (n_out, spaces.flatdim(observation_space))
        if weights_file is None:
            init = np.random.default_rng(seed)
            self.weights = init.normal(0.0, 1.0 / np.sqrt(shape[1]), size=shape)
            self.bias = np.zeros(n_out)
        else:
            path = Path(weights_file) if input_dir is None else Path(input_dir) / weights_file
            self.weights, self.bias = _read_weights(path, shape)

    @classmethod
    def load(
        cls,
        path: str | PathLike[str],
        observation_space: spaces.Space[Any],
        action_space: spaces.Space[Any],
        **kwargs: Any,
    ) -> Self:
        """Build a policy from weights written by :meth:`save`.

        Args:
            path: The ``.npz`` file.
            observation_space: The env's observation space.
            action_space: The env's action space.
            **kwargs: More keyword arguments of the constructor (``noise_std``).
        """
        return cls(observation_space, action_space, weights_file=path, **kwargs)

    def save(self, path: str | PathLike[str]) -> None:
        """Write the weights and bias to ``path`` as an ``.npz`` file (exactly that name)."""
        # Through a file object, so that numpy does not append ".npz" to the name.
        with open(path, "wb") as file:
            np.savez(file, weights=self.weights, bias=self.bias)

    async def compute_action(
        self, observation: Any, *, deterministic: bool, rng: np.random.Generator
    ) -> int | npt.NDArray[Any]:
        """Return the action for ``observation`` (see the class docstring)."""
        features = np.asarray(spaces.flatten(self.observation_space, observation), np.float64)
        scores = self.weights @ features + self.bias
        if isinstance(self.action_space, spaces.Discrete):
            if not deterministic:
                # Gumbel-max: the argmax of logits plus Gumbel noise is a sample of their softmax.
                scores = scores + rng.gumbel(size=scores.shape)
            return int(self.action_space.start) + int(np.argmax(scores))
        if not deterministic:
            scores = scores + rng.normal(0.0, self.noise_std, size=scores.shape)
        action = self._center + self._half_range * np.tanh(scores)
        box = self.action_space
        return action.reshape(box.shape).astype(box.dtype)


def _read_weights(path: Path, shape: tuple[int, int]) -> tuple[npt.NDArray[Any], ...]:
    if not path.is_file():
        raise FileNotFoundError(f"weights_file {str(path)!r} does not exist")
    # No pickle: a weights file must not be able to run code.
    with np.load(path, allow_pickle=False) as data:
        if {"weights", "bias"} - set(data.files):
            raise ValueError(
                f"weights_file {str(path)!r} holds {sorted(data.files)}; expected 'weights' "
                "and 'bias' as written by LinearPolicy.save"
            )
        weights, bias = data["weights"], data["bias"]
    if weights.shape != shape or bias.shape != shape[:1]:
        raise ValueError(
            f"weights_file {str(path)!r} holds weights {weights.shape} and bias {bias.shape}; "
            f"these spaces need {shape} and {shape[:1]}"
        )
    return weights, bias

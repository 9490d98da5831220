"""A batched numpy MLP policy: an example ``batch_fn`` and a config-friendly factory.

:class:`MLPBatchFn` is a two-layer tanh network with fixed random weights,
written as a ``batch_fn`` for :class:`~async_rollout.BatchedPolicy`;
:func:`batched_mlp_policy` builds the policy from an env's spaces, which is
what ``conf/agent/batched.yaml`` points at. The weights are random, so the
policy does not play well: it shows how batching is wired, and gives the
benchmarks a forward pass whose cost grows with the batch.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from gymnasium import spaces

from ._batching import BatchedPolicy

__all__ = ["MLPBatchFn", "batched_mlp_policy"]


class MLPBatchFn:
    """A ``batch_fn`` computing actions with a tanh MLP of fixed random weights.

    Each row's action depends only on that row's observation and generator:
    for a ``Discrete`` action space, the argmax of the logits when
    ``deterministic``, else a sample from their softmax drawn with the row's
    rng; for a ``Box``, the network's output squashed into the bounds (where
    the box is bounded), with standard normal noise added before the squash
    when not ``deterministic``. Batched and one-row calls therefore agree, up
    to the rounding of the matrix products.

    Args:
        observation_space: A ``Box`` (flattened into the input layer).
        action_space: A ``Discrete`` or a ``Box``.
        hidden: Width of the hidden layer.
        seed: Seed of the weights.

    Raises:
        TypeError: A space is of a kind the network does not handle.
        ValueError: ``hidden`` is not positive.
    """

    def __init__(
        self,
        observation_space: spaces.Space[Any],
        action_space: spaces.Space[Any],
        *,
        hidden: int = 32,
        seed: int = 0,
    ) -> None:
        if not isinstance(observation_space, spaces.Box):
            raise TypeError(f"MLPBatchFn needs a Box observation space; got {observation_space!r}")
        if not isinstance(action_space, spaces.Discrete | spaces.Box):
            raise TypeError(
                f"MLPBatchFn needs a Discrete or Box action space; got {action_space!r}"
            )
        if hidden < 1:
            raise ValueError(f"hidden must be >= 1; got {hidden}")
        self.observation_space = observation_space
        self.action_space = action_space
        n_in = int(np.prod(observation_space.shape))
        if isinstance(action_space, spaces.Discrete):
            n_out = int(action_space.n)
        else:
            n_out = int(np.prod(action_space.shape))
        init = np.random.default_rng(seed)
        # Scaled so the pre-activations stay near unit variance whatever the widths.
        self._w1 = init.normal(0.0, 1.0 / np.sqrt(n_in), size=(n_in, hidden))
        self._b1 = np.zeros(hidden)
        self._w2 = init.normal(0.0, 1.0 / np.sqrt(hidden), size=(hidden, n_out))
        self._b2 = np.zeros(n_out)

    def __repr__(self) -> str:
        return (
            f"MLPBatchFn({self.observation_space!r}, {self.action_space!r}, "
            f"hidden={self._w1.shape[1]})"
        )

    def __call__(
        self, observations: Any, *, deterministic: bool, rngs: list[np.random.Generator]
    ) -> np.ndarray[Any, Any]:
        """Return one action per row of ``observations``.

        Args:
            observations: Observations stacked along a leading batch axis.
            deterministic: Take the most likely action instead of sampling.
            rngs: One generator per row, used for that row's sample only.

        Returns:
            An array of actions with a leading batch axis.
        """
        x = np.asarray(observations, dtype=np.float64).reshape(len(rngs), -1)
        out = np.tanh(x @ self._w1 + self._b1) @ self._w2 + self._b2
        space = self.action_space
        if isinstance(space, spaces.Discrete):
            if deterministic:
                index = out.argmax(axis=1)
            else:
                probs = np.exp(out - out.max(axis=1, keepdims=True))
                cdf = np.cumsum(probs, axis=1)
                # One uniform draw per row from that row's own generator: inverse-CDF sampling.
                u = np.fromiter((rng.random() for rng in rngs), dtype=np.float64, count=len(rngs))
                index = (cdf < u[:, None] * cdf[:, -1:]).sum(axis=1)
                index = np.minimum(index, int(space.n) - 1)
            actions: np.ndarray[Any, Any] = (int(space.start) + index).astype(space.dtype)
            return actions
        assert isinstance(space, spaces.Box)
        out = out.reshape((len(rngs), *space.shape))
        if not deterministic:
            out = out + np.stack([rng.standard_normal(space.shape) for rng in rngs])
        if space.is_bounded("both"):
            out = space.low + (np.tanh(out) + 1.0) * 0.5 * (space.high - space.low)
        boxed: np.ndarray[Any, Any] = out.astype(space.dtype)
        return boxed


def batched_mlp_policy(
    observation_space: spaces.Space[Any],
    action_space: spaces.Space[Any],
    *,
    hidden: int = 32,
    seed: int = 0,
    max_batch_size: int = 32,
    max_delay_s: float = 0.002,
) -> BatchedPolicy:
    """Return a :class:`~async_rollout.BatchedPolicy` serving an :class:`MLPBatchFn`.

    Built from a config (``conf/agent/batched.yaml``), it receives the env's
    spaces from the runner.

    Args:
        observation_space: The env's observation space (a ``Box``).
        action_space: The env's action space (``Discrete`` or ``Box``).
        hidden: Width of the hidden layer.
        seed: Seed of the weights (actions are sampled with each episode's rng).
        max_batch_size: Largest batch; best set to the runner's concurrency.
        max_delay_s: Longest wait from a batch's first request to its start.
    """
    batch_fn = MLPBatchFn(observation_space, action_space, hidden=hidden, seed=seed)
    return BatchedPolicy(batch_fn, max_batch_size=max_batch_size, max_delay_s=max_delay_s)

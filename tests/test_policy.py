from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from gymnasium import spaces

from async_rollout import AsyncPolicy, EpisodeContext, RandomPolicy, wrap_policy

pytestmark = pytest.mark.anyio

SPACES = {
    "discrete": spaces.Discrete(5, start=-2),
    "box_bounded": spaces.Box(-2.0, 3.0, (3, 2), dtype=np.float32),
    "box_unbounded": spaces.Box(
        np.array([-np.inf, 0.0, -np.inf]), np.array([np.inf, np.inf, 1.0]), dtype=np.float64
    ),
    "box_int": spaces.Box(0, 10, (4,), dtype=np.int64),
    "multi_discrete": spaces.MultiDiscrete([3, 4, 5]),
    "multi_binary": spaces.MultiBinary(6),
    "dict": spaces.Dict(
        {"move": spaces.Discrete(4), "aim": spaces.Box(-1.0, 1.0, (2,), dtype=np.float32)}
    ),
    "tuple": spaces.Tuple((spaces.Discrete(2), spaces.MultiBinary(3))),
}


@pytest.mark.parametrize("name", sorted(SPACES))
async def test_random_policy_samples_in_space_with_episode_rng(name: str) -> None:
    """Samples lie in the space, and the same rng seed gives the same samples."""
    space = SPACES[name]
    policy = RandomPolicy(space)

    async def draw(seed: int) -> list[Any]:
        rng = np.random.default_rng(seed)
        return [await policy.compute_action(None, deterministic=False, rng=rng) for _ in range(50)]

    first, again, other = await draw(1), await draw(1), await draw(2)
    for action in first:
        assert space.contains(action), (name, action)
    assert repr(first) == repr(again)
    assert repr(first) != repr(other)


def test_random_policy_rejects_unknown_space() -> None:
    with pytest.raises(TypeError, match="RandomPolicy samples"):
        RandomPolicy(spaces.Text(5))


def test_async_policy_returned_unchanged() -> None:
    policy = RandomPolicy(spaces.Discrete(2))
    assert wrap_policy(policy) is policy
    assert isinstance(policy, AsyncPolicy)


async def test_wrap_plain_functions() -> None:
    rng = np.random.default_rng(0)

    def sync_fn(obs: Any) -> int:
        return int(obs) + 1

    async def async_fn(obs: Any, rng: np.random.Generator) -> int:
        return int(obs) + int(rng.integers(1, 2))

    assert await wrap_policy(sync_fn).compute_action(1, deterministic=True, rng=rng) == 2
    assert await wrap_policy(async_fn).compute_action(1, deterministic=True, rng=rng) == 2


async def test_wrap_maze_style_object() -> None:
    """A Maze-style compute_action without rng gets only the keywords it accepts."""

    class MazePolicy:
        def __init__(self) -> None:
            self.calls: list[Any] = []
            self.started: list[int] = []

        def compute_action(
            self, observation: Any, maze_state: Any = None, deterministic: bool = False
        ) -> int:
            self.calls.append((observation, deterministic))
            return 1

        def on_episode_start(self, ctx: EpisodeContext) -> None:
            self.started.append(ctx.index)

    inner = MazePolicy()
    policy = wrap_policy(inner)
    rng = np.random.default_rng(0)
    assert await policy.compute_action("o", deterministic=True, rng=rng) == 1
    assert inner.calls == [("o", True)]
    policy.on_episode_start(EpisodeContext(3, None, None))  # type: ignore[attr-defined]
    assert inner.started == [3]


def test_wrap_policy_rejects_non_policies() -> None:
    with pytest.raises(TypeError, match="expected a policy"):
        wrap_policy(42)
    with pytest.raises(TypeError, match="expected a policy"):
        wrap_policy({"_target_": "x"})

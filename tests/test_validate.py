"""Bad input at the adapter boundary: a clear error naming the episode and what was wrong.

The cheap checks (a step tuple of five, a real-number reward) always run;
``RolloutRunner(validate=True)`` adds the heavier ones (the action against the
action space, the observation against the observation space, bool flags, a
dict info). Each case corrupts one step (step 2 of episode 1) of a
``ScriptedEnv``, or one action of the policy, and is checked under "raise"
(the error's type and message, the failed episode in ``runner.result``) and
under "skip" (the outcome and the message on the result; the run goes on).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest

from async_rollout import (
    EnvError,
    EpisodeContext,
    PolicyError,
    RandomPolicy,
    RolloutError,
    RolloutResult,
    RolloutRunner,
)
from async_rollout.testing import EnvTracker, ScriptedEnv

pytestmark = pytest.mark.anyio

ENV_SEEDS = [1000, 1001, 1002]
AGENT_SEEDS = [2000, 2001, 2002]
#: The episode whose input is corrupted, and the (1-based) step that goes wrong.
BAD, AT_STEP = 1, 2
WHERE = f"episode {BAD} (env_seed={ENV_SEEDS[BAD]}), step {AT_STEP}: "
NOTE = f"in episode {BAD} (env_seed={ENV_SEEDS[BAD]}, agent_seed={AGENT_SEEDS[BAD]})"
BOX = "Box(-inf, inf, (4,), float32)"

Step = tuple[Any, ...]


class CorruptingEnv(ScriptedEnv):
    """A ScriptedEnv whose step ``AT_STEP`` in the episode of ``ENV_SEEDS[BAD]`` is corrupted.

    Args:
        corrupt: Maps the well-formed step tuple to what the env returns instead.
        corrupt_reset: Maps the well-formed ``(obs, info)`` of that episode's reset.
        **kwargs: Passed to :class:`ScriptedEnv`.
    """

    def __init__(
        self,
        corrupt: Callable[[Step], Any] | None = None,
        corrupt_reset: Callable[[tuple[Any, dict[str, Any]]], Any] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.corrupt = corrupt
        self.corrupt_reset = corrupt_reset

    def _bad(self) -> bool:
        return self._seed == ENV_SEEDS[BAD]

    async def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> Any:
        out = await super().reset(seed=seed, options=options)
        if self.corrupt_reset is not None and self._bad():
            return self.corrupt_reset(out)
        return out

    async def step(self, action: Any) -> Any:
        out = await super().step(action)
        if self.corrupt is not None and self._bad() and self._t == AT_STEP:
            return self.corrupt(out)
        return out


class ActsZero:
    """Acts 0; in episode ``BAD`` at step ``AT_STEP`` acts ``bad_action`` instead (if given)."""

    def __init__(self, bad_action: Any = None) -> None:
        self.bad_action = bad_action

    async def compute_action(
        self,
        observation: Any,
        *,
        deterministic: bool,
        rng: np.random.Generator,
        episode: EpisodeContext,
    ) -> Any:
        # episode.step counts the steps taken: the action for step AT_STEP comes after AT_STEP - 1.
        if self.bad_action is not None and (episode.index, episode.step) == (BAD, AT_STEP - 1):
            return self.bad_action
        return 0


def replace(index: int, value: Any) -> Callable[[Step], Step]:
    """A corruption that replaces item ``index`` of the step tuple with ``value``."""
    return lambda out: (*out[:index], value, *out[index + 1 :])


@dataclass(frozen=True)
class Case:
    """One kind of bad input and the error it must give."""

    validate: bool
    error: type[RolloutError]
    what: str
    corrupt: Callable[[Step], Any] | None = None
    bad_action: Any = None
    env_kwargs: tuple[tuple[str, Any], ...] = ()

    @property
    def outcome(self) -> str:
        return "policy_error" if self.error is PolicyError else "env_error"

    def env(self, tracker: EnvTracker) -> Callable[[], CorruptingEnv]:
        return lambda: CorruptingEnv(
            self.corrupt, episode_length=4, tracker=tracker, **dict(self.env_kwargs)
        )


TUPLE = "expected (obs, reward, terminated, truncated, info)"
CASES = {
    "action_outside_space": Case(
        True,
        PolicyError,
        "the policy's action has int 7 not in Discrete(2) (action space Discrete(2))",
        bad_action=7,
    ),
    "obs_wrong_shape": Case(
        True,
        EnvError,
        f"the observation has shape (3,), expected (4,) (observation space {BOX})",
        corrupt=lambda out: (out[0][:3], *out[1:]),
    ),
    "obs_wrong_dtype": Case(
        True,
        EnvError,
        f"the observation has dtype float64, expected float32 (observation space {BOX})",
        corrupt=lambda out: (out[0].astype(np.float64), *out[1:]),
    ),
    "dict_obs_missing_key": Case(
        True,
        EnvError,
        "the observation has keys ['position'], expected ['mask', 'position'] (observation space "
        f"Dict('mask': MultiBinary(2), 'position': {BOX}))",
        corrupt=lambda out: ({"position": out[0]["position"]}, *out[1:]),
        env_kwargs=(("dict_obs", True),),
    ),
    # The cheap checks run with or without validate=True.
    "reward_a_string": Case(
        False,
        EnvError,
        "env.step returned the reward '1.0'; expected a real number",
        replace(1, "1.0"),
    ),
    "reward_none_validated": Case(
        True,
        EnvError,
        "env.step returned the reward None; expected a real number",
        replace(1, None),
    ),
    "step_tuple_of_4": Case(
        # The old gym API: (obs, reward, done, info).
        False,
        EnvError,
        f"env.step returned a tuple of 4 items; {TUPLE}",
        corrupt=lambda out: (out[0], out[1], out[2], out[4]),
    ),
    "step_tuple_of_6_validated": Case(
        True,
        EnvError,
        f"env.step returned a tuple of 6 items; {TUPLE}",
        corrupt=lambda out: (*out, None),
    ),
    "terminated_not_bool": Case(
        True, EnvError, "terminated is int 0; expected a bool", replace(2, 0)
    ),
    "truncated_not_bool": Case(
        True, EnvError, "truncated is NoneType None; expected a bool", replace(3, None)
    ),
    "info_not_dict": Case(True, EnvError, "info is NoneType; expected a dict", replace(4, None)),
}

# The checks the Validator makes on a step (validate=True): their EnvError escapes the episode.
VALIDATED_STEP = {
    "obs_wrong_shape",
    "obs_wrong_dtype",
    "dict_obs_missing_key",
    "terminated_not_bool",
    "truncated_not_bool",
    "info_not_dict",
}
BUG_VALIDATED_STEP = (
    "bug: _loop.play calls validator.step() outside the try that turns failures into "
    "_Failure('env_error', ...), so its EnvError escapes the episode and stops the run"
)


def cases() -> list[Any]:
    """CASES as parameters, named."""
    return [pytest.param(case, id=name) for name, case in CASES.items()]


def runner(**kwargs: Any) -> RolloutRunner:
    kwargs.setdefault("concurrency", 1)
    # A limit, so that a corrupted flag cannot make an episode run forever.
    return RolloutRunner(3, 10, env_seeds=ENV_SEEDS, agent_seeds=AGENT_SEEDS, **kwargs)


def outcomes(result: RolloutResult | None) -> dict[str, int]:
    assert result is not None
    return {k: v for k, v in result.summary["outcomes"].items() if v}


# --- under "raise" -----------------------------------------------------------------------------


@pytest.mark.parametrize("case", cases())
async def test_bad_input_raises_a_clear_error(case: Case) -> None:
    """The error has the package's type and a message naming the episode, step and fault."""
    tracker = EnvTracker()
    with pytest.raises(case.error) as caught:
        await runner(validate=case.validate).run_with(
            case.env(tracker), agent=ActsZero(case.bad_action)
        )
    error = caught.value
    assert type(error) is case.error
    assert str(error) == WHERE + case.what
    assert (error.episode_index, error.env_seed, error.agent_seed) == (
        BAD,
        ENV_SEEDS[BAD],
        AGENT_SEEDS[BAD],
    )
    assert tracker.open == []


@pytest.mark.parametrize("case", cases())
async def test_bad_input_under_raise_is_recorded(case: Case) -> None:
    """The failed episode is in runner.result with its outcome; the error has the episode note."""
    tracker = EnvTracker()
    run = runner(validate=case.validate)
    with pytest.raises(case.error) as caught:
        await run.run_with(case.env(tracker), agent=ActsZero(case.bad_action))
    notes = getattr(caught.value, "__notes__", [])
    assert len(notes) == 1
    assert notes[0].startswith(NOTE)
    assert outcomes(run.result) == {"completed": 1, case.outcome: 1}
    assert run.result is not None
    failed = run.result.episodes[BAD]
    assert failed.outcome == case.outcome
    assert failed.error == f"{case.error.__name__}: {WHERE}{case.what}"


# --- under "skip" ------------------------------------------------------------------------------


@pytest.mark.parametrize("case", cases())
async def test_bad_input_under_skip(case: Case) -> None:
    """The bad episode is recorded with its outcome and message; the others complete."""
    tracker = EnvTracker()
    result = await runner(validate=case.validate, on_env_error="skip").run_with(
        case.env(tracker), agent=ActsZero(case.bad_action)
    )
    assert outcomes(result) == {"completed": 2, case.outcome: 1}
    assert [ep.outcome for ep in result.episodes] == ["completed", case.outcome, "completed"]
    assert result.episodes[BAD].error == f"{case.error.__name__}: {WHERE}{case.what}"
    assert result.episodes[BAD].length == AT_STEP - 1
    assert tracker.open == []
    # A misbehaving env is replaced; a misbehaving policy leaves the env in service.
    assert len(tracker.created) == (2 if case.outcome == "env_error" else 1)


@pytest.mark.parametrize("case", cases())
async def test_bad_input_under_retry_fails_every_attempt(case: Case) -> None:
    """Bad input is deterministic: each re-run meets it again, and the episode is recorded once."""
    tracker = EnvTracker()
    result = await runner(validate=case.validate, on_env_error="retry", max_retries=1).run_with(
        case.env(tracker), agent=ActsZero(case.bad_action)
    )
    assert [ep.outcome for ep in result.episodes] == ["completed", case.outcome, "completed"]
    assert tracker.open == []


# --- which checks need validate=True -----------------------------------------------------------


@pytest.mark.parametrize(
    "case",
    [pytest.param(c, id=name) for name, c in CASES.items() if c.validate and name in VALIDATED_STEP]
    + [pytest.param(CASES["action_outside_space"], id="action_outside_space")],
)
async def test_heavier_checks_need_validate(case: Case) -> None:
    """Without validate=True a wrong-shaped observation (and the like) passes unchecked.

    Checking every observation and action against its space costs a
    ``Space.contains`` call per step: that is the heavier check behind the
    flag; the run below completes as if nothing were wrong.
    """
    tracker = EnvTracker()
    result = await runner(validate=False).run_with(
        case.env(tracker), agent=ActsZero(case.bad_action)
    )
    assert outcomes(result) == {"completed": 3}
    assert tracker.open == []


@pytest.mark.parametrize("validate", [False, True])
@pytest.mark.parametrize("name", ["reward_a_string", "step_tuple_of_4"])
async def test_cheap_checks_always_run(name: str, validate: bool) -> None:
    """A bad reward or step tuple is an env error with or without validate=True."""
    case = CASES[name]
    result = await runner(validate=validate, on_env_error="skip").run_with(
        case.env(EnvTracker()), agent=ActsZero()
    )
    assert result.episodes[BAD].outcome == "env_error"
    assert result.episodes[BAD].error == f"EnvError: {WHERE}{case.what}"


@pytest.mark.parametrize("dict_obs", [False, True], ids=["box", "dict"])
async def test_validate_passes_well_formed_episodes(dict_obs: bool) -> None:
    """validate=True raises no false alarm on an env and a policy that keep to their spaces."""
    env = ScriptedEnv(dict_obs=dict_obs)
    result = await runner(validate=True, concurrency=3).run_with(
        lambda: ScriptedEnv(episode_length=6, dict_obs=dict_obs),
        agent=RandomPolicy(env.action_space),
    )
    assert outcomes(result) == {"completed": 3}


@pytest.mark.parametrize("reward", [np.float32(0.5), np.int64(2), True, 3], ids=repr)
async def test_real_number_rewards_of_any_kind_pass(reward: Any) -> None:
    """numpy scalars, ints and bools are real numbers: the cheap check accepts them."""
    result = await runner(on_env_error="skip").run_with(
        lambda: CorruptingEnv(replace(1, reward), episode_length=4), agent=ActsZero()
    )
    assert outcomes(result) == {"completed": 3}


# --- known gaps (bugs in the loop) -------------------------------------------------------------


async def test_reset_must_return_obs_and_info() -> None:
    tracker = EnvTracker()
    result = await runner(on_env_error="skip").run_with(
        lambda: CorruptingEnv(corrupt_reset=lambda out: out[0], episode_length=4, tracker=tracker),
        agent=ActsZero(),
    )
    assert outcomes(result) == {"completed": 2, "env_error": 1}
    error = result.episodes[BAD].error
    assert error is not None
    assert error.startswith(f"EnvError: episode {BAD} (env_seed={ENV_SEEDS[BAD]})")
    assert "env.reset returned" in error
    assert tracker.open == []


async def test_validate_checks_the_reset_observation() -> None:
    result = await runner(validate=True, on_env_error="skip").run_with(
        lambda: CorruptingEnv(corrupt_reset=lambda out: (out[0][:3], out[1]), episode_length=4),
        agent=ActsZero(),
    )
    assert outcomes(result) == {"completed": 2, "env_error": 1}
    error = result.episodes[BAD].error
    assert error is not None
    assert f"episode {BAD} (env_seed={ENV_SEEDS[BAD]})" in error
    assert "the observation has shape (3,), expected (4,)" in error


async def test_bad_reward_in_a_list_names_the_reward() -> None:
    result = await runner(on_env_error="skip").run_with(
        lambda: CorruptingEnv(lambda out: [out[0], None, *out[2:]], episode_length=4),
        agent=ActsZero(),
    )
    assert result.episodes[BAD].error == (
        f"EnvError: {WHERE}env.step returned the reward None; expected a real number"
    )

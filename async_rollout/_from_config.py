"""The config-driven path: a runner, an env factory and an agent from a composed config."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from omegaconf import DictConfig

from ._env import AsyncEnv, EnvFactory, connect_if_remote, env_factory
from ._instantiate import accepts_keyword, instantiate, target_of
from ._policy import AsyncPolicy, RandomPolicy, wrap_policy
from ._types import to_container
from .errors import ConfigError

if TYPE_CHECKING:
    from ._runner import RolloutRunner

# RolloutRunner keywords that come from outside the config's `runner` section.
_ROOT_KEYS = {
    "seed": "seeding.base_seed",
    "env_seeds": "seeding.explicit_env_seeds",
    "agent_seeds": "seeding.explicit_agent_seeds",
    "output_dir": "output_dir",
}


def runner_kwargs(cfg: Any) -> dict[str, Any]:
    """The RolloutRunner keyword arguments of a composed config (``runner`` + ``seeding``)."""
    plain = to_container(cfg)
    runner = dict(plain.get("runner") or {})
    seeding = plain.get("seeding") or {}
    kwargs = {
        "seed": seeding.get("base_seed", 0),
        "env_seeds": seeding.get("explicit_env_seeds"),
        "agent_seeds": seeding.get("explicit_agent_seeds"),
        "output_dir": plain.get("output_dir"),
    }
    return {**runner, **kwargs}


def make_runner(cls: type[RolloutRunner], cfg: Any) -> RolloutRunner:
    """Build a runner from a config; a bad value is a ConfigError naming its key."""
    kwargs = runner_kwargs(cfg)
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:
        message = str(exc)
        unexpected = re.search(r"unexpected keyword argument '(\w+)'", message)
        name = unexpected.group(1) if unexpected else message.split(" ", 1)[0].split("[", 1)[0]
        key = _ROOT_KEYS.get(name, f"runner.{name}")
        if name not in kwargs:
            key = "runner"
        if unexpected:
            message = f"unknown runner setting {name!r}"
        raise ConfigError(f"{key}: {message}", key=key) from exc


def make_agent(agent: Any, env: AsyncEnv, **offered: Any) -> AsyncPolicy:
    """The policy for ``env``: None means random; a ``_target_`` config gets the spaces."""
    if agent is None:
        return RandomPolicy(env.action_space)
    if isinstance(agent, Mapping | DictConfig):
        return build_policy(agent, env.observation_space, env.action_space, **offered)
    return wrap_policy(agent)


def build_policy(
    config: Mapping[str, Any] | DictConfig,
    observation_space: Any,
    action_space: Any,
    **offered: Any,
) -> AsyncPolicy:
    """Instantiate a policy config, passing the spaces (and ``offered``) where accepted.

    A value the config sets itself wins; a ``_target_`` that does not name a
    parameter does not get it.
    """
    fn = target_of(config)
    offered = {"observation_space": observation_space, "action_space": action_space, **offered}
    extra = {k: v for k, v in offered.items() if k not in config and accepts_keyword(fn, k)}
    return wrap_policy(instantiate(config, **extra))


async def init_env_and_agent(
    env_config: Any,
    wrappers_config: Any,
    max_episode_steps: int | None,
    agent_config: Any,
    input_dir: str | None,
) -> tuple[EnvFactory, AsyncPolicy]:
    """Build the env factory and the agent from their configs.

    Makes one env to read its spaces (the first worker reuses it), then builds
    the agent, passing ``observation_space``, ``action_space`` and
    ``input_dir`` (where a policy loads saved parameters from) where its
    ``_target_`` accepts them and the config does not set them. An agent
    config of None means :class:`RandomPolicy`.

    Raises:
        ConfigError: A config cannot be instantiated; the key is named.
    """
    factory = env_factory(env_config, wrappers=wrappers_config, max_episode_steps=max_episode_steps)
    env = factory(0)
    try:
        await connect_if_remote(env)
        agent = make_agent(agent_config, env, input_dir=input_dir)
    except BaseException:
        from ._loop import close_env

        await close_env(env)
        raise
    factory.keep_for_first_worker(env)
    return factory, agent

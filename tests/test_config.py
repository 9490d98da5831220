"""The config layer: conf/ groups, overrides, instantiate, and the example policies."""

from __future__ import annotations

import inspect
from functools import partial
from pathlib import Path
from typing import Any

import anyio
import gymnasium as gym
import numpy as np
import pytest
from omegaconf import DictConfig, ListConfig, OmegaConf

import async_rollout
import async_rollout.testing
from async_rollout._config import list_groups, load_config
from async_rollout._instantiate import accepts_keyword, instantiate, locate
from async_rollout.errors import ConfigError
from async_rollout.policies import HeuristicCartPolePolicy, LinearPolicy

GROUPS = list_groups()
OPTIONS = [(group, option) for group, options in GROUPS.items() for option in options]

def option_params(group: str) -> list[str]:
    """A group's options that build on their own (custom needs a _target_, remote a server)."""
    return [o for o in GROUPS[group] if o not in ("custom", "remote")]


class Target:
    """A stand-in constructor that records what it was given."""

    def __init__(self, a: int = 0, b: Any = None, *, c: Any = None) -> None:
        if a < 0:
            raise ValueError(f"a must be >= 0, got {a}")
        self.a, self.b, self.c = a, b, c

    def method(self) -> str:
        return "method"


# --- shipped options ---------------------------------------------------------------------------


def test_shipped_groups() -> None:
    assert GROUPS == {
        "agent": ["batched", "heuristic_cartpole", "linear", "random"],
        "env": ["cartpole", "custom", "latency", "mountain_car", "pendulum", "remote"],
        "runner": ["default", "high_concurrency", "ray"],
        "wrappers": ["chaos", "episode_stats", "none", "time_limit"],
    }


def test_default_config() -> None:
    cfg = load_config()
    assert "defaults" not in cfg
    assert dict(cfg.choices) == {
        "env": "cartpole",
        "agent": "random",
        "wrappers": "none",
        "runner": "default",
    }
    assert cfg.env == {"_target_": "gymnasium.make", "id": "CartPole-v1"}
    assert cfg.wrappers == []
    assert cfg.runner.n_episodes == 50
    assert cfg.runner.concurrency == 16
    assert dict(cfg.seeding) == {
        "base_seed": 0,
        "explicit_env_seeds": None,
        "explicit_agent_seeds": None,
    }
    assert cfg.output_dir is None
    assert cfg.input_dir is None


@pytest.mark.parametrize(("group", "option"), OPTIONS)
def test_every_option_loads(group: str, option: str) -> None:
    cfg = load_config([f"{group}={option}"])
    assert cfg.choices[group] == option
    expected = ListConfig if group == "wrappers" else DictConfig
    assert isinstance(cfg[group], expected)


def test_runner_options_are_runner_keywords() -> None:
    """Each runner key is a RolloutRunner keyword; seeds and output_dir are not in `runner`."""
    for option in GROUPS["runner"]:
        runner = load_config([f"runner={option}"]).runner
        for key in runner:
            assert accepts_keyword(async_rollout.RolloutRunner, str(key)), key
        assert not {"seed", "env_seeds", "agent_seeds", "output_dir"} & set(runner)
    assert load_config(["runner=high_concurrency"]).runner.concurrency == 1024


@pytest.mark.parametrize("option", option_params("env"))
def test_env_options_instantiate(option: str) -> None:
    env = instantiate(load_config([f"env={option}"]).env)
    assert isinstance(env.observation_space, gym.Space)
    assert isinstance(env.action_space, gym.Space)
    if inspect.iscoroutinefunction(env.close):
        run(env.close)
    else:
        env.close()


def test_remote_env_option_runs_against_a_server() -> None:
    """env=remote env.port=... drives a served env through the config path."""

    async def main() -> Any:
        async with anyio.create_task_group() as tg:
            address = await tg.start(
                async_rollout.serve_env, partial(async_rollout.testing.ScriptedEnv, 5)
            )
            cfg = load_config(
                ["env=remote", f"env.port={address[1]}", "runner.n_episodes=4"]
            )
            result = await async_rollout.RolloutRunner.from_config(cfg).run()
            tg.cancel_scope.cancel()
        return result

    result = anyio.run(main)
    assert result.summary["n_episodes"] == 4
    assert result.summary["mean_length"] == 5


@pytest.mark.parametrize("option", option_params("agent"))
def test_agent_options_instantiate(option: str) -> None:
    env = gym.make("CartPole-v1")
    cfg = load_config([f"agent={option}"]).agent
    target = locate(cfg._target_)
    spaces = {
        name: getattr(env, name)
        for name in ("action_space", "observation_space")
        if accepts_keyword(target, name)
    }
    policy = instantiate(cfg, **spaces)
    assert isinstance(policy, async_rollout.AsyncPolicy)
    obs, _ = env.reset(seed=0)
    action = run(policy.compute_action, obs, deterministic=False, rng=np.random.default_rng(0))
    assert env.action_space.contains(action)


@pytest.mark.parametrize("option", option_params("wrappers"))
def test_wrappers_options_instantiate(option: str) -> None:
    """Each wrappers option builds on the default env and the wrapped env steps."""
    cfg = load_config([f"wrappers={option}"])
    env = async_rollout.env_factory(cfg.env, wrappers=cfg.wrappers)()

    async def episode_step() -> None:
        await env.reset(seed=0)
        await env.step(0)
        await env.close()

    anyio.run(episode_step)


def test_custom_env_needs_a_target() -> None:
    with pytest.raises(ConfigError, match=r"env\._target_ is not set") as info:
        instantiate(load_config(["env=custom"]).env)
    assert info.value.key == "env._target_"


# --- overrides ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "overrides",
    [
        ["env=custom", f"env._target_={__name__}.Target", "+env.a=3"],
        [f"env._target_={__name__}.Target", "+env.a=3", "env=custom"],
    ],
)
def test_group_selection_applies_before_keys(overrides: list[str]) -> None:
    """`env=custom env._target_=...` works whatever the order on the command line."""
    cfg = load_config(overrides)
    assert cfg.choices.env == "custom"
    env = instantiate(cfg.env)
    assert isinstance(env, Target)
    assert env.a == 3


def test_set_existing_keys() -> None:
    cfg = load_config(
        [
            "runner.n_episodes=7",
            "env.id=MountainCar-v0",
            "wrappers=time_limit",
            "wrappers.0.max_episode_steps=20",
            "output_dir=/tmp/out",
        ]
    )
    assert cfg.runner.n_episodes == 7
    assert cfg.env.id == "MountainCar-v0"
    assert cfg.wrappers[0].max_episode_steps == 20
    assert cfg.output_dir == "/tmp/out"


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("1e-3", 1e-3),
        ("0.5", 0.5),
        ("3", 3),
        ("'3'", "3"),
        ("null", None),
        ("true", True),
        ("[1, 2]", [1, 2]),
        ("{a: 1}", {"a": 1}),
        ("2024-01-01", "2024-01-01"),
        ("a=b", "a=b"),
    ],
)
def test_values_parse_as_yaml(text: str, value: Any) -> None:
    """Values are YAML, with exponents as floats and dates kept as text."""
    container = OmegaConf.to_container(load_config([f"output_dir={text}"]))
    assert isinstance(container, dict)
    assert container["output_dir"] == value


def test_plus_adds_keys() -> None:
    cfg = load_config(["+env.render_mode=rgb_array", "+extra.nested.key=1"])
    assert cfg.env.render_mode == "rgb_array"
    assert cfg.extra.nested.key == 1


def test_plus_on_existing_key_is_an_error() -> None:
    with pytest.raises(ConfigError, match="exists already") as info:
        load_config(["+runner.n_episodes=3"])
    assert info.value.key == "runner.n_episodes"


def test_unknown_key_names_it_and_suggests() -> None:
    with pytest.raises(ConfigError, match=r"unknown key or group 'n_episodes'") as info:
        load_config(["n_episodes=3"])
    assert info.value.key == "n_episodes"
    assert "runner.n_episodes" in str(info.value)
    with pytest.raises(ConfigError, match=r"runner\.n_episode'.*runner\.n_episodes") as info:
        load_config(["runner.n_episode=3"])
    assert info.value.key == "runner.n_episode"


def test_unknown_option_lists_the_options() -> None:
    with pytest.raises(ConfigError, match="env='nope'") as info:
        load_config(["env=nope"])
    assert info.value.key == "env"
    for option in GROUPS["env"]:
        assert option in str(info.value)


def test_unknown_group_is_an_error() -> None:
    with pytest.raises(ConfigError, match=r"unknown key or group 'envs'.*env") as info:
        load_config(["envs=cartpole"])
    assert info.value.key == "envs"


@pytest.mark.parametrize("override", ["runner", "=3", "+=3", "a..b=1", "runner.n_episodes=[1,"])
def test_malformed_overrides(override: str) -> None:
    with pytest.raises(ConfigError):
        load_config([override])


def test_choices_is_not_a_setting() -> None:
    with pytest.raises(ConfigError, match="group=option"):
        load_config(["choices.env=pendulum"])


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("runner.n_episodes=abc", "an integer"),
        ("runner.n_episodes=2.5", "an integer"),
        ("runner.n_episodes=true", "an integer"),
        ("runner.deterministic=1", "a boolean"),
        ("runner.on_env_error=3", "a string"),
        ("seeding.base_seed=x", "an integer"),
    ],
)
def test_wrong_type_names_key_value_and_type(override: str, expected: str) -> None:
    key, _, value = override.partition("=")
    with pytest.raises(ConfigError, match=expected) as info:
        load_config([override])
    assert info.value.key == key
    assert str(info.value).startswith(f"{key}=")
    assert value in str(info.value)


def test_type_check_leniency() -> None:
    """Floats take ints, null-valued keys take anything, and null means 'fresh' for base_seed."""
    cfg = load_config(
        [
            "runner.step_timeout=2",
            "seeding.explicit_env_seeds=[1, 2]",
            "seeding.base_seed=null",
            "runner.max_episode_steps=null",
            # Objects' arguments are their constructors' business.
            "env.id=5",
        ]
    )
    assert cfg.runner.step_timeout == 2
    assert cfg.seeding.explicit_env_seeds == [1, 2]
    assert cfg.seeding.base_seed is None
    assert cfg.runner.max_episode_steps is None
    assert cfg.env.id == 5


# --- config_dir --------------------------------------------------------------------------------


@pytest.fixture
def user_conf(tmp_path: Path) -> Path:
    (tmp_path / "env").mkdir()
    (tmp_path / "env" / "cartpole.yaml").write_text("_target_: gymnasium.make\nid: Acrobot-v1\n")
    (tmp_path / "env" / "mine.yaml").write_text(f"_target_: {__name__}.Target\na: 4\n")
    (tmp_path / "logger").mkdir()
    (tmp_path / "logger" / "quiet.yaml").write_text("level: 0\n")
    (tmp_path / "mine.yaml").write_text(
        "defaults:\n  - env: mine\n  - agent: random\nrunner:\n  n_episodes: 3\n"
    )
    return tmp_path


def test_config_dir_shadows_and_adds(user_conf: Path) -> None:
    groups = list_groups(user_conf)
    assert groups["env"] == sorted([*GROUPS["env"], "mine"])
    assert groups["logger"] == ["quiet"]
    assert groups["agent"] == GROUPS["agent"]

    cfg = load_config(config_dir=user_conf)
    assert cfg.env.id == "Acrobot-v1"  # shadowed
    assert cfg.agent == load_config().agent  # the packaged options are still found
    assert instantiate(load_config(["env=mine"], config_dir=user_conf).env).a == 4
    assert load_config(["logger=quiet"], config_dir=user_conf).logger.level == 0


def test_config_name_picks_the_root(user_conf: Path) -> None:
    """A user root's own keys are merged over its groups."""
    cfg = load_config(["env.a=5"], config_dir=user_conf, config_name="mine")
    assert dict(cfg.choices) == {"env": "mine", "agent": "random"}
    assert cfg.env.a == 5
    assert cfg.runner == {"n_episodes": 3}


def test_missing_config_dir_or_root(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not a directory"):
        load_config(config_dir=tmp_path / "nope")
    with pytest.raises(ConfigError, match=r"no root config 'nope'.*rollout") as info:
        load_config(config_name="nope")
    assert info.value.key == "config_name"


@pytest.mark.parametrize("text", ["a: [1,\n", "just a string\n"])
def test_malformed_yaml_names_the_file(tmp_path: Path, text: str) -> None:
    (tmp_path / "env").mkdir()
    (tmp_path / "env" / "broken.yaml").write_text(text)
    with pytest.raises(ConfigError, match=r"broken\.yaml"):
        load_config(["env=broken"], config_dir=tmp_path)


# --- locate and instantiate --------------------------------------------------------------------


def test_locate() -> None:
    assert locate("gymnasium.make") is gym.make
    assert locate(f"{__name__}.Target.method") is Target.method
    assert locate("email.mime.text.MIMEText").__name__ == "MIMEText"  # a submodule not imported


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("no_such_module.Thing", "no module named 'no_such_module'"),
        ("gymnasium.mak", r"'gymnasium' has no attribute 'mak'.*did you mean make"),
        (f"{__name__}.Target.nope", "has no attribute 'nope'"),
        ("not a path", "not a dotted path"),
        ("", "not a dotted path"),
    ],
)
def test_locate_errors(path: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        locate(path)


def test_accepts_keyword() -> None:
    def kwargs_only(**kwargs: Any) -> None: ...

    assert accepts_keyword(Target, "a")
    assert accepts_keyword(Target, "c")
    assert not accepts_keyword(Target, "action_space")
    assert not accepts_keyword(kwargs_only, "action_space")
    assert accepts_keyword(LinearPolicy, "action_space")
    assert not accepts_keyword(HeuristicCartPolePolicy, "action_space")


def test_instantiate_recursion_and_kwargs() -> None:
    target = f"{__name__}.Target"
    cfg = OmegaConf.create(
        {
            "_target_": target,
            "a": 1,
            "b": {"inner": {"_target_": target, "a": 2}, "plain": [{"_target_": target}, 3]},
            "c": "${a}",
        }
    )
    obj = instantiate(cfg, a=9)
    assert obj.a == 9
    assert obj.c == 1  # interpolations resolve against the config, not the kwargs
    assert type(obj.b) is dict
    assert obj.b["inner"].a == 2
    assert type(obj.b["plain"]) is list
    assert isinstance(obj.b["plain"][0], Target)
    assert obj.b["plain"][1] == 3


def test_instantiate_passes_plain_containers() -> None:
    obj = instantiate({"_target_": Target, "b": OmegaConf.create({"x": [1]})["x"]}, c={"k": 1})
    assert obj.c == {"k": 1}
    cfg = OmegaConf.create({"_target_": f"{__name__}.Target", "b": {"x": [1, {"y": 2}]}})
    obj = instantiate(cfg)
    assert obj.b == {"x": [1, {"y": 2}]}
    assert type(obj.b["x"]) is list
    assert type(obj.b["x"][1]) is dict


def test_instantiate_kwargs_are_passed_as_given() -> None:
    """A gymnasium Dict space is a Mapping, yet must reach the target unchanged."""
    space = gym.spaces.Dict({"a": gym.spaces.Discrete(2)})
    assert instantiate({"_target_": Target}, b=space).b is space


def test_instantiate_names_nested_keys() -> None:
    """Errors name the key from the composed config's root, through mappings and lists."""
    inner = {"_target_": "nowhere.Thing"}
    cfg = OmegaConf.create({"agent": {"_target_": f"{__name__}.Target", "b": inner}})
    with pytest.raises(ConfigError, match=r"agent\.b\._target_='nowhere\.Thing'") as info:
        instantiate(cfg.agent)
    assert info.value.key == "agent.b._target_"
    assert isinstance(info.value.__cause__, ConfigError)

    wrappers = load_config(["wrappers=time_limit", "wrappers.0._target_=gymnasium.Nope"])
    with pytest.raises(ConfigError) as info:
        instantiate(wrappers.wrappers[0])
    assert info.value.key == "wrappers.0._target_"


def test_instantiate_constructor_errors() -> None:
    """A constructor's TypeError/ValueError becomes a ConfigError naming the argument."""
    cfg = load_config(["env=custom", f"env._target_={__name__}.Target", "+env.a=-1"])
    with pytest.raises(ConfigError, match=r"env\.a=-1: .*Target raised ValueError") as info:
        instantiate(cfg.env)
    assert info.value.key == "env.a"
    assert isinstance(info.value.__cause__, ValueError)

    cfg = load_config(["+env.bogus=1"])
    with pytest.raises(ConfigError, match="unexpected keyword") as info:
        instantiate(cfg.env)
    assert info.value.key == "env.bogus"

    cfg = load_config(["env.id=NoSuchEnv-v0"])
    with pytest.raises(ConfigError, match=r"gymnasium\.make raised") as info:
        instantiate(cfg.env)
    assert info.value.key == "env"


def test_instantiate_needs_a_target() -> None:
    with pytest.raises(ConfigError, match="_target_ is missing"):
        instantiate({"a": 1})
    with pytest.raises(ConfigError, match="a callable"):
        instantiate({"_target_": "math.pi"})
    with pytest.raises(ConfigError, match=r"b is not set \(\?\?\?\)") as info:
        instantiate(OmegaConf.create({"_target_": f"{__name__}.Target", "b": "???"}))
    assert info.value.key == "b"
    with pytest.raises(TypeError):
        instantiate("gymnasium.make")  # type: ignore[arg-type]


def test_config_error_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="unknown key"):
        load_config(["nope.nope=1"])


# --- policies ----------------------------------------------------------------------------------


def run(fn: Any, *args: Any, **kwargs: Any) -> Any:
    import anyio

    return anyio.run(lambda: fn(*args, **kwargs))


def actions(policy: Any, env: gym.Env[Any, Any], deterministic: bool) -> list[Any]:
    taken = []
    obs, _ = env.reset(seed=1)
    rng = np.random.default_rng(7)
    for _ in range(30):
        action = run(policy.compute_action, obs, deterministic=deterministic, rng=rng)
        taken.append(np.asarray(action).tolist())
        obs, _, terminated, truncated, _ = env.step(action)
        if terminated or truncated:
            obs, _ = env.reset()
    return taken


@pytest.mark.parametrize("env_id", ["CartPole-v1", "Pendulum-v1"])
@pytest.mark.parametrize("deterministic", [True, False])
def test_linear_policy_save_load_round_trip(
    tmp_path: Path, env_id: str, deterministic: bool
) -> None:
    env = gym.make(env_id)
    policy = LinearPolicy(env.observation_space, env.action_space, seed=3)
    policy.save(tmp_path / "weights.npz")
    loaded = LinearPolicy.load(tmp_path / "weights.npz", env.observation_space, env.action_space)
    assert actions(loaded, env, deterministic) == actions(policy, env, deterministic)
    np.testing.assert_array_equal(loaded.weights, policy.weights)


def test_linear_policy_loads_from_input_dir(tmp_path: Path) -> None:
    env = gym.make("CartPole-v1")
    original = LinearPolicy(env.observation_space, env.action_space, seed=5)
    original.save(tmp_path / "w.npz")
    cfg = load_config(["agent=linear", "agent.weights_file=w.npz"]).agent
    policy = instantiate(
        cfg,
        observation_space=env.observation_space,
        action_space=env.action_space,
        input_dir=str(tmp_path),
    )
    np.testing.assert_array_equal(policy.weights, original.weights)
    np.testing.assert_array_equal(policy.bias, original.bias)


def test_linear_policy_bad_weights_file(tmp_path: Path) -> None:
    env = gym.make("CartPole-v1")
    spaces: dict[str, Any] = {
        "observation_space": env.observation_space,
        "action_space": env.action_space,
    }
    cfg = load_config(["agent=linear", "agent.weights_file=missing.npz"]).agent
    with pytest.raises(ConfigError, match=r"missing\.npz") as info:
        instantiate(cfg, input_dir=str(tmp_path), **spaces)
    assert info.value.key == "agent.weights_file"
    assert isinstance(info.value.__cause__, FileNotFoundError)

    np.savez(tmp_path / "other.npz", weights=np.zeros((3, 3)), bias=np.zeros(3))
    with pytest.raises(ValueError, match="need"):
        LinearPolicy(**spaces, weights_file="other.npz", input_dir=tmp_path)
    np.savez(tmp_path / "objects.npz", weights=np.array([{}], dtype=object), bias=np.zeros(2))
    with pytest.raises(ValueError, match="pickle"):
        LinearPolicy(**spaces, weights_file=tmp_path / "objects.npz")


def test_linear_policy_rejects_other_action_spaces() -> None:
    with pytest.raises(TypeError, match="Discrete or Box"):
        LinearPolicy(gym.spaces.Box(-1, 1, (2,)), gym.spaces.MultiBinary(3))


def test_heuristic_cartpole_balances() -> None:
    """The heuristic keeps the pole up for CartPole-v1's full 500 steps."""
    env = gym.make("CartPole-v1")
    policy = HeuristicCartPolePolicy()
    obs, _ = env.reset(seed=0)
    steps = 0
    terminated = truncated = False
    while not (terminated or truncated):
        action = run(policy.compute_action, obs, deterministic=True, rng=np.random.default_rng())
        obs, _, terminated, truncated, _ = env.step(action)
        steps += 1
    assert not terminated
    assert steps == 500

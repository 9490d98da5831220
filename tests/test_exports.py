import async_rollout
import async_rollout.testing

# The contract's export list (DESIGN.md, "Top-level exports"), written out here on purpose.
CONTRACT = {
    "AsyncEnv",
    "AsyncEnvWrapper",
    "AsyncPolicy",
    "BatchedPolicy",
    "EpisodeContext",
    "EpisodeResult",
    "RandomPolicy",
    "RemoteEnv",
    "RolloutResult",
    "RolloutRunner",
    "Sink",
    "env_factory",
    "instantiate",
    "load_config",
    "serve_env",
    "wrap_env",
    "wrap_policy",
    "RolloutError",
    "ConfigError",
    "EnvError",
    "PolicyError",
    "RemoteEnvError",
    "RolloutTimeout",
    "__version__",
}


def test_all_is_the_contract() -> None:
    """Every contract name is exported, and nothing else is."""
    assert set(async_rollout.__all__) == CONTRACT
    assert async_rollout.__all__ == sorted(async_rollout.__all__)
    for name in CONTRACT:
        assert getattr(async_rollout, name) is not None


def test_testing_exports() -> None:
    for name in ("ScriptedEnv", "ChaosWrapper", "check_async_env"):
        assert name in async_rollout.testing.__all__
        assert hasattr(async_rollout.testing, name)


def test_error_tree() -> None:
    from async_rollout import errors

    assert issubclass(errors.ConfigError, errors.RolloutError)
    assert issubclass(errors.ConfigError, ValueError)
    assert issubclass(errors.RemoteEnvError, errors.EnvError)
    assert issubclass(errors.RolloutTimeout, TimeoutError)
    assert issubclass(errors.PolicyError, errors.RolloutError)

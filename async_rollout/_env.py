"""Async environments: the protocol, adapters for gymnasium envs, and env factories."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable, Mapping, Sequence
from functools import partial
from typing import Any, Protocol, SupportsFloat, runtime_checkable

import anyio
import anyio.to_thread
import gymnasium as gym
from omegaconf import DictConfig

from ._instantiate import accepts_keyword, instantiate, locate, target_of
from ._types import EnvSpec, Offload, WrapperSpec, check_choice, to_container
from .errors import ConfigError

__all__ = [
    "AsyncEnv",
    "AsyncEnvWrapper",
    "EnvFactory",
    "connect_if_remote",
    "env_factory",
    "is_async_env",
    "wrap_env",
]

StepResult = tuple[Any, SupportsFloat, bool, bool, dict[str, Any]]


@runtime_checkable
class AsyncEnv(Protocol):
    """An environment with gymnasium 1.x semantics whose calls are awaited.

    ``render()`` (sync or async) is optional. ``runtime_checkable`` only checks
    names, so a ``gymnasium.Env`` passes ``isinstance`` too: use
    :func:`is_async_env` or :func:`wrap_env` to tell them apart.
    """

    @property
    def observation_space(self) -> gym.Space[Any]:
        """The space observations belong to."""
        ...

    @property
    def action_space(self) -> gym.Space[Any]:
        """The space actions belong to."""
        ...

    async def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[Any, dict[str, Any]]:
        """Start an episode and return the first observation and info."""
        ...

    async def step(self, action: Any) -> StepResult:
        """Take one step: ``(observation, reward, terminated, truncated, info)``."""
        ...

    async def close(self) -> None:
        """Release the env's resources; closing twice is harmless."""
        ...


def is_async_env(env: object) -> bool:
    """True when ``env``'s ``reset`` and ``step`` are coroutine functions."""
    return inspect.iscoroutinefunction(getattr(env, "step", None)) and (
        inspect.iscoroutinefunction(getattr(env, "reset", None))
    )


async def connect_if_remote(env: object) -> None:
    """Await ``env.connect()`` where the env has one (a remote env learns its spaces there)."""
    connect = getattr(env, "connect", None)
    if connect is not None and inspect.iscoroutinefunction(connect):
        await connect()


class AsyncEnvWrapper:
    """Base for wrappers around an :class:`AsyncEnv`: forwards everything to ``self.env``.

    Subclasses override the call they change (``reset``, ``step``, ...), as
    with ``gymnasium.Wrapper``; attributes they do not define are read from
    the wrapped env.
    """

    def __init__(self, env: AsyncEnv) -> None:
        self.env = env

    @property
    def observation_space(self) -> gym.Space[Any]:
        """The wrapped env's observation space."""
        return self.env.observation_space

    @property
    def action_space(self) -> gym.Space[Any]:
        """The wrapped env's action space."""
        return self.env.action_space

    @property
    def unwrapped(self) -> Any:
        """The innermost env (or adapter) below every async wrapper."""
        env: Any = self.env
        while isinstance(env, AsyncEnvWrapper):
            env = env.env
        return env

    async def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[Any, dict[str, Any]]:
        """Reset the wrapped env."""
        return await self.env.reset(seed=seed, options=options)

    async def step(self, action: Any) -> StepResult:
        """Step the wrapped env."""
        return await self.env.step(action)

    async def close(self) -> None:
        """Close the wrapped env."""
        await self.env.close()

    def render(self) -> Any:
        """Render the wrapped env (the result may be awaitable)."""
        return self.env.render()  # type: ignore[attr-defined]

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_") or name == "env":
            raise AttributeError(name)
        return getattr(self.env, name)

    def __repr__(self) -> str:
        return f"<{type(self).__name__}{self.env!r}>"


class _InlineEnv:
    """Calls a gymnasium env directly on the event loop (cheapest; blocks while it computes)."""

    __slots__ = ("_closed", "action_space", "env", "observation_space")

    def __init__(self, env: gym.Env[Any, Any]) -> None:
        self.env = env
        self.observation_space = env.observation_space
        self.action_space = env.action_space
        self._closed = False

    async def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[Any, dict[str, Any]]:
        return self.env.reset(seed=seed, options=options)

    async def step(self, action: Any) -> StepResult:
        return self.env.step(action)

    async def close(self) -> None:
        if not self._closed:
            self._closed = True
            self.env.close()

    def render(self) -> Any:
        return self.env.render()

    def __repr__(self) -> str:
        return f"<inline {self.env!r}>"


class _ThreadEnv:
    """Runs each call of a gymnasium env in a worker thread.

    Each env gets its own one-token limiter: its calls are sequential anyway,
    and the number of threads in use then follows the number of envs (the
    rollout's concurrency) instead of anyio's default limit of 40. A call
    whose caller is cancelled is abandoned: a thread cannot be killed.
    """

    __slots__ = (
        "_abandoned",
        "_closed",
        "_limiter",
        "action_space",
        "env",
        "observation_space",
    )

    def __init__(self, env: gym.Env[Any, Any]) -> None:
        self.env = env
        self.observation_space = env.observation_space
        self.action_space = env.action_space
        self._limiter: anyio.CapacityLimiter | None = None
        self._closed = False
        self._abandoned = False

    async def _call(self, fn: Callable[[], Any]) -> Any:
        if self._limiter is None:
            self._limiter = anyio.CapacityLimiter(1)
        try:
            return await anyio.to_thread.run_sync(fn, limiter=self._limiter, abandon_on_cancel=True)
        except anyio.get_cancelled_exc_class():
            self._abandoned = True
            raise

    async def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[Any, dict[str, Any]]:
        result: tuple[Any, dict[str, Any]] = await self._call(
            partial(self.env.reset, seed=seed, options=options)
        )
        return result

    async def step(self, action: Any) -> StepResult:
        result: StepResult = await self._call(partial(self.env.step, action))
        return result

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._abandoned:
            # An abandoned call may still hold the env's limiter (Trio keeps it until the
            # thread returns): close from a thread of its own rather than wait behind it.
            await anyio.to_thread.run_sync(
                self.env.close, limiter=anyio.CapacityLimiter(1), abandon_on_cancel=True
            )
        else:
            await self._call(self.env.close)

    async def render(self) -> Any:
        return await self._call(self.env.render)

    def __repr__(self) -> str:
        return f"<thread {self.env!r}>"


def wrap_env(env: Any, *, offload: Offload = "inline") -> AsyncEnv:
    """Adapt one environment instance to :class:`AsyncEnv`.

    Args:
        env: A ``gymnasium.Env`` (or any object with gymnasium's sync
            ``reset``/``step``/``close``), or an :class:`AsyncEnv`, which
            comes back unchanged.
        offload: ``"inline"`` calls the env on the event loop (cheapest);
            ``"thread"`` runs each call in a worker thread, for envs that
            block on I/O or release the GIL. ``"process"`` needs a spec, not
            an instance: use :func:`env_factory`.

    Raises:
        TypeError: ``env`` is neither kind of environment.
        ValueError: ``offload`` is not a valid mode for an instance.
    """
    check_choice("offload", offload, ("inline", "thread", "process"))
    if is_async_env(env):
        return env  # type: ignore[no-any-return]
    if not (callable(getattr(env, "reset", None)) and callable(getattr(env, "step", None))):
        raise TypeError(
            "expected a gymnasium.Env or an AsyncEnv (an object with reset() and step()); "
            f"got {type(env).__name__}: {env!r}"
        )
    if offload == "process":
        raise ValueError(
            "offload='process' needs an env spec it can rebuild in a child process "
            "(a gymnasium id, a _target_ config or a module-level callable): "
            "use env_factory(spec, offload='process')"
        )
    return _InlineEnv(env) if offload == "inline" else _ThreadEnv(env)


class _StepLimit(AsyncEnvWrapper):
    """Truncates an episode after ``max_episode_steps`` steps."""

    def __init__(self, env: AsyncEnv, max_episode_steps: int) -> None:
        super().__init__(env)
        self.max_episode_steps = max_episode_steps
        self._steps = 0

    async def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[Any, dict[str, Any]]:
        self._steps = 0
        return await self.env.reset(seed=seed, options=options)

    async def step(self, action: Any) -> StepResult:
        obs, reward, terminated, truncated, info = await self.env.step(action)
        self._steps += 1
        if self._steps >= self.max_episode_steps:
            truncated = True
        return obs, reward, terminated, truncated, info


def check_max_episode_steps(value: int | None, name: str = "max_episode_steps") -> int:
    """Validate a step limit and return it as an int, 0 meaning none."""
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int or None; got {value!r}")
    if value < 0:
        raise ValueError(f"{name} must be >= 0 (0 or None: no limit); got {value}")
    return value


# A resolved wrapper: the callable, its keyword arguments, and "gym", "async" or "any".
_Wrapper = tuple[Callable[..., Any], dict[str, Any], str]


def _wrapper_kind(fn: Callable[..., Any]) -> str:
    if isinstance(fn, type):
        if issubclass(fn, gym.Wrapper):
            return "gym"
        if issubclass(fn, AsyncEnvWrapper):
            return "async"
    return "any"


def _resolve_wrappers(wrappers: Iterable[WrapperSpec] | Mapping[Any, Any] | None) -> list[_Wrapper]:
    def target(value: Any, where: str) -> Callable[..., Any]:
        if isinstance(value, str):
            value = locate(value)
        fn = value
        if not callable(fn):
            raise ConfigError(f"{where}: expected a class, callable or dotted path; got {value!r}")
        return fn  # type: ignore[no-any-return]

    if wrappers is None:
        return []
    wrappers = to_container(wrappers)
    if isinstance(wrappers, Mapping) and "_target_" not in wrappers:
        entries: Sequence[Any] = [{key: kwargs} for key, kwargs in wrappers.items()]
    elif isinstance(wrappers, Mapping | str) or callable(wrappers):
        entries = [wrappers]
    else:
        entries = list(wrappers)
    resolved: list[_Wrapper] = []
    for i, entry in enumerate(entries):
        where = f"wrappers[{i}]"
        if isinstance(entry, Mapping) and "_target_" in entry:
            kwargs = {k: v for k, v in entry.items() if k != "_target_"}
            pairs = [(target(entry["_target_"], f"{where}._target_"), kwargs)]
        elif isinstance(entry, Mapping):
            # Maze style: {class or dotted path: kwargs}, several wrappers in order.
            pairs = [(target(k, where), dict(v or {})) for k, v in entry.items()]
        else:
            pairs = [(target(entry, where), {})]
        resolved.extend((fn, kwargs, _wrapper_kind(fn)) for fn, kwargs in pairs)
    seen_async = False
    for i, (fn, _, kind) in enumerate(resolved):
        if kind == "gym" and seen_async:
            raise ConfigError(
                f"wrappers[{i}]: the gymnasium wrapper {fn.__name__} comes after an async "
                "wrapper; gymnasium wrappers must come first (they wrap the env before "
                "it is adapted to async)",
                key=f"wrappers[{i}]",
            )
        seen_async = seen_async or kind == "async"
    return resolved


def _describe(spec: Any) -> str:
    if isinstance(spec, Mapping):
        return f"{{_target_: {spec.get('_target_')!s}}}"
    return getattr(spec, "__qualname__", None) or repr(spec)


class EnvFactory:
    """A zero-argument callable returning a fresh :class:`AsyncEnv` on each call.

    Made by :func:`env_factory`. ``factory(worker_index=k)`` passes ``k`` to a
    user callable that accepts a ``worker_index`` keyword, so a pool of
    simulator servers can be addressed by worker.
    """

    def __init__(
        self,
        make: Callable[[int], Any],
        *,
        wrappers: list[_Wrapper],
        offload: Offload,
        max_episode_steps: int,
        description: str,
        spec: Any,
    ) -> None:
        self._make = make
        self._wrappers = wrappers
        self.offload: Offload = offload
        self.max_episode_steps = max_episode_steps
        self.description = description
        self.spec = spec
        self._spare: AsyncEnv | None = None

    def keep_for_first_worker(self, env: AsyncEnv) -> None:
        """Hand ``env`` (made early, say to read its spaces) to the next call for worker 0."""
        self._spare = env

    def __call__(self, worker_index: int = 0) -> AsyncEnv:
        if worker_index == 0 and self._spare is not None:
            spare, self._spare = self._spare, None
            return spare
        env = self._make(worker_index)
        for fn, kwargs, kind in self._wrappers:
            is_async = is_async_env(env)
            if kind == "async" and not is_async:
                env = wrap_env(env, offload=self.offload)
            elif kind == "gym" and is_async:
                raise ConfigError(
                    f"the gymnasium wrapper {fn.__name__} cannot wrap the async env {env!r}; "
                    "list it before the async wrappers, or use an AsyncEnvWrapper"
                )
            env = fn(env, **kwargs)
        async_env = wrap_env(env, offload="inline" if self.offload == "process" else self.offload)
        if self.max_episode_steps:
            async_env = _StepLimit(async_env, self.max_episode_steps)
        return async_env

    def __repr__(self) -> str:
        return f"EnvFactory({self.description}, offload={self.offload!r})"


def env_factory(
    spec: EnvSpec | EnvFactory,
    *,
    wrappers: Iterable[WrapperSpec] | Mapping[Any, Any] | None = (),
    offload: Offload = "inline",
    max_episode_steps: int | None = None,
) -> EnvFactory:
    """Turn any env spec into a factory of fresh :class:`AsyncEnv` instances.

    Args:
        spec: A callable returning a gymnasium env or an :class:`AsyncEnv`
            (it may accept a ``worker_index`` keyword), a gymnasium id such as
            ``"CartPole-v1"``, or a config mapping with ``_target_``.
        wrappers: Applied in order; each a class or callable, a dotted path, a
            ``_target_`` mapping, or a Maze-style ``{class or path: kwargs}``
            mapping. ``gymnasium.Wrapper`` subclasses wrap the gymnasium env
            before adaptation and must come before any ``AsyncEnvWrapper``.
            With ``offload="process"`` the wrappers before the first
            ``AsyncEnvWrapper`` wrap the env in the child process, so they
            must be importable and their arguments JSON; the others run here.
        offload: ``"inline"``, ``"thread"`` or ``"process"`` (see :func:`wrap_env`).
        max_episode_steps: Truncate episodes after this many steps; None or 0
            sets no limit of the factory's own.

    Raises:
        ConfigError: A wrapper or ``_target_`` cannot be resolved, or the
            wrappers are in an impossible order.
        TypeError: ``spec`` is not an env spec.
        ValueError: ``offload`` or ``max_episode_steps`` is invalid.
    """
    check_choice("offload", offload, ("inline", "thread", "process"))
    limit = check_max_episode_steps(max_episode_steps)
    resolved = _resolve_wrappers(wrappers)
    if isinstance(spec, EnvFactory):
        if not resolved and not limit:
            return spec
        raise ValueError(
            "env_factory: cannot add wrappers or a step limit to an EnvFactory; "
            "pass the original spec instead"
        )
    if offload == "process":
        from .remote._process import process_env_maker

        # The wrappers before the first async one wrap the gymnasium env, as inline: they
        # travel to the child (by dotted path) and wrap the env there.
        first_async = next((i for i, w in enumerate(resolved) if w[2] == "async"), len(resolved))
        shipped = [(fn, kwargs) for fn, kwargs, _ in resolved[:first_async]]
        make = process_env_maker(spec, shipped)
        resolved = resolved[first_async:]
    else:
        make = _maker(spec)
    return EnvFactory(
        make,
        wrappers=resolved,
        offload=offload,
        max_episode_steps=limit,
        description=_describe(spec),
        spec=spec,
    )


def _maker(spec: Any) -> Callable[[int], Any]:
    """Return ``make(worker_index) -> env`` for a spec (worker_index passed where accepted)."""
    if isinstance(spec, str):
        return lambda _: gym.make(spec)
    if isinstance(spec, Mapping | DictConfig):
        # A DictConfig is instantiated as it is, so that errors name its keys from the root.
        fn = target_of(spec)
        if accepts_keyword(fn, "worker_index"):
            return lambda k: instantiate(spec, worker_index=k)
        return lambda _: instantiate(spec)
    is_instance = isinstance(spec, gym.Env) or (not isinstance(spec, type) and is_async_env(spec))
    if callable(spec) and not is_instance:
        if accepts_keyword(spec, "worker_index"):
            return lambda k: spec(worker_index=k)
        return lambda _: spec()
    raise TypeError(
        "expected an env spec: a callable returning an env, a gymnasium id string, or a "
        f"mapping with _target_; got {type(spec).__name__}: {spec!r}"
    )

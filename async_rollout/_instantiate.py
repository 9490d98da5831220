"""``_target_`` configs: importing dotted paths and building the objects they name."""

from __future__ import annotations

import difflib
import importlib
import inspect
import re
import sys
from collections.abc import Mapping, Sequence
from typing import Any, cast

from omegaconf import DictConfig, Node, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from .errors import ConfigError

__all__ = ["accepts_keyword", "instantiate", "locate", "target_of"]

_TARGET = "_target_"
_MISSING = "???"


def locate(path: str) -> Any:
    """Import the object at a dotted path, such as ``"gymnasium.make"``.

    Nested attributes work too (``"pkg.module.Class.method"``).

    Args:
        path: The dotted path.

    Returns:
        The object.

    Raises:
        ConfigError: The path is malformed, a module is not found (or fails to
            import), or an attribute is missing; the message says which.
    """
    parts = path.split(".")
    if not all(part.isidentifier() for part in parts):
        raise ConfigError(f"{path!r} is not a dotted path such as 'package.module.Name'")
    obj = _import(parts[0], path)
    if obj is None:
        raise ConfigError(f"cannot import {path!r}: no module named {parts[0]!r}")
    for i, part in enumerate(parts[1:], start=1):
        owner = ".".join(parts[:i])
        if hasattr(obj, part):
            obj = getattr(obj, part)
            continue
        # In a package, the name may also be a submodule not imported yet.
        if hasattr(obj, "__path__") and (submodule := _import(f"{owner}.{part}", path)):
            obj = submodule
            continue
        raise ConfigError(
            f"cannot import {path!r}: {owner!r} has no attribute {part!r}"
            + (" (nor a submodule of that name)" if hasattr(obj, "__path__") else "")
            + _did_you_mean(part, [name for name in dir(obj) if not name.startswith("_")])
        )
    return obj


def _import(module: str, path: str) -> Any:
    """Import ``module``; None when it does not exist (as opposed to failing inside)."""
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name == module:
            return None
        raise ConfigError(f"cannot import {path!r}: importing {module!r} failed: {exc}") from exc
    except Exception as exc:
        raise ConfigError(
            f"cannot import {path!r}: importing {module!r} raised {type(exc).__name__}: {exc}"
        ) from exc


def accepts_keyword(fn: Any, name: str) -> bool:
    """Tell whether ``fn`` (a function or a class) declares a keyword parameter ``name``.

    A ``**kwargs`` catch-all does not count: the runner passes ``action_space``
    and the like only to the callables that name them.
    """
    try:
        parameter = inspect.signature(fn).parameters.get(name)
    except (TypeError, ValueError):  # builtins without a signature
        return False
    return parameter is not None and parameter.kind in (
        inspect.Parameter.POSITIONAL_OR_KEYWORD,
        inspect.Parameter.KEYWORD_ONLY,
    )


def instantiate(cfg: Mapping[str, Any] | DictConfig, /, **kwargs: Any) -> Any:
    """Build the object a ``_target_`` config describes.

    ``_target_`` is a dotted path to a callable (or, in a plain mapping, the
    callable itself); the other keys are its keyword arguments. Nested mappings
    with a ``_target_``, in mappings and lists, are built first. Config values
    reach the callable as plain ``dict``/``list``, never omegaconf containers.

    Args:
        cfg: A DictConfig or a mapping with a ``_target_`` key. A DictConfig taken
            from a composed config (``cfg.env``) names its keys from the root in
            errors (``env._target_``).
        **kwargs: Keyword arguments added to the config's, or replacing them;
            passed as they are (not instantiated).

    Returns:
        What the target returned.

    Raises:
        ConfigError: ``_target_`` is missing, unset (``???``) or not importable, a
            value is unset, or the target raised ``TypeError``, ``ValueError`` or
            ``FileNotFoundError`` (chained as the cause); ``.key`` names the key.
    """
    if isinstance(cfg, DictConfig):
        prefix = _node_path(cfg)
        try:
            plain = OmegaConf.to_container(cfg, resolve=True)
        except OmegaConfBaseException as exc:
            # full_key counts from the root already; it spells list items "w[0]".
            key = re.sub(r"\[(\d+)\]", r".\1", str(getattr(exc, "full_key", "") or prefix))
            raise ConfigError(f"{key}: {str(exc).splitlines()[0]}", key=key or None) from exc
        return _build(cast(dict[str, Any], plain), prefix, kwargs)
    if isinstance(cfg, Mapping):
        return _build(cfg, "", kwargs)
    raise TypeError(f"instantiate expects a mapping with a '_target_' key, got {cfg!r}")


def target_of(cfg: Mapping[str, Any] | DictConfig) -> Any:
    """The callable a config's ``_target_`` names, without building it.

    Raises:
        ConfigError: ``_target_`` is missing, unset (``???``) or not importable;
            ``.key`` names it from the config's root (``env._target_``).
    """
    prefix = _node_path(cfg) if isinstance(cfg, DictConfig) else ""
    key = _join(prefix, _TARGET)
    if isinstance(cfg, DictConfig) and OmegaConf.is_missing(cfg, _TARGET):
        target: Any = _MISSING
    elif _TARGET in cfg:
        target = cfg[_TARGET]
    else:
        raise ConfigError(f"{key} is missing: expected a dotted path to a callable", key=key)
    return _resolve_target(target, key)


def _build(cfg: Mapping[str, Any], key: str, extra: Mapping[str, Any]) -> Any:
    target_key = _join(key, _TARGET)
    if _TARGET not in cfg:
        raise ConfigError(
            f"{target_key} is missing: expected a dotted path to a callable", key=target_key
        )
    target = _resolve_target(cfg[_TARGET], target_key)
    target_name = cfg[_TARGET] if isinstance(cfg[_TARGET], str) else target.__qualname__
    values = {name: _value(v, _join(key, name)) for name, v in cfg.items() if name != _TARGET}
    arguments = {**values, **extra}
    try:
        return target(**arguments)
    except ConfigError:
        raise
    except Exception as exc:
        if not isinstance(exc, _constructor_errors()):
            raise
        culprit = _culprit(exc, values)
        where = _join(key, culprit) if culprit else key
        shown = f"{where}={values[culprit]!r}" if culprit else where
        raise ConfigError(
            f"{shown or target_name}: {target_name} raised {type(exc).__name__}: {exc}",
            key=where or None,
        ) from exc


def _resolve_target(target: Any, key: str) -> Any:
    if isinstance(target, str) and target == _MISSING:
        raise ConfigError(
            f"{key} is not set (???): expected a dotted path to a callable, "
            f"e.g. {key}=package.module.Name",
            key=key,
        )
    if isinstance(target, str):
        try:
            target = locate(target)
        except ConfigError as exc:
            raise ConfigError(f"{key}={target!r}: {exc}", key=key) from exc
    if not callable(target):
        raise ConfigError(
            f"{key}={target!r}: expected a dotted path to a callable, "
            f"got a {type(target).__name__}",
            key=key,
        )
    return target


def _value(value: Any, key: str) -> Any:
    """Instantiate ``_target_`` mappings inside a config value; other values pass as they are."""
    if isinstance(value, dict):
        if _TARGET in value:
            return _build(value, key, {})
        return {name: _value(v, _join(key, str(name))) for name, v in value.items()}
    if isinstance(value, list):
        return [_value(v, f"{key}.{i}") for i, v in enumerate(value)]
    if isinstance(value, str) and value == _MISSING:
        raise ConfigError(f"{key} is not set (???): give it a value, e.g. {key}=...", key=key)
    return value


def _constructor_errors() -> tuple[type[Exception], ...]:
    """The exceptions of a target that mean a bad config value rather than a bug."""
    errors: tuple[type[Exception], ...] = (TypeError, ValueError, FileNotFoundError)
    # gymnasium reports an unknown env id with its own Error; it can only have been
    # raised if gymnasium is imported, so its absence costs no import.
    gym_errors = sys.modules.get("gymnasium.error")
    if gym_errors is not None:
        errors += (gym_errors.Error,)
    return errors


def _culprit(exc: Exception, values: Mapping[str, Any]) -> str | None:
    """The argument an error message names, when it names exactly one."""
    named = [name for name in values if re.search(rf"\b{re.escape(name)}\b", str(exc))]
    return named[0] if len(named) == 1 else None


def _node_path(node: Node) -> str:
    """The dotted key of a node from its root (``env``, ``wrappers.0``)."""
    # Node._get_full_key spells list items inconsistently ("w0", "w[0].a"): walk up instead.
    parts = []
    while (parent := node._get_parent()) is not None:
        parts.append(str(node._key()))
        node = parent
    return ".".join(reversed(parts))


def _join(prefix: str, key: str) -> str:
    return f"{prefix}.{key}" if prefix and key else prefix or key


def _did_you_mean(word: str, candidates: Sequence[str]) -> str:
    close = difflib.get_close_matches(word, candidates, n=3)
    return f"; did you mean {', '.join(close)}?" if close else ""

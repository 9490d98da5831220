"""Loading ``conf/``: config groups, command-line overrides and ``_target_`` instantiation.

The grammar is small and fixed (DESIGN.md, "Config and CLI"), on plain omegaconf:

- The root ``<config_name>.yaml`` has a ``defaults:`` list naming one option per
  group (``- env: cartpole``). The option file ``<group>/<option>.yaml`` becomes
  the value of the key ``<group>``; the root's own keys are merged over the groups.
- Overrides: ``group=option`` selects an option (``+group=option`` is accepted
  too), ``a.b=value`` sets an existing key, ``+a.b=value`` adds a new one; list
  items are addressed by index (``wrappers.0.max_episode_steps=100``). Values
  parse as YAML. Group selections apply before key overrides whatever their
  order, so ``env=custom env._target_=pkg.MyEnv`` works.
- Keys of plain settings (``runner.*``, ``seeding.*``, ...) keep the type of
  their current value. Keys inside an object built from ``_target_`` are left
  to its constructor, whose own ``TypeError``/``ValueError`` :func:`instantiate`
  turns into a :class:`~async_rollout.errors.ConfigError` naming the key.
- The composed config has no ``defaults`` key; the selected options are recorded
  under the top-level key ``choices`` (``{"env": "cartpole", ...}``) so that a
  saved config says how it was composed.

A ``config_dir`` is searched before the packaged ``conf/``: its files shadow the
packaged ones of the same name, and its new groups and options are added.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import re
import sys
from collections.abc import Iterator, Mapping, Sequence
from importlib.resources import files
from importlib.resources.abc import Traversable
from os import PathLike
from pathlib import Path
from typing import Any, cast

import yaml  # type: ignore[import-untyped]  # PyYAML ships no type hints
from omegaconf import Container, DictConfig, ListConfig, Node, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from .errors import ConfigError

__all__ = ["CHOICES_KEY", "accepts_keyword", "instantiate", "list_groups", "load_config", "locate"]

#: The top-level key of a composed config that records the selected option of each group.
CHOICES_KEY = "choices"
_TARGET = "_target_"
_MISSING = "???"
_OVERRIDE_KEY = re.compile(r"[A-Za-z_][\w-]*(\.[\w-]+)*")
# Numbers whose default is a number but where the runner gives null a meaning:
# a fresh base seed, no step limit.
_NULLABLE = frozenset({"seeding.base_seed", "runner.max_episode_steps"})


class _ValueLoader(yaml.SafeLoader):  # type: ignore[misc]  # the base class is untyped
    """PyYAML's safe loader, amended for values typed on a command line."""


# PyYAML follows YAML 1.1, where `1e-3` is a string and `2024-01-01` a date: on a
# command line both surprise, so exponents read as floats and dates stay text.
_ValueLoader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_ValueLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:\d[\d_]*(?:\.\d*)?|\.\d+)[eE][-+]?\d+$"),
    list("-+0123456789."),
)


# --- instantiate -------------------------------------------------------------------------------


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
            # full_key is counted from the root already; the first line is the message.
            key = str(getattr(exc, "full_key", "") or prefix)
            raise ConfigError(f"{key}: {str(exc).splitlines()[0]}", key=key or None) from exc
        return _build(cast(dict[str, Any], plain), prefix, kwargs)
    if isinstance(cfg, Mapping):
        return _build(cfg, "", kwargs)
    raise TypeError(f"instantiate expects a mapping with a '_target_' key, got {cfg!r}")


def _build(cfg: Mapping[str, Any], key: str, extra: Mapping[str, Any]) -> Any:
    target_key = _join(key, _TARGET)
    if _TARGET not in cfg:
        raise ConfigError(
            f"{target_key} is missing: expected a dotted path to a callable", key=target_key
        )
    target = _resolve_target(cfg[_TARGET], target_key)
    name = cfg[_TARGET] if isinstance(cfg[_TARGET], str) else getattr(target, "__qualname__", "")
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
            f"{shown or name}: {name} raised {type(exc).__name__}: {exc}", key=where or None
        ) from exc


def _resolve_target(target: Any, key: str) -> Any:
    if target == _MISSING:
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


# --- load_config -------------------------------------------------------------------------------


def load_config(
    overrides: Sequence[str] = (),
    config_dir: str | PathLike[str] | None = None,
    config_name: str = "rollout",
) -> DictConfig:
    """Compose a config from ``conf/`` and command-line style overrides.

    Args:
        overrides: ``group=option``, ``a.b=value`` (existing keys) and
            ``+a.b=value`` (new keys); values parse as YAML.
        config_dir: A directory searched before the packaged ``conf/``.
        config_name: The root config's file name, without ``.yaml``.

    Returns:
        The composed config, without ``defaults``; ``cfg.choices`` maps each group
        to its selected option.

    Raises:
        ConfigError: An unknown group, option or key, a value of the wrong type,
            or a malformed file or override; ``.key`` names the key.
    """
    search = _search_path(config_dir)
    name = config_name.removesuffix(".yaml")
    root_file = next((d / f"{name}.yaml" for d in search if (d / f"{name}.yaml").is_file()), None)
    if root_file is None:
        roots = sorted({f.name[:-5] for d in search for f in _yaml_files(d)})
        raise ConfigError(
            f"no root config {name!r}: expected {name}.yaml in "
            f"{', '.join(str(d) for d in search)} (found: {', '.join(roots) or 'none'})",
            key="config_name",
        )
    root = _read_yaml(root_file)
    if not isinstance(root, DictConfig):
        raise ConfigError(f"{root_file}: the root config must be a mapping")
    choices = _defaults(root.pop("defaults", []), root_file)

    groups = set(_groups(search)) | set(choices)
    settings = []
    for item in overrides:
        key, add, value = _parse_override(item)
        if "." not in key and key in groups:
            choices[key] = value.strip()
        else:
            settings.append((item, key, add, value))

    composed = OmegaConf.create({})
    for group, option in choices.items():
        composed[group] = _read_yaml(_option_file(search, group, option))
    try:
        merged = OmegaConf.merge(composed, root)
    except OmegaConfBaseException as exc:
        raise ConfigError(f"{root_file}: cannot merge over the groups: {exc}") from exc
    composed = cast(DictConfig, merged)

    for item, key, add, value in settings:
        _apply(composed, item, key, add, value, groups)
    composed[CHOICES_KEY] = choices
    return composed


def list_groups(config_dir: str | PathLike[str] | None = None) -> dict[str, list[str]]:
    """Return every config group and its options, both sorted.

    Args:
        config_dir: A directory searched before the packaged ``conf/``.
    """
    return _groups(_search_path(config_dir))


def _groups(search: Sequence[Traversable]) -> dict[str, list[str]]:
    names = {d.name for root in search for d in root.iterdir() if d.is_dir()}
    return {name: sorted(options) for name in sorted(names) if (options := _options(search, name))}


def _search_path(config_dir: str | PathLike[str] | None) -> list[Traversable]:
    search: list[Traversable] = []
    if config_dir is not None:
        path = Path(config_dir)
        if not path.is_dir():
            raise ConfigError(f"config_dir {str(path)!r} is not a directory", key="config_dir")
        search.append(path)
    packaged = files("async_rollout") / "conf"
    # An editable install has no async_rollout/conf: use the repository's conf/ beside it.
    search.append(packaged if packaged.is_dir() else Path(__file__).resolve().parents[1] / "conf")
    return search


def _yaml_files(directory: Traversable) -> Iterator[Traversable]:
    if directory.is_dir():
        yield from (f for f in directory.iterdir() if f.name.endswith(".yaml") and f.is_file())


def _options(search: Sequence[Traversable], group: str) -> dict[str, Traversable]:
    options: dict[str, Traversable] = {}
    for directory in reversed(search):  # the earlier directories shadow the later ones
        options.update((f.name[:-5], f) for f in _yaml_files(directory / group))
    return options


def _option_file(search: Sequence[Traversable], group: str, option: str) -> Traversable:
    options = _options(search, group)
    if not options:
        raise ConfigError(f"unknown config group {group!r}", key=group)
    if option not in options:
        raise ConfigError(
            f"{group}={option!r}: no such option; expected one of {', '.join(sorted(options))}",
            key=group,
        )
    return options[option]


def _read_yaml(file: Traversable) -> DictConfig | ListConfig:
    try:
        return OmegaConf.create(file.read_text(encoding="utf-8"))
    except (OmegaConfBaseException, yaml.YAMLError) as exc:
        raise ConfigError(f"{file}: {exc}") from exc


def _defaults(entries: Any, root_file: Traversable) -> dict[str, str]:
    """Read the root's ``defaults:`` list, ``[{group: option}, ...]``, as a dict."""
    choices: dict[str, str] = {}
    for entry in entries:
        if not (isinstance(entry, DictConfig) and len(entry) == 1):
            raise ConfigError(f"{root_file}: a defaults entry looks like '- env: cartpole'")
        ((group, option),) = entry.items()
        choices[str(group)] = str(option)
    return choices


def _parse_override(item: str) -> tuple[str, bool, str]:
    key, sep, value = item.partition("=")
    add = key.startswith("+")
    key = key.removeprefix("+")
    if not sep or not _OVERRIDE_KEY.fullmatch(key):
        raise ConfigError(
            f"{item!r} is not an override: expected group=option, key=value or +key=value",
            key=key or None,
        )
    return key, add, value


def _parse_value(key: str, text: str) -> Any:
    try:
        return yaml.load(text, Loader=_ValueLoader)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{key}={text!r}: not a YAML value: {exc}", key=key) from exc


def _apply(cfg: DictConfig, item: str, key: str, add: bool, text: str, groups: set[str]) -> None:
    """Set (or, with ``add``, create) the dotted ``key`` of ``cfg`` to the YAML value ``text``."""
    value = _parse_value(key, text)
    parts = key.split(".")
    if parts[0] == CHOICES_KEY:
        raise ConfigError(f"{item!r}: choices records the selections; use group=option", key=key)
    node: Container = cfg
    typed = True
    for i, part in enumerate(parts[:-1]):
        if not _has(node, part):
            if not add or isinstance(node, ListConfig):
                raise _unknown_key(cfg, key, groups)
            cast(DictConfig, node)[part] = {}
        child = _child(node, part)
        if not isinstance(child, Container):
            where = ".".join(parts[: i + 1])
            raise ConfigError(f"{item!r}: {where} is not a mapping or a list", key=where)
        node = child
        # An object's arguments are checked by its constructor, not by their current type.
        typed = typed and not (isinstance(node, DictConfig) and _TARGET in node.keys())
    last = parts[-1]
    exists = _has(node, last)
    if add and exists:
        raise ConfigError(f"{item!r}: {key} exists already; set it with {key}=...", key=key)
    if not add and not exists:
        raise _unknown_key(cfg, key, groups)
    if add and isinstance(node, ListConfig):
        raise ConfigError(f"{item!r}: cannot add an item to the list at {key}", key=key)
    if exists and typed:
        _check_type(node, last, f"{key}={text}", value)
    try:
        node[int(last) if isinstance(node, ListConfig) else last] = value
    except OmegaConfBaseException as exc:
        raise ConfigError(f"{item!r}: {exc}", key=key) from exc


def _has(node: Container, part: str) -> bool:
    if isinstance(node, ListConfig):
        return part.isdigit() and int(part) < len(node)
    return part in cast(DictConfig, node).keys()


def _child(node: Container, part: str) -> Any:
    """The value at ``part``, or None when it is missing (``???``) or an interpolation."""
    index = int(part) if isinstance(node, ListConfig) else part
    if OmegaConf.is_missing(node, index) or OmegaConf.is_interpolation(node, index):
        return None
    return node[index]


def _check_type(node: Container, last: str, item: str, value: Any) -> None:
    """Refuse a value whose type differs from the current value's (null accepts anything)."""
    current = _child(node, last)
    key = item.partition("=")[0]
    if current is None or (value is None and key in _NULLABLE):
        return
    number = isinstance(value, int | float) and not isinstance(value, bool)
    if isinstance(current, bool):
        what, ok = "a boolean (true or false)", isinstance(value, bool)
    elif isinstance(current, int):
        what, ok = "an integer", number and isinstance(value, int)
    elif isinstance(current, float):
        what, ok = "a number", number
    elif isinstance(current, str):
        what, ok = "a string", isinstance(value, str)
    elif isinstance(current, ListConfig):
        what, ok = "a list", isinstance(value, list)
    else:
        what, ok = "a mapping", isinstance(value, dict)
    if not ok:
        raise ConfigError(
            f"{item}: expected {what} (like the current value {current!r}), "
            f"got {type(value).__name__} {value!r}",
            key=key,
        )


def _unknown_key(cfg: DictConfig, key: str, groups: set[str]) -> ConfigError:
    known = list(_dotted_keys(OmegaConf.to_container(cfg, resolve=False)))
    if "." not in key:
        known += sorted(groups - set(known))
    leaf = key.rsplit(".", 1)[-1]
    close = difflib.get_close_matches(key, known, n=3)
    close += [k for k in known if k.rsplit(".", 1)[-1] == leaf and k not in close]
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    kind = "key or group" if "." not in key else "key"
    return ConfigError(f"unknown {kind} {key!r}{hint} (+{key}=... adds a new key)", key=key)


def _dotted_keys(value: Any, prefix: str = "") -> Iterator[str]:
    items = value.items() if isinstance(value, dict) else enumerate(value)
    for name, child in items:
        path = _join(prefix, str(name))
        yield path
        if isinstance(child, dict | list):
            yield from _dotted_keys(child, path)

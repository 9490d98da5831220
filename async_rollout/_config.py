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
import re
from collections.abc import Iterator, Sequence
from importlib.resources import files
from importlib.resources.abc import Traversable
from os import PathLike
from pathlib import Path
from typing import Any, cast

import yaml  # type: ignore[import-untyped]  # PyYAML ships no type hints
from omegaconf import Container, DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from ._instantiate import _join
from .errors import ConfigError

__all__ = ["CHOICES_KEY", "list_groups", "load_config"]

#: The top-level key of a composed config that records the selected option of each group.
CHOICES_KEY = "choices"
_TARGET = "_target_"
_MISSING = "???"
_OVERRIDE_KEY = re.compile(r"[A-Za-z_][\w-]*(\.[\w-]+)*")
# Numeric keys to which the runner also gives null a meaning: a fresh base seed, no step limit.
_NULLABLE = frozenset({"seeding.base_seed", "runner.max_episode_steps"})


class _Loader(yaml.SafeLoader):  # type: ignore[misc]  # the base class is untyped
    """PyYAML's safe loader, amended for config files and command-line values."""


# PyYAML follows YAML 1.1, where `1e-3` is a string and `2024-01-01` a date; in a
# config both surprise, so exponents read as floats and dates stay text (as in omegaconf).
_Loader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:\d[\d_]*(?:\.\d*)?|\.\d+)[eE][-+]?\d+$"),
    list("-+0123456789."),
)


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
    if isinstance(overrides, str):
        raise TypeError(f"overrides must be a sequence of strings, got the string {overrides!r}")
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
    names = {d.name for root in search if root.is_dir() for d in root.iterdir() if d.is_dir()}
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
        data = yaml.load(file.read_text(encoding="utf-8"), Loader=_Loader)
        if not isinstance(data, dict | list | None):
            raise ConfigError(f"{file}: expected a mapping or a list, got {data!r}")
        return OmegaConf.create({} if data is None else data)
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
        return yaml.load(text, Loader=_Loader)
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

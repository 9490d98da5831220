"""A griffe extension for the docs build: render reST markup of the docstrings.

The package's docstrings use Sphinx roles (``:class:`AsyncEnv```) and reST's
``text::`` before a literal block, which read well in ``help()`` but would show
up literally in the Markdown-rendered API reference. This turns each role into
an optional autorefs link (the name resolved in the docstring's scope, linked
where it is documented, plain code otherwise) and ``text::`` into ``text:``.
"""

from __future__ import annotations

import html
import re
from typing import Any

import griffe

ROLE = re.compile(r":(?:class|func|meth|attr|mod|data|exc|obj):`(?P<target>[^`]+)`")
LITERAL_MARKER = re.compile(r"(?<=\S)::$", flags=re.MULTILINE)


def _resolve(obj: griffe.Object, target: str) -> str | None:
    """The full path ``target`` names in ``obj``'s scope, or None."""
    if target.startswith("."):
        return None
    head, _, rest = target.partition(".")
    for scope in (obj, *_parents(obj)):
        try:
            path = scope.resolve(head)
        except (griffe.NameResolutionError, griffe.AliasResolutionError, KeyError):
            continue
        return f"{path}.{rest}" if rest else path
    return target if "." in target else None


def _parents(obj: griffe.Object) -> list[griffe.Object]:
    chain = []
    while obj.parent is not None:
        obj = obj.parent
        chain.append(obj)
    return chain


def _link(obj: griffe.Object, match: re.Match[str]) -> str:
    target = match["target"]
    shown = target.lstrip("~")
    if target.startswith("~"):
        shown = shown.rsplit(".", 1)[-1]
    code = f"<code>{html.escape(shown)}</code>"
    path = _resolve(obj, target.lstrip("~"))
    if path is None:
        return code
    return f'<autoref identifier="{html.escape(path)}" optional>{code}</autoref>'


class SphinxRoles(griffe.Extension):
    """Rewrite ``:role:`target``` in every docstring of the loaded package."""

    def on_package(self, *, pkg: griffe.Module, **kwargs: Any) -> None:
        """Rewrite the docstrings once the whole package is loaded."""
        self._rewrite(pkg, set())

    def _rewrite(self, obj: griffe.Object, seen: set[str]) -> None:
        if obj.path in seen:
            return
        seen.add(obj.path)
        if obj.docstring is not None:
            text = ROLE.sub(lambda m: _link(obj, m), obj.docstring.value)
            obj.docstring.value = LITERAL_MARKER.sub(":", text)
        for member in obj.members.values():
            if not member.is_alias:
                self._rewrite(member, seen)

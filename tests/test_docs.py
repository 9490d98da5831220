"""The API reference builds from the docstrings with warnings as errors, as CI builds it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import async_rollout
import async_rollout.recording
import async_rollout.remote
import async_rollout.testing

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("mkdocs", reason="the docs tools come with the dev extra")
    pytest.importorskip("mkdocstrings_handlers.python", reason="needs mkdocstrings[python]")
    out = tmp_path_factory.mktemp("site")
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, f"mkdocs build --strict failed:\n{proc.stderr}"
    return out


def test_docs_build_strict(site: Path) -> None:
    assert (site / "index.html").is_file()
    assert (site / "PROTOCOL" / "index.html").is_file()


@pytest.mark.parametrize(
    "module",
    [async_rollout, async_rollout.testing, async_rollout.recording, async_rollout.remote],
    ids=lambda module: module.__name__,
)
def test_api_reference_documents_every_public_name(site: Path, module: object) -> None:
    """Each name in __all__ has an entry (errors are documented in async_rollout.errors)."""
    api = (site / "api" / "index.html").read_text()
    prefix = module.__name__  # type: ignore[attr-defined]
    missing = [
        name
        for name in module.__all__  # type: ignore[attr-defined]
        if name != "__version__"
        and f'id="{prefix}.{name}"' not in api
        and f'id="async_rollout.errors.{name}"' not in api
    ]
    assert not missing, f"docs/api.md lacks {missing}"

"""Every example runs for real, as a user runs it, so none can rot.

Scripts run as ``python examples/<name>.py`` in a subprocess (warnings as
errors); the web service runs under a real uvicorn on 127.0.0.1 and is read
with httpx; the notebook's cells run in an already running asyncio loop.
Timeouts are hang guards, never performance claims.
"""

from __future__ import annotations

import ast
import inspect
import re
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import pytest
from anyio.streams.buffered import BufferedByteReceiveStream

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
HANG_GUARD_S = 120.0

# Examples tested elsewhere, by the suite of the feature they show.
TESTED_ELSEWHERE = {"ray_cluster.py"}


def run_example(name: str) -> str:
    """Run ``python -W error examples/<name>`` from the repository root; return its stdout."""
    proc = subprocess.run(
        [sys.executable, "-W", "error", str(EXAMPLES / name)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=HANG_GUARD_S,
        check=False,
    )
    assert proc.returncode == 0, f"{name} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def test_every_example_is_run_here() -> None:
    """A new example needs a test in this file (or an owner listed in TESTED_ELSEWHERE)."""
    module = Path(__file__).read_text()
    for path in sorted(EXAMPLES.glob("*.py")) + sorted(EXAMPLES.glob("*.md")):
        assert path.name in module, f"examples/{path.name} is not run by {Path(__file__).name}"
    for path in sorted(p for p in EXAMPLES.iterdir() if p.is_dir() and p.name != "__pycache__"):
        assert f"{path.name}/" in module, f"examples/{path.name}/ is not run by this module"


# --- scripts ------------------------------------------------------------------------------------


def test_cartpole() -> None:
    out = run_example("cartpole.py")
    assert re.match(r"32 episodes, \d+ steps: return [\d.]+ ± [\d.]+ ", out), out


def test_trio_backend_gives_the_same_episodes_as_asyncio() -> None:
    """trio_backend.py prints what cartpole.py prints but the speed: same seeds, same episodes."""
    on_trio = run_example("trio_backend.py")
    on_asyncio = run_example("cartpole.py")
    assert on_trio.rsplit(",", 1)[0] == on_asyncio.rsplit(",", 1)[0]


def test_batched_policy() -> None:
    out = run_example("batched_policy.py")
    assert "'n_episodes': 64" in out
    assert "'n_failed': 0" in out


def test_remote_simulator() -> None:
    out = run_example("remote_simulator.py")
    assert out.startswith("100 episodes (0 failed), 5000 steps"), out
    assert "on one event loop" in out


# --- web_service/ ---------------------------------------------------------------------------------

WEB_APP = EXAMPLES / "web_service" / "app.py"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # only the test's client runs here; the server has its own process and loop


@asynccontextmanager
async def web_service(log: list[str]) -> AsyncIterator[str]:
    """Run web_service/app.py under uvicorn on a free port; yield its base URL.

    ``log`` receives the server's output; on leaving, the server gets SIGTERM
    and must shut down cleanly (uvicorn then re-raises the signal: status -15).
    """
    command = [sys.executable, "-W", "error", str(WEB_APP), "--port", "0"]
    process = await anyio.open_process(command, cwd=ROOT, stderr=subprocess.STDOUT)
    started = anyio.Event()
    url = ""

    async def read_output() -> None:
        nonlocal url
        assert process.stdout is not None
        output = BufferedByteReceiveStream(process.stdout)
        try:
            while True:
                line = (await output.receive_until(b"\n", 1 << 20)).decode()
                log.append(line)
                if found := re.search(r"Uvicorn running on (http://\S+)", line):
                    url = found[1]
                    started.set()
        except (anyio.EndOfStream, anyio.IncompleteRead):
            started.set()  # the server died: the check below reports its output

    async with process, anyio.create_task_group() as tg:
        tg.start_soon(read_output)
        try:
            with anyio.fail_after(HANG_GUARD_S):
                await started.wait()
            assert url, "the server did not start:\n" + "\n".join(log)
            yield url
        finally:
            process.terminate()
            with anyio.fail_after(HANG_GUARD_S):
                await process.wait()
    assert process.returncode in (0, -signal.SIGTERM), "\n".join(log)
    assert any("Finished server process" in line for line in log), "\n".join(log)
    assert not any("Traceback" in line or "ERROR" in line for line in log), "\n".join(log)


@pytest.mark.anyio
async def test_web_service_answers_while_a_rollout_streams() -> None:
    """A /ping sent after the first streamed episode is answered before the last one arrives.

    The stream is a 100-episode rollout of an env with 10 ms of latency per step;
    the order of arrival, not a clock, shows that the server's loop keeps serving.
    """
    import httpx

    arrivals: list[str] = []
    first_episode = anyio.Event()
    server_log: list[str] = []

    async with web_service(server_log) as url, httpx.AsyncClient(base_url=url) as client:

        async def ping_during_the_stream() -> None:
            await first_episode.wait()
            response = await client.get("/ping")
            assert response.text == "pong"
            arrivals.append("pong")

        with anyio.fail_after(HANG_GUARD_S):
            async with anyio.create_task_group() as tg:
                tg.start_soon(ping_during_the_stream)
                query = {"env": "simulator", "episodes": 100}
                async with client.stream("GET", "/rollout", params=query) as response:
                    assert response.headers["content-type"].startswith("text/event-stream")
                    async for line in response.aiter_lines():
                        if line.startswith("event: "):
                            arrivals.append(line.removeprefix("event: "))
                            first_episode.set()

    episodes = [i for i, event in enumerate(arrivals) if event == "episode"]
    assert len(episodes) == 100
    assert arrivals[-1] == "summary"
    assert episodes[0] < arrivals.index("pong") < episodes[-1], arrivals


@pytest.mark.anyio
async def test_web_service_ends_a_rollout_whose_client_left() -> None:
    """A client leaving mid-stream stops nothing else: the server answers and exits cleanly."""
    import httpx

    server_log: list[str] = []
    async with web_service(server_log) as url, httpx.AsyncClient(base_url=url) as client:
        with anyio.fail_after(HANG_GUARD_S):
            query = {"env": "simulator", "episodes": 1000}
            async with client.stream("GET", "/rollout", params=query) as response:
                seen = 0
                async for line in response.aiter_lines():
                    seen += line == "event: episode"
                    if seen == 3:
                        break
            assert (await client.get("/ping")).text == "pong"
            assert (await client.get("/rollout", params={"env": "nope"})).status_code == 404


# --- notebook.md ----------------------------------------------------------------------------------

NOTEBOOK = EXAMPLES / "notebook.md"


def notebook_cells() -> list[str]:
    return re.findall(r"^```python\n(.*?)^```$", NOTEBOOK.read_text(), flags=re.M | re.S)


def test_notebook_needs_no_loop_of_its_own() -> None:
    cells = notebook_cells()
    assert len(cells) >= 5
    for cell in cells:
        assert "nest_asyncio" not in cell
        assert "asyncio.run(" not in cell
        assert "anyio.run(" not in cell


@pytest.mark.asyncio
async def test_notebook_cells_run_in_an_already_running_loop() -> None:
    """notebook.md's cells, in order, with top-level await, as Jupyter runs them."""
    namespace: dict[str, object] = {"__name__": "__main__"}
    for i, cell in enumerate(notebook_cells()):
        code = compile(cell, f"notebook.md cell {i}", "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
        outcome = eval(code, namespace)  # a coroutine when the cell awaits at the top level
        if inspect.iscoroutine(outcome):
            with anyio.fail_after(HANG_GUARD_S):
                await outcome
    result = namespace["result"]
    assert result.summary["n_episodes"] == 200  # type: ignore[attr-defined]
    assert len(namespace["returns"]) == 20  # type: ignore[arg-type]

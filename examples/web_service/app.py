"""A web service that runs rollouts on request and streams each episode as it ends.

``GET /rollout?env=simulator&episodes=100`` starts a rollout and answers with
Server-Sent Events: an ``episode`` event for each finished episode, in
completion order, then a ``summary`` event. The rollout runs on the server's
own event loop, next to every other request: while it streams, ``GET /ping``
is answered at once.

    pip install starlette uvicorn
    python examples/web_service/app.py         # serves http://127.0.0.1:8000
    curl -N 'http://127.0.0.1:8000/rollout?env=simulator&episodes=100'
    curl http://127.0.0.1:8000/ping
"""

import argparse
import dataclasses
import json
from functools import partial
from typing import Any

import anyio
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route
from starlette.types import Message, Receive, Scope, Send

from async_rollout import EpisodeResult, RolloutRunner
from async_rollout.testing import ScriptedEnv

# The envs a request may ask for, by name: never build objects from what a request says.
ENVS: dict[str, Any] = {
    "cartpole": "CartPole-v1",
    # Stands in for a remote simulator: 20 steps of 10 ms each.
    "simulator": partial(ScriptedEnv, episode_length=20, step_latency=0.01),
}
MAX_EPISODES = 1000


def sse(event: str, data: Any, *, last: bool = False) -> Message:
    """One Server-Sent Event, as an ASGI body message."""
    body = f"event: {event}\ndata: {json.dumps(data)}\n\n".encode()
    return {"type": "http.response.body", "body": body, "more_body": not last}


def episode_fields(episode: EpisodeResult) -> dict[str, Any]:
    fields = dataclasses.asdict(episode)
    del fields["trajectory"]
    return fields


async def cancel_on_disconnect(receive: Receive, scope: anyio.CancelScope) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass
    scope.cancel()


class EpisodeStream(Response):
    """Runs a rollout and streams its episodes as Server-Sent Events.

    The rollout runs in the response's own task, not in an async generator: a
    generator would leave ``runner.stream``'s task group suspended at each
    ``yield``. It stops, closing every env, when the client goes away.
    """

    media_type = "text/event-stream"

    def __init__(self, runner: RolloutRunner, env: Any) -> None:
        self.runner = runner
        self.env = env
        self.status_code = 200
        self.background = None
        self.init_headers({"cache-control": "no-cache"})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
        async with anyio.create_task_group() as tg:
            tg.start_soon(cancel_on_disconnect, receive, tg.cancel_scope)
            async with self.runner.stream(self.env) as episodes:
                async for episode in episodes:
                    await send(sse("episode", episode_fields(episode)))
            await send(sse("summary", self.runner.result.summary, last=True))
            tg.cancel_scope.cancel()


async def rollout(request: Request) -> Response:
    env = ENVS.get(request.query_params.get("env", "cartpole"))
    if env is None:
        return PlainTextResponse(f"unknown env; choose one of {sorted(ENVS)}", status_code=404)
    try:
        n_episodes = int(request.query_params.get("episodes", "20"))
        seed = int(request.query_params.get("seed", "0"))
    except ValueError:
        return PlainTextResponse("episodes and seed must be integers", status_code=400)
    if not 1 <= n_episodes <= MAX_EPISODES or seed < 0:
        return PlainTextResponse(f"episodes: 1 to {MAX_EPISODES}; seed >= 0", status_code=400)
    # A runner per request: it keeps its latest result, so requests must not share one.
    runner = RolloutRunner(
        n_episodes,
        max_episode_steps=500,
        concurrency=32,
        seed=seed,
        step_timeout=10.0,
        on_env_error="skip",  # a failed episode is streamed with its outcome; the rest go on
    )
    return EpisodeStream(runner, env)


async def ping(request: Request) -> Response:
    return PlainTextResponse("pong")


app = Starlette(routes=[Route("/rollout", rollout), Route("/ping", ping)])


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Serve rollouts as Server-Sent Events.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000, help="0 picks a free port")
    args = parser.parse_args()
    uvicorn.run(app, host=args.host, port=args.port)

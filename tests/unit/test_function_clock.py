"""The local stack's Lambda clock: one invocation per API request, its handler time, and
GET /_local_usage (devstack/usage.py), driven as uvicorn drives an ASGI app."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from devstack.function_logs import LogMeter
from devstack.usage import FunctionClock


class Poller:
    class source:  # the attribute SqsPoller has
        function = "AiWorkerFunction"

    def __init__(self) -> None:
        self.resets = 0

    def usage(self, *, reset: bool = False) -> dict[str, Any]:
        self.resets += reset
        return {"invocations": 3, "records": 5, "seconds": 1.5}


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    await asyncio.sleep(0.01)  # the handler's own work, which the clock must count (not a wait for anything)
    await send({"type": "http.response.start", "status": 202, "headers": []})
    await send({"type": "http.response.body", "body": b"{}"})


def request(asgi: Any, path: str, query: bytes = b"") -> tuple[int, bytes]:
    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b""}

    asyncio.run(asgi({"type": "http", "path": path, "query_string": query}, receive, send))
    return sent[0]["status"], b"".join(m.get("body", b"") for m in sent[1:])


def test_each_api_request_is_one_ingest_invocation_timed_and_the_usage_route_is_not() -> None:
    poller = Poller()
    clock = FunctionClock("IngestFunction", [poller])
    timed = clock.asgi(app)

    assert request(timed, "/v1/call/stream/c1")[0] == 202
    assert request(timed, "/v1/call/c1/end")[0] == 202
    status, body = request(timed, "/_local_usage")

    assert status == 200
    usage = json.loads(body)["functions"]
    assert usage["IngestFunction"]["invocations"] == 2
    assert usage["IngestFunction"]["seconds"] >= 0.02
    assert usage["AiWorkerFunction"] == {"invocations": 3, "records": 5, "seconds": 1.5}


def test_reset_answers_the_counts_then_zeroes_them() -> None:
    poller = Poller()
    clock = FunctionClock("IngestFunction", [poller])
    timed = clock.asgi(app)
    request(timed, "/v1/calls")

    _, before = request(timed, "/_local_usage", b"reset=1")
    _, after = request(timed, "/_local_usage")

    assert json.loads(before)["functions"]["IngestFunction"]["invocations"] == 1
    assert json.loads(after)["functions"]["IngestFunction"] == {"invocations": 0, "seconds": 0.0}
    assert poller.resets == 1


async def logging_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    print("one EMF line")  # what the function writes, counted for it
    await app(scope, receive, send)


def test_with_a_log_meter_each_function_answers_what_it_wrote(monkeypatch: Any) -> None:
    import io
    import sys

    monkeypatch.setattr(sys, "stdout", io.StringIO())
    poller = Poller()
    clock = FunctionClock("IngestFunction", [poller], LogMeter().install())
    timed = clock.asgi(logging_app)
    request(timed, "/v1/call/stream/c1")
    request(timed, "/v1/call/stream/c1")

    _, body = request(timed, "/_local_usage", b"reset=1")
    _, after = request(timed, "/_local_usage")

    usage = json.loads(body)["functions"]
    assert usage["IngestFunction"]["log_bytes"] == 2 * len("one EMF line\n")
    assert usage["IngestFunction"]["log_events"] == 2
    assert usage["AiWorkerFunction"]["log_bytes"] == 0  # wrote nothing
    assert json.loads(after)["functions"]["IngestFunction"]["log_events"] == 0

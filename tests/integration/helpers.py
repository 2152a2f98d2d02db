"""Helpers for integration tests: concurrent HTTP, and reading what the stack stored."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import httpx

from callcore.bootstrap import AwsClients, Ports
from callcore.domain.errors import DependencyUnavailableError
from devstack.poller import Handler, SqsPoller, run_on_schedule
from devstack.template import ScheduleSource
from pbxsim.retry import RetryPolicy


def http_api_event(
    method: str,
    path: str,
    *,
    body: str | bytes | None = None,
    headers: dict[str, str] | None = None,
    query: dict[str, str] | None = None,
) -> dict[str, Any]:
    """An API Gateway HTTP API (payload 2.0) event for the `/{proxy+}` route on the $default stage,
    as API Gateway and `sam local start-api` send it to the ingest function. A ``bytes`` body
    comes base64-encoded, as API Gateway sends a body that is not text."""
    all_headers = {"content-type": "application/json", "host": "abc123.execute-api.us-east-1.amazonaws.com"}
    all_headers |= {k.lower(): v for k, v in (headers or {}).items()}
    raw_query = "&".join(f"{k}={v}" for k, v in (query or {}).items())
    event: dict[str, Any] = {
        "version": "2.0",
        "routeKey": "ANY /{proxy+}",
        "rawPath": path,
        "rawQueryString": raw_query,
        "headers": all_headers,
        **({"queryStringParameters": query} if query else {}),
        "pathParameters": {"proxy": path.lstrip("/")},
        "requestContext": {
            "accountId": "123456789012",
            "apiId": "abc123",
            "domainName": "abc123.execute-api.us-east-1.amazonaws.com",
            "domainPrefix": "abc123",
            "http": {
                "method": method,
                "path": path,
                "protocol": "HTTP/1.1",
                "sourceIp": "203.0.113.7",
                "userAgent": "pbx/1.0",
            },
            "requestId": "c6af9ac6-7b61-11e6-9a41-93e8deadbeef",
            "routeKey": "ANY /{proxy+}",
            "stage": "$default",
            "time": "02/Dec/2026:17:00:00 +0000",
            "timeEpoch": 1796230800000,
        },
        "isBase64Encoded": isinstance(body, bytes),
    }
    if body is not None:
        event["body"] = base64.b64encode(body).decode() if isinstance(body, bytes) else body
    return event


def audio_data(sequence: int) -> str:
    """A packet's default data: base64, so that it decodes as (noisy) mu-law audio, and the
    mock provider reads it back as the text ``audio-N``."""
    return b64(f"audio-{sequence}")


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def packet(sequence: int, data: str | None = None, timestamp: float | None = None) -> dict[str, Any]:
    return {
        "sequence": sequence,
        "data": data if data is not None else audio_data(sequence),
        "timestamp": timestamp if timestamp is not None else 1_700_000_000.0 + sequence * 0.02,
    }


# Under LOCAL_FAULTS the moto server answers like AWS under stress, and the app may
# answer 503: tests then retry as a PBX would, and assert what still must hold.
FAULTS_ON = bool(os.environ.get("LOCAL_FAULTS", "").strip())
# The PBX simulator's own policy: wait what Retry-After asks, here at most 1 s, up to 9 times.
PBX_RETRY = RetryPolicy(max_retries=9, max_wait_s=1.0)


@dataclass
class Answers:
    """Every answer a retrying client saw, and the last one of each request."""

    final: list[httpx.Response] = field(default_factory=list)
    all_statuses: list[int] = field(default_factory=list)

    @property
    def unexpected(self) -> list[int]:
        """Answers a client must never see: anything but 2xx, 4xx and 503."""
        return [s for s in self.all_statuses if not (200 <= s < 300 or 400 <= s < 500 or s == 503)]


async def post_retrying(
    client: httpx.AsyncClient, path: str, body: dict[str, Any] | None, seen: list[int] | None = None
) -> httpx.Response:
    """POST, and on 503 send the same request again as a PBX would (``PBX_RETRY``)."""
    retry = 0
    while True:
        response = await client.post(path, json=body) if body is not None else await client.post(path)
        if seen is not None:
            seen.append(response.status_code)
        if response.status_code != 503 or retry == PBX_RETRY.max_retries:
            return response
        retry += 1
        await asyncio.sleep(PBX_RETRY.wait_s(response.headers.get("Retry-After"), retry))


def get_retrying(api: httpx.Client, path: str, params: dict[str, Any] | None = None) -> httpx.Response:
    """GET, and on 503 send it again as a PBX would (``PBX_RETRY``)."""
    retry = 0
    while True:
        response = api.get(path, params=params)
        if response.status_code != 503 or retry == PBX_RETRY.max_retries:
            return response
        retry += 1
        time.sleep(PBX_RETRY.wait_s(response.headers.get("Retry-After"), retry))


def post_concurrently(base_url: str, requests: Sequence[tuple[str, dict[str, Any] | None]]) -> list[httpx.Response]:
    """Send every (path, json) at once over separate connections; answers in request order."""
    return post_concurrently_retrying(base_url, requests).final


def post_concurrently_retrying(base_url: str, requests: Sequence[tuple[str, dict[str, Any] | None]]) -> Answers:
    """Send every (path, json) at once over separate connections, each retried on 503 like a PBX."""
    answers = Answers()

    async def run() -> list[httpx.Response]:
        limits = httpx.Limits(max_connections=len(requests) + 1, max_keepalive_connections=0)
        async with httpx.AsyncClient(base_url=base_url, timeout=60, limits=limits) as client:
            start = asyncio.Event()

            async def one(path: str, body: dict[str, Any] | None) -> httpx.Response:
                await start.wait()
                return await post_retrying(client, path, body, answers.all_statuses)

            tasks = [asyncio.create_task(one(p, b)) for p, b in requests]
            await asyncio.sleep(0)  # let every task reach the start line
            start.set()
            return list(await asyncio.gather(*tasks))

    answers.final = asyncio.run(run())
    return answers


_T = TypeVar("_T")


def read_store(read: Callable[[], _T]) -> _T:
    """A test's own read of the store, tried again (up to 10 times) while moto throttles it under chaos."""
    for attempt in range(10):
        try:
            return read()
        except DependencyUnavailableError:
            if attempt == 9:
                raise
    raise AssertionError("unreachable")


def stored_packets(ports: Ports, call_id: str) -> dict[int, str]:
    """sequence -> data, exactly what the AI worker will read for the call."""
    return {p.sequence: p.data for p in read_store(lambda: ports.store.packets(call_id))}


def drain_queue(clients: AwsClients, queue_url: str) -> list[dict[str, Any]]:
    """Receive and delete every message now visible on a queue; return their bodies."""
    bodies: list[dict[str, Any]] = []
    while True:
        response = clients.sqs.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=0)
        messages = response.get("Messages", [])
        if not messages:
            return bodies
        for message in messages:
            bodies.append(json.loads(message["Body"]))
            clients.sqs.delete_message(QueueUrl=queue_url, ReceiptHandle=message["ReceiptHandle"])


class RunningStack:
    """The local stack's pollers (work queue -> AI worker, DLQ -> DLQ handler) and the
    scheduled sweeper, on an event loop of their own in a thread, as `python -m devstack` runs them."""

    def __init__(self, pollers: list[SqsPoller], schedules: Sequence[tuple[ScheduleSource, Handler]] = ()) -> None:
        self._pollers, self._schedules = pollers, schedules
        self._loop = asyncio.new_event_loop()
        self._stop = asyncio.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)

        async def main() -> None:
            await asyncio.gather(
                *(p.run(self._stop) for p in self._pollers),
                *(run_on_schedule(source, handler, self._stop) for source, handler in self._schedules),
            )

        self._loop.run_until_complete(main())

    def __enter__(self) -> RunningStack:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(timeout=60)

"""The simulator's HTTP client: urllib3 connections driven from asyncio through a thread pool.

httpx's async client spent about 4 ms of CPU per request here, against 0.3 ms for
urllib3, which made the simulator, not the stack, the bottleneck of a load test.
"""

from __future__ import annotations

import asyncio
import json
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import urlencode

import urllib3


class TransportError(Exception):
    """The request got no HTTP answer (refused, reset, timed out)."""


@dataclass(frozen=True)
class Answer:
    status: int
    body: bytes
    latency_ms: float  # on the wire: from sending the request to the whole answer, not queueing here
    retry_after: str | None = None  # the Retry-After header, as sent

    def json(self) -> Any:
        return json.loads(self.body)


class Transport(Protocol):
    """What the simulator needs of HTTP; the real one is Client, unit tests pass a fake."""

    async def post(self, path: str, body: Any = None) -> Answer: ...

    async def get(self, path: str, params: dict[str, Any] | None = None) -> Answer: ...


# A request sent on a kept-alive connection that the server closed at that moment (its
# idle timeout) fails with a reset before any answer: sent again once, as HTTP clients do.
# Every request of this API is safe to repeat; statuses are never retried here.
_STALE_CONNECTION = urllib3.Retry(
    total=1, connect=1, read=1, status=0, other=0, redirect=0, allowed_methods=None, raise_on_status=False
)


class Client:
    def __init__(self, base_url: str, connections: int, api_key: str | None = None, timeout_s: float = 60) -> None:
        self._base = base_url.rstrip("/")
        self._pool = urllib3.PoolManager(
            maxsize=connections, block=True, retries=False, timeout=urllib3.Timeout(total=timeout_s)
        )
        self._executor = ThreadPoolExecutor(max_workers=connections, thread_name_prefix="pbxsim")
        self._headers = {"content-type": "application/json", **({"X-API-Key": api_key} if api_key else {})}

    def _send(self, method: str, path: str, body: Any, params: dict[str, Any] | None) -> Answer:
        url = self._base + path + (f"?{urlencode(params)}" if params else "")
        data = None if body is None else json.dumps(body).encode()
        started = time.perf_counter()
        try:
            response = self._pool.request(method, url, body=data, headers=self._headers, retries=_STALE_CONNECTION)
        except urllib3.exceptions.HTTPError as exc:
            raise TransportError(repr(exc)) from exc
        latency_ms = (time.perf_counter() - started) * 1000
        return Answer(response.status, response.data, latency_ms, response.headers.get("Retry-After"))

    async def post(self, path: str, body: Any = None) -> Answer:
        return await asyncio.get_running_loop().run_in_executor(self._executor, self._send, "POST", path, body, None)

    async def get(self, path: str, params: dict[str, Any] | None = None) -> Answer:
        return await asyncio.get_running_loop().run_in_executor(self._executor, self._send, "GET", path, None, params)

    def close(self) -> None:
        self._executor.shutdown(wait=True)
        self._pool.clear()

"""Helpers for integration tests: concurrent HTTP, and reading what the stack stored."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from typing import Any

import httpx

from callcore.bootstrap import Ports


def packet(sequence: int, data: str | None = None, timestamp: float | None = None) -> dict[str, Any]:
    return {
        "sequence": sequence,
        "data": data if data is not None else f"audio-{sequence}",
        "timestamp": timestamp if timestamp is not None else 1_700_000_000.0 + sequence * 0.02,
    }


def post_concurrently(base_url: str, requests: Sequence[tuple[str, dict[str, Any] | None]]) -> list[httpx.Response]:
    """Send every (path, json) at once over separate connections; answers in request order."""

    async def run() -> list[httpx.Response]:
        limits = httpx.Limits(max_connections=len(requests) + 1, max_keepalive_connections=0)
        async with httpx.AsyncClient(base_url=base_url, timeout=60, limits=limits) as client:
            start = asyncio.Event()

            async def one(path: str, body: dict[str, Any] | None) -> httpx.Response:
                await start.wait()
                return await client.post(path, json=body) if body is not None else await client.post(path)

            tasks = [asyncio.create_task(one(p, b)) for p, b in requests]
            await asyncio.sleep(0)  # let every task reach the start line
            start.set()
            return list(await asyncio.gather(*tasks))

    return asyncio.run(run())


def stored_packets(ports: Ports, call_id: str) -> dict[int, str]:
    """sequence -> data, exactly what the AI worker will read for the call."""
    return {p.sequence: p.data for p in ports.store.packets(call_id)}


def drain_queue(ports: Ports, queue_url: str) -> list[dict[str, Any]]:
    """Receive and delete every message now visible on a queue; return their bodies."""
    bodies: list[dict[str, Any]] = []
    while True:
        response = ports.sqs.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=0)
        messages = response.get("Messages", [])
        if not messages:
            return bodies
        for message in messages:
            bodies.append(json.loads(message["Body"]))
            ports.sqs.delete_message(QueueUrl=queue_url, ReceiptHandle=message["ReceiptHandle"])

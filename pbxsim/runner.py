"""Drive a running stack: stream every call's packets at once, end them, wait, verify."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime

import httpx
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn

from pbxsim.plan import CallPlan, Rates, plan_call
from pbxsim.report import CallOutcome, Report, lost_sequences

FINAL_STATES = ("COMPLETED", "FAILED")


@dataclass(frozen=True)
class Options:
    base_url: str = "http://127.0.0.1:8000"
    api_key: str | None = None
    calls: int = 100
    packets: int = 20
    interval_s: float = 0.02
    rates: Rates = field(default_factory=Rates)
    connections: int = 200
    wait: bool = True
    timeout_s: float = 600.0
    seed: int | None = None
    prefix: str = ""
    progress: bool = True


def _iso_to_epoch(iso: str) -> float:
    return datetime.strptime(iso, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC).timestamp()


class _Bars:
    def __init__(self, enabled: bool, calls: int, packets: int) -> None:
        self.progress = Progress(
            TextColumn("{task.description:<10}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            disable=not enabled,
            transient=False,
        )
        self.sent = self.progress.add_task("packets", total=packets)
        self.ended = self.progress.add_task("ended", total=calls)
        self.finished = self.progress.add_task("finished", total=calls)

    def advance(self, task: TaskID, by: int = 1) -> None:
        self.progress.advance(task, by)

    @contextmanager
    def shown(self) -> Iterator[None]:
        with self.progress:
            yield


async def run(options: Options) -> Report:
    rng = random.Random(options.seed)
    prefix = options.prefix or f"sim-{int(time.time())}-{rng.randrange(16**6):06x}"
    plans = [
        plan_call(f"{prefix}-{i}", options.packets, options.rates, random.Random(rng.random()), start_ts=time.time())
        for i in range(options.calls)
    ]
    report = Report()
    report.calls = {p.call_id: CallOutcome(call_id=p.call_id, last_sequence=p.last_sequence) for p in plans}
    bars = _Bars(options.progress, options.calls, sum(len(p.sends) for p in plans))
    headers = {"X-API-Key": options.api_key} if options.api_key else {}
    limits = httpx.Limits(max_connections=options.connections, max_keepalive_connections=options.connections)
    async with httpx.AsyncClient(base_url=options.base_url, headers=headers, limits=limits, timeout=60) as client:
        with bars.shown():
            started = time.perf_counter()
            await asyncio.gather(*(_stream_call(client, plan, options, report, bars) for plan in plans))
            report.streaming_s = time.perf_counter() - started
            if options.wait:
                await _wait_for_final(client, report, options, bars)
        await _verify(client, report, plans)
    return report


async def _post(client: httpx.AsyncClient, report: Report, path: str, body: dict[str, object]) -> int | None:
    started = time.perf_counter()
    try:
        response = await client.post(path, json=body)
    except httpx.TransportError:
        report.record(None, 0.0)
        return None
    report.record(response.status_code, (time.perf_counter() - started) * 1000)
    return response.status_code


async def _stream_call(
    client: httpx.AsyncClient, plan: CallPlan, options: Options, report: Report, bars: _Bars
) -> None:
    outcome = report.calls[plan.call_id]
    for send in plan.sends:
        if options.interval_s:
            await asyncio.sleep(options.interval_s)
        body = {"sequence": send.sequence, "data": send.data, "timestamp": send.timestamp}
        status = await _post(client, report, f"/v1/call/stream/{plan.call_id}", body)
        report.packets_sent += 1
        bars.advance(bars.sent)
        if status == 202:
            outcome.acknowledged.add(send.sequence)
    try:
        response = await client.post(f"/v1/call/{plan.call_id}/end", json={"last_sequence": plan.last_sequence})
    except httpx.TransportError:
        report.connection_errors += 1
        return
    if response.status_code >= 500:
        report.statuses["5xx"] += 1
    elif response.status_code in (200, 202):
        outcome.ended_at = time.time()
    bars.advance(bars.ended)


async def _wait_for_final(client: httpx.AsyncClient, report: Report, options: Options, bars: _Bars) -> None:
    """Watch the state listings (most recently changed first) rather than poll every call."""
    deadline = time.monotonic() + options.timeout_s
    pending = {cid for cid, c in report.calls.items() if c.ended_at is not None}
    while pending and time.monotonic() < deadline:
        since = min(report.calls[cid].ended_at or 0.0 for cid in pending) - 5.0
        for state in FINAL_STATES:
            cursor: str | None = None
            while True:
                params: dict[str, str | int] = {"state": state, "limit": 100}
                if cursor:
                    params["cursor"] = cursor
                response = await client.get("/v1/calls", params=params)
                if response.status_code != 200:
                    break
                page = response.json()
                for item in page["calls"]:
                    outcome = report.calls.get(item["call_id"])
                    if outcome is not None and item["call_id"] in pending and outcome.ended_at is not None:
                        outcome.final_state = state
                        outcome.completed_after_s = _iso_to_epoch(item["updated_at"]) - outcome.ended_at
                        pending.discard(item["call_id"])
                        bars.advance(bars.finished)
                cursor = page["next_cursor"]
                oldest = page["calls"][-1]["updated_at"] if page["calls"] else None
                if cursor is None or oldest is None or _iso_to_epoch(oldest) < since:
                    break
        if pending:
            await asyncio.sleep(0.5)


async def _verify(client: httpx.AsyncClient, report: Report, plans: list[CallPlan]) -> None:
    """Compare what each call's GET reports stored with the sequences answered 202."""
    slots = asyncio.Semaphore(50)

    async def one(plan: CallPlan) -> None:
        outcome = report.calls[plan.call_id]
        async with slots:
            try:
                response = await client.get(f"/v1/call/{plan.call_id}")
            except httpx.TransportError as exc:
                outcome.verify_error = f"GET failed: {exc!r}"
                return
        if response.status_code == 404 and not outcome.acknowledged:
            return
        if response.status_code != 200:
            outcome.verify_error = f"GET answered {response.status_code}"
            outcome.lost = set(outcome.acknowledged)
            return
        call = response.json()
        outcome.final_state = outcome.final_state or call["state"]
        try:
            outcome.lost = lost_sequences(outcome.acknowledged, call["packets"], call.get("last_sequence"))
        except ValueError as exc:
            outcome.verify_error = str(exc)

    await asyncio.gather(*(one(p) for p in plans))

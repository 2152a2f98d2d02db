"""Drive a running stack: stream every call's packets at once, end them, wait, verify."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn

from pbxsim.http import Client, TransportError
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
    end: bool = True  # end each call after its packets (False: measure ingest alone)
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
    client = Client(options.base_url, options.connections, options.api_key)
    try:
        with bars.shown():
            started = time.perf_counter()
            await asyncio.gather(*(_stream_call(client, plan, options, report, bars) for plan in plans))
            report.streaming_s = time.perf_counter() - started
            if options.wait and options.end:
                await _wait_for_final(client, report, options, bars)
        await _verify(client, report, plans)
    finally:
        client.close()
    return report


async def _post(client: Client, report: Report, path: str, body: dict[str, object]) -> int | None:
    try:
        response = await client.post(path, body)
    except TransportError:
        report.record(None, 0.0)
        return None
    report.record(response.status, response.latency_ms)
    return response.status


async def _stream_call(
    client: Client, plan: CallPlan, options: Options, report: Report, bars: _Bars
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
    if not options.end:
        return
    try:
        response = await client.post(f"/v1/call/{plan.call_id}/end", {"last_sequence": plan.last_sequence})
    except TransportError:
        report.connection_errors += 1
        return
    if response.status >= 500:
        report.statuses["5xx"] += 1
    elif response.status in (200, 202):
        outcome.ended_at = time.time()
    bars.advance(bars.ended)


async def _wait_for_final(client: Client, report: Report, options: Options, bars: _Bars) -> None:
    """Watch the state listings (most recently changed first) rather than poll every call.

    Each round reads a listing only down to the first call it already knows, so a round
    costs a page or two however many calls there are. Every tenth round, the calls still
    pending are asked for one by one, in case an index lagged behind.
    """
    deadline = time.monotonic() + options.timeout_s
    pending = {cid for cid, c in report.calls.items() if c.ended_at is not None}
    known: set[str] = set()

    def finish(call_id: str, state: str, updated_at: str) -> None:
        outcome = report.calls[call_id]
        outcome.final_state = state
        if outcome.ended_at is not None:
            outcome.completed_after_s = _iso_to_epoch(updated_at) - outcome.ended_at
        pending.discard(call_id)
        bars.advance(bars.finished)

    rounds = 0
    while pending and time.monotonic() < deadline:
        rounds += 1
        for state in FINAL_STATES:
            cursor: str | None = None
            while True:
                params: dict[str, str | int] = {"state": state, "limit": 100}
                if cursor:
                    params["cursor"] = cursor
                response = await client.get("/v1/calls", params)
                if response.status != 200:
                    break
                page = response.json()
                reached_known = False
                for item in page["calls"]:
                    if item["call_id"] in known:
                        reached_known = True
                        break
                    known.add(item["call_id"])
                    if item["call_id"] in pending:
                        finish(item["call_id"], state, item["updated_at"])
                cursor = page["next_cursor"]
                if reached_known or cursor is None:
                    break
        if pending and rounds % 10 == 0:
            await _recheck(client, sorted(pending)[:200], finish)
        if pending:
            await asyncio.sleep(0.5)


async def _recheck(client: Client, call_ids: list[str], finish: Callable[[str, str, str], None]) -> None:
    slots = asyncio.Semaphore(20)

    async def one(call_id: str) -> None:
        async with slots:
            response = await client.get(f"/v1/call/{call_id}")
        if response.status == 200 and response.json()["state"] in FINAL_STATES:
            body = response.json()
            finish(call_id, body["state"], body["updated_at"])

    await asyncio.gather(*(one(c) for c in call_ids))


async def _verify(client: Client, report: Report, plans: list[CallPlan]) -> None:
    """Compare what each call's GET reports stored with the sequences answered 202."""
    slots = asyncio.Semaphore(50)

    async def one(plan: CallPlan) -> None:
        outcome = report.calls[plan.call_id]
        async with slots:
            try:
                response = await client.get(f"/v1/call/{plan.call_id}")
            except TransportError as exc:
                outcome.verify_error = f"GET failed: {exc}"
                return
        if response.status == 404 and not outcome.acknowledged:
            return
        if response.status != 200:
            outcome.verify_error = f"GET answered {response.status}"
            outcome.lost = set(outcome.acknowledged)
            return
        call = response.json()
        outcome.final_state = outcome.final_state or call["state"]
        try:
            outcome.lost = lost_sequences(outcome.acknowledged, call["packets"], call.get("last_sequence"))
        except ValueError as exc:
            outcome.verify_error = str(exc)

    await asyncio.gather(*(one(p) for p in plans))

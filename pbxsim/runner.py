"""Drive a running stack: stream every call's packets at once, end them, wait, verify."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn

from pbxsim.http import Client, Transport
from pbxsim.plan import CallPlan, Rates, Send, batches, plan_call
from pbxsim.report import FINAL_STATES, CallOutcome, Report, lost_sequences, response_key, result_problems
from pbxsim.retry import Exchange, RetryPolicy, Sleep, exchange
from pbxsim.speech import Speech


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
    retry: RetryPolicy = field(default_factory=RetryPolicy)  # for 503s, on every request
    # Speech (--speech): call i streams speech[i % len(speech)], one 20 ms mu-law frame per
    # packet, so `packets` does not apply; the report adds each call's word error rate.
    speech: tuple[Speech, ...] = ()
    # Pace on a clock: a call's send i goes at its start + i * interval_s, so the time each
    # request takes does not add up (audio in real time). False: interval_s before each send.
    on_clock: bool = False
    # --batch-ms: packets per request on POST .../batch, a call's sends cut in their planned
    # order; a batch goes once its packets' intervals have passed. 0: one request per packet.
    batch: int = 0
    # False: no GET of each call after streaming (the bench's cost model counts only what
    # streaming and processing a call use).
    verify: bool = True


def _batch_body(batch: list[Send]) -> dict[str, Any]:
    return {"packets": [{"sequence": s.sequence, "data": s.data, "timestamp": s.timestamp} for s in batch]}


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


async def run(
    options: Options,
    transport: Transport | None = None,
    sleep: Sleep = asyncio.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> Report:
    """Simulate the PBX against ``options.base_url`` (or ``transport``, for tests); ``sleep`` does every wait,
    ``clock`` (seconds) paces the packets of ``options.on_clock``."""
    rng = random.Random(options.seed)
    prefix = options.prefix or f"sim-{int(time.time())}-{rng.randrange(16**6):06x}"
    speech = (
        {f"{prefix}-{i}": options.speech[i % len(options.speech)] for i in range(options.calls)}
        if options.speech
        else {}
    )
    plans = [
        plan_call(
            f"{prefix}-{i}",
            options.packets,
            options.rates,
            random.Random(rng.random()),
            start_ts=time.time(),
            data=speech[f"{prefix}-{i}"].frames if speech else None,
        )
        for i in range(options.calls)
    ]
    report = Report()
    report.calls = {p.call_id: CallOutcome(call_id=p.call_id, last_sequence=p.last_sequence) for p in plans}
    report.speech = speech
    bars = _Bars(options.progress, options.calls, sum(len(p.sends) for p in plans))
    owned: Client | None = None
    if transport is None:
        transport = owned = Client(options.base_url, options.connections, options.api_key)
    sim = _Simulation(transport, options, report, bars, sleep, clock=clock)
    try:
        with bars.shown():
            started = time.perf_counter()
            await asyncio.gather(*(sim.stream_call(plan) for plan in plans))
            report.streaming_s = time.perf_counter() - started
            if options.wait and options.end:
                report.waited = True
                await sim.wait_for_final()
                report.waiting_s = time.perf_counter() - started - report.streaming_s
        if options.verify:
            checked = time.perf_counter()
            await sim.verify(plans)
            await sim.read_service_counts()
            report.checking_s = time.perf_counter() - checked
    finally:
        if owned is not None:
            owned.close()
    return report


class _Simulation:
    def __init__(
        self,
        transport: Transport,
        options: Options,
        report: Report,
        bars: _Bars,
        sleep: Sleep,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.transport = transport
        self.options = options
        self.report = report
        self.bars = bars
        self.sleep = sleep
        self.clock = clock

    async def post(self, kind: str, path: str, body: dict[str, Any]) -> Exchange:
        result = await self.post_unrecorded(path, body)
        self.report.record(kind, result)
        return result

    async def post_unrecorded(self, path: str, body: dict[str, Any]) -> Exchange:
        """POST, and again after each 503 as the retry policy says; the caller records it."""
        return await exchange(lambda: self.transport.post(path, body), self.options.retry, self.sleep)

    async def get(self, path: str, params: dict[str, Any] | None = None) -> Exchange:
        result = await exchange(lambda: self.transport.get(path, params), self.options.retry, self.sleep)
        self.report.record("reads", result)
        return result

    async def pace(self, started: float, due: int, packets: int) -> None:
        """Wait before a request of ``packets`` sends: their intervals, or on the clock until the call's
        ``started`` + ``due`` intervals."""
        interval = self.options.interval_s
        if interval and not self.options.on_clock:
            await self.sleep(packets * interval)
        elif interval and (delay := started + due * interval - self.clock()) > 0:
            await self.sleep(delay)

    async def stream_call(self, plan: CallPlan) -> None:
        outcome = self.report.calls[plan.call_id]
        await (self.stream_batches(plan) if self.options.batch else self.stream_packets(plan))
        if not self.options.end:
            return
        result = await self.post("ends", f"/v1/call/{plan.call_id}/end", {"last_sequence": plan.last_sequence})
        outcome.end_status = result.status
        if outcome.ended:
            outcome.ended_at = time.time()
        self.bars.advance(self.bars.ended)

    async def stream_packets(self, plan: CallPlan) -> None:
        """The call's sends, one request each."""
        outcome = self.report.calls[plan.call_id]
        started = self.clock()
        for i, send in enumerate(plan.sends):
            await self.pace(started, i, 1)
            body = {"sequence": send.sequence, "data": send.data, "timestamp": send.timestamp}
            result = await self.post("packets", f"/v1/call/stream/{plan.call_id}", body)
            self.report.packets_sent += 1
            self.bars.advance(self.bars.sent)
            outcome.answered(send.sequence, response_key(result.status))

    async def stream_batches(self, plan: CallPlan) -> None:
        """The call's sends in batch requests, each sent whole again after a 503 (the API makes that safe)."""
        outcome = self.report.calls[plan.call_id]
        started, due = self.clock(), 0
        for batch in batches(plan.sends, self.options.batch):
            # A PBX sends a batch once it holds the batch's audio: after its last packet's interval.
            due += len(batch)
            await self.pace(started, due, len(batch))
            result = await self.post_unrecorded(f"/v1/call/stream/{plan.call_id}/batch", _batch_body(batch))
            keys = self.report.record_batch(result, [s.sequence for s in batch])
            self.report.packets_sent += len(batch)
            self.bars.advance(self.bars.sent, len(batch))
            for send, key in zip(batch, keys, strict=True):
                outcome.answered(send.sequence, key)

    async def wait_for_final(self) -> None:
        """Watch the state listings (most recently changed first) rather than poll every call.

        Each round reads a listing only down to the first call it already knows, so a round
        costs a page or two however many calls there are. Every tenth round, the calls still
        pending are asked for one by one, in case an index lagged behind.
        """
        report, bars = self.report, self.bars
        deadline = time.monotonic() + self.options.timeout_s
        pending = {cid for cid, c in report.calls.items() if c.ended}
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
                    params: dict[str, Any] = {"state": state, "limit": 100}
                    if cursor:
                        params["cursor"] = cursor
                    result = await self.get("/v1/calls", params)
                    if result.last is None or result.last.status != 200:
                        break
                    page = result.last.json()
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
                await self._recheck(sorted(pending)[:200], finish)
            if pending:
                await self.sleep(0.5)

    async def _recheck(self, call_ids: list[str], finish: Callable[[str, str, str], None]) -> None:
        slots = asyncio.Semaphore(20)

        async def one(call_id: str) -> None:
            async with slots:
                result = await self.get(f"/v1/call/{call_id}")
            if result.last is not None and result.last.status == 200:
                body = result.last.json()
                if body["state"] in FINAL_STATES:
                    finish(call_id, body["state"], body["updated_at"])

        await asyncio.gather(*(one(c) for c in call_ids))

    async def read_service_counts(self) -> None:
        """The service's calls by state, as its operators see them (the console's counts)."""
        result = await self.get("/v1/calls/counts")
        if result.last is None or result.last.status != 200:
            return  # reported as not answered; the run's own checks do not depend on it
        counts = result.last.json()["counts"]
        self.report.service_counts = {c["state"]: {"count": c["count"], "more": c["more"]} for c in counts}

    async def verify(self, plans: list[CallPlan]) -> None:
        """Compare each call's GET with the sequences acknowledged, and check its state and AI history."""
        slots = asyncio.Semaphore(50)

        async def one(plan: CallPlan) -> None:
            outcome = self.report.calls[plan.call_id]
            async with slots:
                result = await self.get(f"/v1/call/{plan.call_id}")
            if result.status != 200 and not outcome.acknowledged and not outcome.ended:
                return  # nothing to check: no packet acknowledged, no end answered (a 5xx still counts)
            if result.error is not None:
                outcome.verify_error = f"GET failed: {result.error}"
                return
            assert result.last is not None
            if result.last.status != 200:
                gave_up = f" after {result.retries} retries" if result.gave_up else ""
                outcome.verify_error = f"GET answered {result.last.status}{gave_up}"
                outcome.lost = set(outcome.acknowledged)
                return
            call = result.last.json()
            outcome.state = call["state"]
            outcome.final_state = outcome.final_state or call["state"]
            outcome.failure_reason = call.get("failure_reason")
            ai = call.get("ai") or {}
            outcome.transcript = ai.get("transcript")
            outcome.sentiment = (ai.get("sentiment") or {}).get("label")
            outcome.problems = result_problems(call)
            try:
                outcome.lost = lost_sequences(outcome.acknowledged, call["packets"], call.get("last_sequence"))
            except ValueError as exc:
                outcome.verify_error = str(exc)

        await asyncio.gather(*(one(p) for p in plans))

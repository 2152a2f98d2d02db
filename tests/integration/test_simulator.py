"""The simulator against a real stack: it finds a packet the stack drops, passes an honest one,
and checks the whole pipeline (app, AI worker, DLQ handler, sweeper) with 200 calls, under
moto's faults when LOCAL_FAULTS is set."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import httpx
import pytest

from callcore.bootstrap import Ports, build_ai_provider, build_clients, build_ports
from callcore.domain.model import Packet
from callcore.ports import PacketWrite
from devstack.moto_process import free_port
from devstack.poller import Handler, build_pollers
from devstack.template import load_template, schedule_sources
from pbxsim.__main__ import main
from pbxsim.http import Answer, Client
from pbxsim.plan import Rates
from pbxsim.retry import RetryPolicy
from pbxsim.runner import Options, run
from tests.conftest import LiveServer, MotoStack, start_moto_stack
from tests.integration.helpers import RunningStack, get_retrying


class DroppingStore:
    """The real store, except that it answers 'stored' for sequence 3 and stores nothing, alone or in a batch."""

    def __init__(self, store: object) -> None:
        self._store = store

    def add_packet(self, call_id: str, packet: Packet, *, now: str, received_at_ns: int) -> PacketWrite:
        if packet.sequence == 3:
            return PacketWrite(stored=True)
        return self._store.add_packet(call_id, packet, now=now, received_at_ns=received_at_ns)  # type: ignore[attr-defined]

    def add_packets(self, call_id: str, packets: list[Packet], *, now: str, received_at_ns: int) -> list[PacketWrite]:
        kept = [p for p in packets if p.sequence != 3]
        writes = iter(self._store.add_packets(call_id, kept, now=now, received_at_ns=received_at_ns) if kept else [])  # type: ignore[attr-defined]
        return [PacketWrite(stored=True) if p.sequence == 3 else next(writes) for p in packets]

    def __getattr__(self, name: str) -> object:
        return getattr(self._store, name)


@pytest.mark.parametrize(
    ("batch_ms", "requests"),
    [("0", 4 * 6), ("200", 4)],  # a request per packet; a batch per call (10 packets a batch, 6 to send)
    ids=["one-request-per-packet", "batches"],
)
def test_the_simulator_reports_a_packet_the_stack_dropped_and_exits_non_zero(
    ports: Ports, tmp_path: Path, batch_ms: str, requests: int
) -> None:
    from ingest.app import create_app

    dropping = replace(ports, store=DroppingStore(ports.store))  # type: ignore[arg-type]
    out = tmp_path / "report.json"
    with LiveServer(create_app(dropping)) as server:
        code = main(
            [
                "--base-url",
                server.url,
                "--calls",
                "4",
                "--packets",
                "6",
                "--interval-ms",
                "0",
                "--duplicate-rate",
                "0",
                "--skip-rate",
                "0",
                "--batch-ms",
                batch_ms,
                "--no-wait",
                "--quiet",
                "--json",
                str(out),
                "--seed",
                "1",
            ]
        )
    report = json.loads(out.read_text())
    assert code == 1
    assert report["lost_packets"] == 4
    assert all(lost == [3] for lost in report["lost_by_call"].values())
    assert report["server_errors"] == 0
    assert (report["requests"], report["packets_sent"]) == (requests, 4 * 6)


def test_the_simulator_passes_an_honest_stack_despite_duplicates_and_reordering(live_api: str, tmp_path: Path) -> None:
    out = tmp_path / "report.json"
    code = main(
        [
            "--base-url",
            live_api,
            "--calls",
            "10",
            "--packets",
            "8",
            "--interval-ms",
            "0",
            "--duplicate-rate",
            "0.3",
            "--reorder-rate",
            "0.3",
            "--late-rate",
            "0.2",
            "--skip-rate",
            "0.1",
            "--no-wait",
            "--quiet",
            "--json",
            str(out),
            "--seed",
            "2",
        ]
    )
    report = json.loads(out.read_text())
    assert code == 0
    assert report["lost_packets"] == 0
    assert report["responses"]["200"] > 0  # the duplicates were sent and recognised
    assert report["responses"]["409"] == report["responses"]["other"] == 0
    assert report["responses"]["202"] + report["responses"]["200"] == report["packets_sent"]


# ---------------------------------------------------------------- the whole pipeline, under chaos


# The AI as the chaos run wants it (25% failures, 50 to 200 ms), and the retry clocks short
# so that a run's retries finish within the test: SQS backoff 0 or 1 s, the sweeper resending
# a work item whose send failed after 15 s, the least the settings allow (checking every second).
CHAOS_SETTINGS = {
    "AI_FAILURE_RATE": "0.25",
    "AI_MIN_LATENCY_S": "0.05",
    "AI_MAX_LATENCY_S": "0.2",
    "AI_SEED": "5",
    "RETRY_BASE_DELAY_S": "0.5",
    "RETRY_MAX_DELAY_S": "1",
    "WORK_RESEND_AFTER_S": "15",
}
SWEEP_EVERY_S = 1.0
# The queues' visibility timeouts (360 s and 180 s in the template) are how long an item
# stays away when the worker's ChangeMessageVisibility, or the DLQ handler, fails for good;
# shortened, so that such an item comes back within the run instead of minutes later.
VISIBILITY_S = "20"


@dataclass(frozen=True)
class FullStack:
    url: str  # the API
    moto: MotoStack


@pytest.fixture
def full_stack(request: pytest.FixtureRequest) -> Iterator[FullStack]:
    """The whole pipeline on a moto server of its own: the app on HTTP, the AI worker and DLQ
    handler fed by the template's event sources, and the sweeper. CHAOS_SETTINGS, with what
    an indirect parameter (a dict) overrides.

    Not the session's moto server: its tables hold every other test's packets, and moto
    answers GET's query of the arrival index by sorting the whole table; and this test
    changes the queues' visibility timeouts. Started after LOCAL_FAULTS is set, the
    server injects its faults (MotoProcess passes the environment on).
    """
    from ai_worker import dlq, sweeper
    from ai_worker.handler import WorkerDeps, build_handler
    from ingest.app import create_app

    moto_stack = start_moto_stack()
    try:
        settings = moto_stack.settings(**{**CHAOS_SETTINGS, **getattr(request, "param", {})})
        clients = build_clients(endpoint_url=moto_stack.moto.endpoint)
        ports = build_ports(settings, clients)
        deps = WorkerDeps(
            settings=settings,
            store=ports.store,
            ai=build_ai_provider(settings),
            queue=ports.queue,
            recordings=ports.recordings,
        )
        handlers: dict[str, Handler] = {
            "AiWorkerFunction": build_handler(deps),
            "DlqHandlerFunction": dlq.build_handler(ports.store),
        }
        template = load_template()
        pollers = build_pollers(template, moto_stack.stack, clients.sqs, handlers)
        sweep = sweeper.build_handler(ports.store, ports.queue, settings)
        schedules = [(replace(s, every_s=SWEEP_EVERY_S), sweep) for s in schedule_sources(template)]
        for url in {moto_stack.stack.queue_urls[p.source.queue] for p in pollers}:
            clients.sqs.set_queue_attributes(QueueUrl=url, Attributes={"VisibilityTimeout": VISIBILITY_S})
        with LiveServer(create_app(ports)) as server, RunningStack(pollers, schedules):
            yield FullStack(url=server.url, moto=moto_stack)
    finally:
        moto_stack.moto.stop()


@pytest.mark.chaos
def test_200_calls_with_duplicates_reordering_and_a_failing_ai_lose_nothing_and_all_finish(
    full_stack: FullStack, tmp_path: Path
) -> None:
    """With LOCAL_FAULTS set (the chaos pass of `make test`), moto fails as AWS does under stress too."""
    out = tmp_path / "report.json"
    argv = ["--base-url", full_stack.url, "--calls", "200", "--packets", "20", "--interval-ms", "0"]
    argv += ["--duplicate-rate", "0.1", "--reorder-rate", "0.1", "--late-rate", "0", "--skip-rate", "0"]
    argv += ["--connections", "24", "--timeout", "60", "--seed", "4", "--quiet", "--json", str(out)]

    code = main(argv)

    report = json.loads(out.read_text())
    summary = {k: v for k, v in report.items() if k not in ("lost_by_call", "latency_ms")}
    assert report["lost_packets"] == 0, summary
    assert report["server_errors"] == 0, summary  # no answer but 2xx, 4xx and 503, no connection error
    assert report["responses"]["other"] == report["end_responses"]["other"] == 0, summary
    assert report["responses"]["409"] == report["responses"]["4xx"] == 0, summary
    ended = report["end_responses"]["202"] + report["end_responses"]["200"]
    assert ended + report["end_responses"]["503"] == 200, summary  # every end answered, or it gave up on 503s
    assert report["stuck_calls"] == 0, summary  # every ended call COMPLETED or FAILED in time
    assert report["in_progress_after_end"] == 0, summary
    assert report["failed_without_reason"] == 0, summary
    assert report["inconsistent_calls"] == 0, summary
    assert report["unverified_calls"] == 0, summary
    finished = report["final_states"].get("COMPLETED", 0) + report["final_states"].get("FAILED", 0)
    assert finished >= ended, summary
    assert code == 0, summary
    if os.environ.get("LOCAL_FAULTS"):
        faults = httpx.get(f"{full_stack.moto.moto.endpoint}/_local_faults", timeout=10).json()
        assert faults["enabled"], faults
        assert faults["faulted"] > 0, faults


BATCHED_CALLS, BATCHED_PACKETS = 10, 60


@pytest.mark.parametrize("full_stack", [{"AI_FAILURE_RATE": "0"}], indirect=True)
def test_batches_of_200_ms_lose_nothing_and_every_call_completes_in_a_tenth_of_the_requests(
    full_stack: FullStack, tmp_path: Path
) -> None:
    out = tmp_path / "report.json"
    # Paced at 20 ms a packet, as a PBX streams: a batch of 10 packets every 200 ms per call.
    argv = ["--base-url", full_stack.url, "--calls", str(BATCHED_CALLS), "--packets", str(BATCHED_PACKETS)]
    argv += ["--batch-ms", "200", "--duplicate-rate", "0.1", "--reorder-rate", "0.1", "--late-rate", "0.05"]
    argv += ["--skip-rate", "0", "--timeout", "60", "--seed", "7", "--quiet", "--json", str(out)]

    code = main(argv)

    report = json.loads(out.read_text())
    summary = {k: v for k, v in report.items() if k not in ("lost_by_call", "latency_ms")}
    assert code == 0, summary
    assert report["lost_packets"] == report["unverified_calls"] == report["server_errors"] == 0, summary
    assert report["final_states"] == {"COMPLETED": BATCHED_CALLS}, summary
    sent = report["packets_sent"]
    assert sent > BATCHED_CALLS * BATCHED_PACKETS  # the planned duplicates went too
    # Each packet acknowledged: accepted once (or, its batch's 503 having hidden the write, a
    # duplicate when the batch was sent again), then duplicate.
    accepted = report["responses"]["202"]
    assert accepted + report["stored_without_202"] == BATCHED_CALLS * BATCHED_PACKETS, summary
    assert report["responses"]["200"] == sent - accepted, summary
    # Batches of 10 packets, but for the last of each call, which may be shorter.
    assert sent / 10 <= report["requests"] < sent / 10 + BATCHED_CALLS, summary
    # The stack's own view: every call COMPLETED, holding every packet, none missing.
    with httpx.Client(base_url=full_stack.url, timeout=30) as api:
        listed = get_retrying(api, "/v1/calls", {"state": "COMPLETED", "limit": 100}).json()["calls"]
        assert len(listed) == BATCHED_CALLS
        for item in listed:
            call = get_retrying(api, f"/v1/call/{item['call_id']}").json()
            assert call["packets"]["received"] == BATCHED_PACKETS, call["packets"]
            assert call["packets"]["missing"] == [], call["packets"]


class RecordingClient(Client):
    """The simulator's real HTTP client, keeping every answer it got."""

    def __init__(self, base_url: str) -> None:
        super().__init__(base_url, connections=4)
        self.answers: list[Answer] = []

    async def post(self, path: str, body: Any = None) -> Answer:
        answer = await super().post(path, body)
        self.answers.append(answer)
        return answer

    async def get(self, path: str, params: dict[str, Any] | None = None) -> Answer:
        answer = await super().get(path, params)
        self.answers.append(answer)
        return answer


def test_the_simulator_retries_the_apps_503_after_its_retry_after_then_gives_up(moto_stack: MotoStack) -> None:
    from ingest.app import create_app

    # GIVEN the real app whose DynamoDB is unreachable: every /v1 request is 503 + Retry-After
    dead = build_clients(endpoint_url=f"http://127.0.0.1:{free_port()}")
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    policy = RetryPolicy(max_retries=2, max_wait_s=5.0, fallback_s=0.1)
    # No duplicated or skipped packets: exactly 3 sends a call.
    no_mischief = Rates(duplicate=0.0, reorder=0.0, late=0.0, skip=0.0)
    options = Options(
        calls=2, packets=3, interval_s=0, wait=False, progress=False, retry=policy, rates=no_mischief, seed=1
    )
    with LiveServer(create_app(build_ports(moto_stack.settings(), dead))) as server:
        client = RecordingClient(server.url)
        try:
            # WHEN the simulator streams, ends and checks two calls
            report = asyncio.run(run(replace(options, base_url=server.url), transport=client, sleep=sleep))
        finally:
            client.close()

    # THEN each request was sent three times, waiting what each 503's Retry-After asked
    retried = [a for a in client.answers if a.status == 503]
    # packets, ends, the check's GETs and the service's counts
    assert len(retried) == len(client.answers) == 3 * (6 + 2 + 2 + 1)
    assert all(a.retry_after is not None and a.retry_after.isdigit() for a in retried)
    asked = {min(float(a.retry_after or 0), policy.max_wait_s) for a in retried}
    assert len(slept) == 2 * 11  # two waits per request: none after its last answer
    assert set(slept) <= asked  # as asked (capped), not the fallback backoff
    assert min(slept) >= 1
    # ... and gave up: counted, but nothing was acknowledged, so nothing is lost or unchecked
    d = report.to_dict()
    assert d["retries"] == 22
    assert d["gave_up"] == {"packets": 6, "ends": 2, "reads": 3}
    assert report.service_counts is None
    assert d["responses"]["503"] == 6
    assert d["end_responses"]["503"] == 2
    assert d["server_errors"] == 0
    assert report.ok, report.failures()

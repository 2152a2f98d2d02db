"""The PBX simulator's own logic: its plans, its arithmetic, its retries, and how it detects loss.

The retry tests run the simulator against an in-memory API (a fake transport) with an
injected sleep that only records the waits: nothing here sleeps or needs a server.
"""

from __future__ import annotations

import asyncio
import json
import random
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any
from urllib.parse import unquote

import pytest

from pbxsim.__main__ import parse_args
from pbxsim.http import Answer, TransportError
from pbxsim.plan import MAX_BATCH_PACKETS, Rates, batch_packets, batches, plan_call
from pbxsim.report import (
    CallOutcome,
    Report,
    lost_sequences,
    percentile,
    response_key,
    result_problems,
    stored_sequences,
)
from pbxsim.retry import Exchange, RetryPolicy, exchange, parse_retry_after
from pbxsim.runner import Options, run

NO_NOISE = Rates(duplicate=0, reorder=0, late=0, skip=0)


def test_percentile_is_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == 50
    assert percentile(values, 95) == 95
    assert percentile(values, 99) == 99
    assert percentile(values, 100) == 100
    assert percentile([7.0], 99) == 7.0
    assert percentile([], 50) is None


def test_stored_sequences_are_derived_from_the_packets_block() -> None:
    # stored: 2, 3, 5 (4 missing), last_sequence 7 adds 6 and 7 to missing
    block = {"received": 3, "highest_sequence": 5, "missing": [4, 6, 7], "missing_count": 3}
    assert stored_sequences(block, last_sequence=7) == {2, 3, 5}
    assert stored_sequences({"received": 0, "highest_sequence": None, "missing": []}, None) == set()


def test_a_truncated_missing_list_cannot_be_verified() -> None:
    with pytest.raises(ValueError, match="truncated"):
        stored_sequences({"received": 1, "highest_sequence": 5000, "missing": [1] * 1000, "missing_count": 4999}, None)


def test_lost_sequences_are_the_acknowledged_ones_not_reported_stored() -> None:
    block = {"received": 3, "highest_sequence": 3, "missing": [2], "missing_count": 1}
    assert lost_sequences({0, 1, 2, 3}, block, last_sequence=3) == {2}
    assert lost_sequences({0, 1, 3}, block, last_sequence=3) == set()


def test_a_plan_without_noise_sends_every_packet_once_in_order() -> None:
    plan = plan_call("c", 10, NO_NOISE, random.Random(1))
    assert [s.sequence for s in plan.sends] == list(range(10))
    assert plan.last_sequence == 9
    assert plan.skipped == frozenset()


def test_duplicates_send_each_packet_twice_with_the_same_data() -> None:
    plan = plan_call("c", 5, Rates(duplicate=1, reorder=0, late=0, skip=0), random.Random(1))
    assert [s.sequence for s in plan.sends] == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4]
    assert plan.sends[0] == plan.sends[1]


def test_skipped_packets_are_never_sent() -> None:
    plan = plan_call("c", 5, Rates(duplicate=0, reorder=0, late=0, skip=1), random.Random(1))
    assert plan.sends == []
    assert plan.skipped == frozenset(range(5))


def test_late_packets_go_last_and_reordering_keeps_every_packet() -> None:
    rng = random.Random(3)
    plan = plan_call("c", 50, Rates(duplicate=0, reorder=0.5, late=0.2, skip=0), rng)
    sequences = [s.sequence for s in plan.sends]
    assert sorted(sequences) == list(range(50))
    assert sequences != list(range(50))


def _exchange(*statuses: int | None) -> Exchange:
    """What a request's attempts got: each status in turn (None: no answer), every 503 but the last retried."""
    ex = Exchange(answers=[Answer(s, b"", 1.0) for s in statuses if s is not None])
    ex.waits_s = [1.0] * sum(1 for s in statuses[:-1] if s == 503)
    if statuses[-1] is None:
        ex.error = "refused"
    ex.gave_up = statuses[-1] == 503
    return ex


def test_report_counts_final_answers_retries_and_server_errors() -> None:
    report = Report()
    for statuses in [(202,), (503, 202), (200,), (409,), (422,), (413,), (503, 503), (500,), (None,), (204,)]:
        report.record("packets", _exchange(*statuses))
    report.record("ends", _exchange(503, 503, 202))
    report.record(
        "reads",
        _exchange(
            502,
        ),
    )
    d = report.to_dict()
    assert d["responses"] == {"202": 2, "200": 1, "2xx": 1, "409": 1, "4xx": 2, "503": 1, "other": 2}
    assert d["end_responses"]["202"] == 1
    assert d["retries"] == 4  # (503, 202), the first 503 of (503, 503), two in the end's
    assert d["gave_up"] == {"packets": 1, "ends": 0, "reads": 0}
    assert d["server_errors"] == 3  # the 500, the 502 of a read, and the request without an answer
    assert d["connection_errors"] == 1
    assert len(report.latencies_ms) == 15  # every answer, the retried 503s included
    assert not report.ok
    assert [response_key(s) for s in (None, 301, 503, 504, 201)] == ["other", "other", "503", "other", "2xx"]


def test_report_is_not_ok_when_a_packet_is_lost() -> None:
    report = Report()
    report.calls["c"] = CallOutcome(call_id="c", lost={4})
    assert report.lost_packets == 1
    assert report.to_dict()["lost_by_call"] == {"c": [4]}
    assert not report.ok
    report.calls["c"].lost = set()
    assert report.ok


@pytest.mark.parametrize("argv", [["--duplicate-rate", "1.5"], ["--calls", "0"], ["--skip-rate", "-0.1"]])
def test_cli_refuses_bad_options(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as excinfo:
        parse_args(argv)
    assert excinfo.value.code == 2


def test_cli_retry_options_make_the_policy() -> None:
    options, _ = parse_args(["--max-retries", "2", "--max-retry-wait", "0.5", "--retry-backoff", "0.01"])
    assert options.retry == RetryPolicy(max_retries=2, max_wait_s=0.5, fallback_s=0.01)
    assert parse_args([])[0].retry == RetryPolicy(max_retries=5, max_wait_s=5.0, fallback_s=0.1)
    with pytest.raises(SystemExit):
        parse_args(["--max-retries", "-1"])


# ---------------------------------------------------------------- retry policy


@pytest.mark.parametrize(
    ("header", "seconds"),
    [
        ("3", 3),
        (" 2 ", 2),
        ("0", 0),
        (None, None),
        ("", None),
        ("1.5", None),
        ("-1", None),
        ("\u0663", None),
        ("Wed, 21 Oct 2015 07:28:00 GMT", None),
    ],
)
def test_retry_after_is_read_as_whole_seconds_or_not_at_all(header: str | None, seconds: int | None) -> None:
    assert parse_retry_after(header) == seconds


def test_the_wait_honours_retry_after_up_to_the_cap_and_backs_off_without_it() -> None:
    policy = RetryPolicy(max_retries=5, max_wait_s=5.0, fallback_s=0.1)
    assert policy.wait_s("2", retry=1) == 2.0
    assert policy.wait_s("2", retry=4) == 2.0  # the server's number, not ours, while it gives one
    assert policy.wait_s("3600", retry=1) == 5.0
    assert [policy.wait_s(None, retry=n) for n in (1, 2, 3)] == pytest.approx([0.1, 0.2, 0.4])
    assert policy.wait_s("soon", retry=2) == pytest.approx(0.2)
    assert policy.wait_s(None, retry=10) == 5.0


class Script:
    """A transport whose answers are given in advance, one per attempt; it notes the sleeps."""

    def __init__(self, *answers: Answer | Exception) -> None:
        self.answers = list(answers)
        self.sent = 0
        self.slept: list[float] = []

    async def send(self) -> Answer:
        self.sent += 1
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)


def _503(retry_after: str | None = "1") -> Answer:
    return Answer(503, b"{}", 1.0, retry_after)


def test_a_503_is_retried_after_its_retry_after_capped_until_another_answer() -> None:
    script = Script(_503("2"), _503("30"), _503(None), Answer(202, b"{}", 1.0))
    result = asyncio.run(
        exchange(script.send, RetryPolicy(max_retries=5, max_wait_s=5.0, fallback_s=0.1), script.sleep)
    )
    assert result.status == 202
    assert script.slept == [2.0, 5.0, pytest.approx(0.4)]  # as asked, capped, and the third retry's backoff
    assert result.retries == 3
    assert not result.gave_up


def test_a_request_gives_up_after_max_retries() -> None:
    script = Script(*[_503() for _ in range(10)])
    result = asyncio.run(exchange(script.send, RetryPolicy(max_retries=3), script.sleep))
    assert script.sent == 4  # the first attempt and three retries
    assert result.gave_up
    assert result.status == 503
    assert result.retries == 3
    assert script.slept == [1.0, 1.0, 1.0]

    once = Script(_503(), Answer(202, b"", 1.0))
    assert asyncio.run(exchange(once.send, RetryPolicy(max_retries=0), once.sleep)).gave_up
    assert once.sent == 1


@pytest.mark.parametrize("answer", [Answer(500, b"", 1.0), Answer(409, b"", 1.0), TransportError("reset")])
def test_only_503_is_retried(answer: Answer | Exception) -> None:
    script = Script(answer, Answer(202, b"", 1.0))
    result = asyncio.run(exchange(script.send, RetryPolicy(), script.sleep))
    assert script.sent == 1
    assert script.slept == []
    assert not result.gave_up
    assert result.status == (None if isinstance(answer, Exception) else answer.status)


# ---------------------------------------------------------------- the whole run, against a fake API


Fault = Callable[[str, str, dict[str, Any] | None], str | None]


class FakeApi:
    """The HTTP API in memory, as a transport. ``fault(method, path, body)`` may answer for it:

    "503" (nothing stored), "503-after-store" (the write happens, the answer says 503),
    "ack-and-drop" (202, nothing stored), "200-no-store" (200 duplicate, nothing stored),
    None (behave). A batch's fault applies to each of its packets.
    """

    def __init__(self, fault: Fault | None = None, end_to: str = "COMPLETED", reason: str | None = None) -> None:
        self.fault = fault or (lambda method, path, body: None)
        self.end_to, self.reason = end_to, reason
        self.packets: dict[str, set[int]] = {}
        self.calls: dict[str, dict[str, Any]] = {}
        self.batches: list[list[int]] = []  # the sequences of each batch request, attempts included

    def store(self, call_id: str, seq: int, action: str | None) -> int:
        """One packet's status, as the single route answers it."""
        if action in ("ack-and-drop", "200-no-store"):
            return 202 if action == "ack-and-drop" else 200
        stored = self.packets.setdefault(call_id, set())
        status = 200 if seq in stored else 202
        stored.add(seq)
        self.calls.setdefault(call_id, {"state": "IN_PROGRESS", "last_sequence": None})
        return status

    async def post(self, path: str, body: Any = None) -> Answer:
        action = self.fault("POST", path, body)
        parts = path.strip("/").split("/")
        if parts[-1] == "batch":
            self.batches.append([p["sequence"] for p in body["packets"]])
        if action == "503":
            return _503()
        if parts[2] == "stream" and parts[-1] == "batch":
            statuses = [(p["sequence"], self.store(parts[3], p["sequence"], action)) for p in body["packets"]]
            results = [{"sequence": q, "status": "accepted" if s == 202 else "duplicate"} for q, s in statuses]
            ack = json.dumps({"call_id": parts[3], "results": results}).encode()
            return _503() if action == "503-after-store" else Answer(200, ack, 1.0)
        if parts[2] == "stream":
            status = self.store(parts[3], body["sequence"], action)
            return _503() if action == "503-after-store" else Answer(status, b"{}", 1.0)
        call = self.calls[parts[2]]
        call["last_sequence"] = body["last_sequence"]
        call["state"] = self.end_to
        return Answer(202, b"{}", 1.0)

    async def get(self, path: str, params: dict[str, Any] | None = None) -> Answer:
        action = self.fault("GET", path, params)
        if action == "503":
            return _503()
        now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        if path == "/v1/calls/counts":
            states = Counter(c["state"] for c in self.calls.values())
            counts = [{"state": s, "count": states[s], "more": False} for s in ("IN_PROGRESS", "COMPLETED", "FAILED")]
            return Answer(200, json.dumps({"counts": counts}).encode(), 1.0)
        if path == "/v1/calls":
            assert params is not None
            listed = [{"call_id": c, "updated_at": now} for c, v in self.calls.items() if v["state"] == params["state"]]
            return Answer(200, json.dumps({"calls": listed, "next_cursor": None}).encode(), 1.0)
        call_id = unquote(path.rsplit("/", 1)[1])
        if call_id not in self.calls:
            return Answer(404, b"{}", 1.0)
        return Answer(200, json.dumps(self.call_body(call_id)).encode(), 1.0)

    def call_body(self, call_id: str) -> dict[str, Any]:
        call, stored = self.calls[call_id], sorted(self.packets.get(call_id, set()))
        upper = max([*stored, call["last_sequence"] or 0])
        missing = [s for s in range(stored[0], upper + 1) if s not in stored] if stored else []
        completed = call["state"] == "COMPLETED"
        return {
            "call_id": call_id,
            "state": call["state"],
            "updated_at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
            "last_sequence": call["last_sequence"],
            "packets": {
                "received": len(stored),
                "highest_sequence": stored[-1] if stored else None,
                "missing": missing,
                "missing_count": len(missing),
            },
            "ai": {
                "attempts": 1 if call["state"] in ("COMPLETED", "FAILED") else 0,
                "history": [{"round": 1, "number": 1, "started_at": "t", "error": None if completed else "x"}]
                if call["state"] in ("COMPLETED", "FAILED")
                else [],
                "transcript": "hello" if completed else None,
                "sentiment": {"label": "NEUTRAL", "score": 0.0} if completed else None,
            },
            "failure_reason": self.reason if call["state"] == "FAILED" else None,
        }


def _simulate(
    api: FakeApi,
    packets: int = 3,
    *,
    policy: RetryPolicy | None = None,
    batch: int = 0,
    rates: Rates = NO_NOISE,
    interval_s: float = 0,
) -> tuple[Report, list[float]]:
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    options = Options(
        calls=1,
        packets=packets,
        interval_s=interval_s,
        rates=rates,
        prefix="t",
        progress=False,
        timeout_s=0 if api.end_to == "IN_PROGRESS" else 60,  # the fake never finishes such a call
        retry=policy or RetryPolicy(),
        batch=batch,
    )
    return asyncio.run(run(options, transport=api, sleep=sleep)), slept


def _actions(method: str, path: str, actions: list[str], sequence: int | None = None) -> Fault:
    """``actions`` for the first requests that match, one each; then none."""
    left = list(actions)

    def fault(m: str, p: str, body: dict[str, Any] | None) -> str | None:
        if not left or m != method or p != path or (sequence is not None and (body or {}).get("sequence") != sequence):
            return None
        return left.pop(0)

    return fault


def _once(method: str, path: str, action: str, sequence: int | None = None) -> Fault:
    return _actions(method, path, [action], sequence)


def test_a_200_duplicate_after_a_503_counts_as_stored_not_lost() -> None:
    # The 503 hid a committed write: the retry finds packet 1 stored and gets 200 duplicate.
    api = FakeApi(_once("POST", "/v1/call/stream/t-0", "503-after-store", sequence=1))
    report, slept = _simulate(api)
    assert report.ok, report.failures()
    assert report.calls["t-0"].acknowledged == {0, 1, 2}
    assert report.lost_packets == 0
    assert report.stored_without_202 == 1
    assert report.retries == 1
    assert slept == [1.0]  # Retry-After: 1
    assert report.to_dict()["responses"]["200"] == 1


def test_a_200_duplicate_after_a_503_is_checked_like_a_202() -> None:
    # A stack that answers 503, then 200 duplicate to the retry, but never stored the
    # packet: the simulator expects sequence 1 in the GET, and reports it lost.
    api = FakeApi(_actions("POST", "/v1/call/stream/t-0", ["503", "200-no-store"], sequence=1))
    report, _ = _simulate(api)
    assert report.calls["t-0"].acknowledged == {0, 1, 2}
    assert report.lost_packets == 1
    assert report.to_dict()["lost_by_call"] == {"t-0": [1]}
    assert not report.ok


def test_a_202_for_a_packet_the_stack_did_not_store_is_a_loss() -> None:
    report, _ = _simulate(FakeApi(_actions("POST", "/v1/call/stream/t-0", ["ack-and-drop"], sequence=1)))
    assert report.lost_packets == 1
    assert not report.ok


def test_a_503_that_stored_nothing_is_retried_to_a_202() -> None:
    api = FakeApi(_once("POST", "/v1/call/stream/t-0", "503", sequence=2))
    report, _ = _simulate(api)
    assert report.ok, report.failures()
    assert report.stored_without_202 == 0
    assert report.calls["t-0"].accepted == {0, 1, 2}


def test_a_packet_that_gave_up_is_reported_but_does_not_fail_the_run() -> None:
    def always_503_for_seq_1(method: str, path: str, body: dict[str, Any] | None) -> str | None:
        return "503" if method == "POST" and (body or {}).get("sequence") == 1 else None

    report, slept = _simulate(FakeApi(always_503_for_seq_1), policy=RetryPolicy(max_retries=2))
    assert report.to_dict()["gave_up"] == {"packets": 1, "ends": 0, "reads": 0}
    assert report.to_dict()["responses"]["503"] == 1
    assert slept == [1.0, 1.0]
    assert report.lost_packets == 0  # never acknowledged, so not expected: reported missing by the stack
    assert report.ok


def test_an_end_answered_503_is_retried() -> None:
    report, _ = _simulate(FakeApi(_once("POST", "/v1/call/t-0/end", "503")))
    assert report.calls["t-0"].end_status == 202
    assert report.retries == 1
    assert report.stuck_calls == 0
    assert report.ok, report.failures()


def test_a_check_that_gives_up_leaves_the_call_unverified_and_fails_the_run() -> None:
    def check_unavailable(method: str, path: str, body: dict[str, Any] | None) -> str | None:
        return "503" if method == "GET" and path == "/v1/call/t-0" else None

    report, _ = _simulate(FakeApi(check_unavailable), policy=RetryPolicy(max_retries=1))
    assert report.unverified_calls == 1
    assert report.calls["t-0"].verify_error == "GET answered 503 after 1 retries"
    assert not report.ok


def test_a_call_with_nothing_acknowledged_has_nothing_to_check() -> None:
    def unavailable(method: str, path: str, body: dict[str, Any] | None) -> str | None:
        return "503"

    report, slept = _simulate(FakeApi(unavailable), policy=RetryPolicy(max_retries=1))
    # Reads: the call's GET, which gave up too but hid nothing, and the service's counts.
    assert report.to_dict()["gave_up"] == {"packets": 3, "ends": 1, "reads": 2}
    assert report.unverified_calls == 0
    assert report.stuck_calls == 0
    assert report.service_counts is None
    assert report.ok
    assert slept == [1.0] * 6


def test_the_report_ends_with_the_services_own_counts_by_state() -> None:
    api = FakeApi(end_to="FAILED", reason="AI processing gave up after 1 attempt")
    api.calls["earlier"] = {"state": "COMPLETED", "last_sequence": 0}  # a call of an earlier run
    report, _ = _simulate(api)
    assert report.to_dict()["service_calls_by_state"] == {
        "IN_PROGRESS": {"count": 0, "more": False},
        "COMPLETED": {"count": 1, "more": False},
        "FAILED": {"count": 1, "more": False},
    }
    assert report.to_dict()["final_states"] == {"FAILED": 1}  # this run's calls only


def test_a_call_left_in_progress_after_its_end_is_stuck_and_fails_the_run() -> None:
    report, _ = _simulate(FakeApi(end_to="IN_PROGRESS"))
    assert report.in_progress_after_end == 1
    assert report.stuck_calls == 1
    assert "1 calls IN_PROGRESS after their end" in report.failures()
    assert report.to_dict()["problems_by_call"] == {"t-0": ["IN_PROGRESS after its end was answered"]}


def test_a_failed_call_needs_a_reason() -> None:
    report, _ = _simulate(FakeApi(end_to="FAILED", reason=None))
    assert report.failed_without_reason == 1
    assert not report.ok
    report, _ = _simulate(FakeApi(end_to="FAILED", reason="AI processing gave up after 1 attempt"))
    assert report.ok, report.failures()


# ---------------------------------------------------------------- batches (--batch-ms)


@pytest.mark.parametrize(
    ("batch_ms", "packet_ms", "packets"),
    [
        (200, 20, 10),
        (1000, 20, 50),
        (5000, 20, 50),  # the API's most a batch may hold
        (20, 20, 1),
        (5, 20, 1),  # less than a packet is still one
        (50, 20, 3),  # 2.5, rounded half up
        (30, 20, 2),
        (200, 10, 20),
        (200, 7, 29),
    ],
)
def test_a_batch_holds_the_packets_of_its_audio_within_1_to_50(batch_ms: float, packet_ms: float, packets: int) -> None:
    assert batch_packets(batch_ms, packet_ms) == packets


@pytest.mark.parametrize(
    ("batch_ms", "packet_ms"), [(0, 20), (-200, 20), (200, 0), (float("nan"), 20), (float("inf"), 20)]
)
def test_a_batch_size_needs_positive_finite_durations(batch_ms: float, packet_ms: float) -> None:
    with pytest.raises(ValueError, match="positive"):
        batch_packets(batch_ms, packet_ms)


def test_the_batch_limit_is_the_apis() -> None:
    from ingest.schemas import MAX_BATCH_PACKETS as API_MAX_BATCH_PACKETS

    assert MAX_BATCH_PACKETS == API_MAX_BATCH_PACKETS


def test_batches_cut_the_planned_order_into_consecutive_requests_the_last_shorter() -> None:
    plan = plan_call("c", 25, Rates(duplicate=0.3, reorder=0.3, late=0.2, skip=0), random.Random(5))
    cut = batches(plan.sends, 10)
    assert [len(b) for b in cut[:-1]] == [10] * (len(cut) - 1)
    assert 1 <= len(cut[-1]) <= 10
    assert len(cut) == -(-len(plan.sends) // 10)
    assert [s for b in cut for s in b] == plan.sends  # duplicates and reordering as planned
    assert batches(plan.sends, 1000) == [plan.sends]
    assert batches([], 10) == []
    with pytest.raises(ValueError, match="at least one"):
        batches(plan.sends, 0)


@pytest.mark.parametrize(
    ("argv", "batch"),
    [
        ([], 0),
        (["--batch-ms", "0"], 0),
        (["--batch-ms", "200"], 10),
        (["--batch-ms", "1000"], 50),
        (["--batch-ms", "60000"], 50),
        (["--batch-ms", "5"], 1),
        (["--batch-ms", "200", "--interval-ms", "10"], 20),
        (["--batch-ms", "200", "--interval-ms", "0"], 10),  # unpaced packets hold 20 ms, as their timestamps say
    ],
)
def test_cli_batch_ms_sets_the_packets_per_request(argv: list[str], batch: int) -> None:
    assert parse_args(argv)[0].batch == batch


@pytest.mark.parametrize("value", ["-1", "nan", "inf", "ten"])
def test_cli_refuses_a_batch_ms_that_is_not_a_duration(value: str) -> None:
    with pytest.raises(SystemExit) as excinfo:
        parse_args(["--batch-ms", value])
    assert excinfo.value.code == 2


def _batch_answer(*results: tuple[int, str]) -> Answer:
    body = {"call_id": "c", "results": [{"sequence": q, "status": s} for q, s in results]}
    return Answer(200, json.dumps(body).encode(), 1.0)


def test_each_packet_of_a_batch_counts_its_result_as_the_single_routes_answer() -> None:
    report = Report()
    outcome = report.calls["c"] = CallOutcome(call_id="c")
    answer = _batch_answer((0, "accepted"), (1, "duplicate"), (2, "conflict"), (3, "ended"), (0, "duplicate"))
    keys = report.record_batch(Exchange(answers=[_503(), answer], waits_s=[1.0]), [0, 1, 2, 3, 0])
    for sequence, key in zip([0, 1, 2, 3, 0], keys, strict=True):
        outcome.answered(sequence, key)

    assert keys == ["202", "200", "409", "409", "200"]
    assert outcome.acknowledged == {0, 1}  # accepted and duplicate; conflict and ended are not stored
    assert outcome.accepted == {0}
    report.packets_sent = 5
    d = report.to_dict()
    assert d["responses"] == {"202": 1, "200": 2, "2xx": 0, "409": 2, "4xx": 0, "503": 0, "other": 0}
    assert (d["requests"], d["packets_sent"], d["packets_per_request"]) == (1, 5, 5.0)
    assert d["retries"] == 1
    assert d["server_errors"] == 0
    assert report.ok


@pytest.mark.parametrize(
    ("statuses", "key", "gave_up", "server_errors"),
    [
        ((503, 503), "503", 1, 0),  # the retries were used up
        ((413,), "4xx", 0, 0),
        ((422,), "4xx", 0, 0),
        ((500,), "other", 0, 1),
        ((503, None), "other", 0, 1),  # the retry got no answer
    ],
)
def test_a_batch_without_results_counts_its_final_answer_for_each_packet(
    statuses: tuple[int | None, ...], key: str, gave_up: int, server_errors: int
) -> None:
    report = Report()
    keys = report.record_batch(_exchange(*statuses), [4, 5, 6])
    assert keys == [key] * 3
    d = report.to_dict()
    assert d["responses"][key] == 3
    assert d["requests"] == 1
    assert d["gave_up"] == {"packets": gave_up, "ends": 0, "reads": 0}  # a request, however many packets
    assert d["server_errors"] == server_errors


@pytest.mark.parametrize(
    "answer",
    [
        _batch_answer((0, "accepted"), (2, "accepted"), (1, "accepted")),  # not in request order
        _batch_answer((0, "accepted"), (1, "accepted")),  # one result short
        _batch_answer((0, "accepted"), (1, "accepted"), (2, "stored")),  # not a status of the API
        Answer(200, b"{}", 1.0),
        Answer(200, b"not json", 1.0),
    ],
)
def test_a_batch_200_that_does_not_answer_its_packets_acknowledges_none_and_is_a_server_error(answer: Answer) -> None:
    report = Report()
    assert report.record_batch(Exchange(answers=[answer]), [0, 1, 2]) == ["other"] * 3
    assert report.server_errors == 1
    assert not report.ok


def test_a_batched_run_sends_the_planned_order_in_requests_of_the_batch_size() -> None:
    api = FakeApi()
    report, _ = _simulate(api, packets=25, batch=10)
    assert api.batches == [list(range(10)), list(range(10, 20)), list(range(20, 25))]
    assert report.calls["t-0"].acknowledged == report.calls["t-0"].accepted == set(range(25))
    d = report.to_dict()
    assert (d["requests"], d["packets_sent"], d["packets_per_request"]) == (3, 25, 8.33)
    assert d["responses"]["202"] == 25
    assert report.ok, report.failures()


def test_batches_carry_the_planned_duplicates() -> None:
    api = FakeApi()
    report, _ = _simulate(api, packets=10, batch=4, rates=Rates(duplicate=1, reorder=0, late=0, skip=0))
    assert api.batches == [[0, 0, 1, 1], [2, 2, 3, 3], [4, 4, 5, 5], [6, 6, 7, 7], [8, 8, 9, 9]]
    d = report.to_dict()
    assert (d["responses"]["202"], d["responses"]["200"], d["requests"]) == (10, 10, 5)
    assert report.ok, report.failures()


def test_a_batch_answered_503_is_sent_again_whole() -> None:
    api = FakeApi(_once("POST", "/v1/call/stream/t-0/batch", "503"))
    report, slept = _simulate(api, packets=5, batch=3)
    assert api.batches == [[0, 1, 2], [0, 1, 2], [3, 4]]
    assert slept == [1.0]  # Retry-After: 1
    d = report.to_dict()
    assert (d["retries"], d["requests"], d["responses"]["202"]) == (1, 2, 5)
    assert report.ok, report.failures()


def test_a_batch_whose_503_hid_its_writes_is_acknowledged_by_the_duplicates_of_its_resend() -> None:
    api = FakeApi(_once("POST", "/v1/call/stream/t-0/batch", "503-after-store"))
    report, _ = _simulate(api, packets=5, batch=3)
    assert report.calls["t-0"].acknowledged == {0, 1, 2, 3, 4}
    assert report.stored_without_202 == 3
    assert report.to_dict()["responses"]["200"] == 3
    assert report.ok, report.failures()


def test_a_batch_that_gave_up_acknowledged_nothing_and_does_not_fail_the_run() -> None:
    def first_batch_unavailable(method: str, path: str, body: dict[str, Any] | None) -> str | None:
        return "503" if path.endswith("/batch") and (body or {})["packets"][0]["sequence"] == 0 else None

    report, slept = _simulate(FakeApi(first_batch_unavailable), packets=5, batch=3, policy=RetryPolicy(max_retries=2))
    assert report.calls["t-0"].acknowledged == {3, 4}
    d = report.to_dict()
    assert d["gave_up"] == {"packets": 1, "ends": 0, "reads": 0}
    assert d["responses"]["503"] == 3
    assert slept == [1.0, 1.0]
    assert report.lost_packets == 0
    assert report.ok, report.failures()


@pytest.mark.parametrize("action", ["ack-and-drop", "200-no-store"])
def test_a_batch_result_for_a_packet_the_stack_did_not_store_is_a_loss(action: str) -> None:
    report, _ = _simulate(FakeApi(_once("POST", "/v1/call/stream/t-0/batch", action)), packets=5, batch=3)
    assert report.calls["t-0"].lost == {0, 1, 2}
    assert report.lost_packets == 3
    assert not report.ok


def test_a_batch_waits_for_its_packets_intervals() -> None:
    _, slept = _simulate(FakeApi(), packets=25, batch=10, interval_s=0.02)
    assert slept == pytest.approx([0.2, 0.2, 0.1])


# ---------------------------------------------------------------- one result per round


def _call(state: str, history: list[tuple[int, str | None]], **over: Any) -> dict[str, Any]:
    completed = state == "COMPLETED"
    body: dict[str, Any] = {
        "state": state,
        "failure_reason": None,
        "ai": {
            "attempts": len(history),
            "history": [
                {"round": r, "number": i + 1, "started_at": "t", "error": e} for i, (r, e) in enumerate(history)
            ],
            "transcript": "hi" if completed else None,
            "sentiment": {"label": "NEUTRAL", "score": 0.0} if completed else None,
        },
    }
    for key, value in over.items():
        (body["ai"] if key in body["ai"] else body)[key] = value
    return body


def test_consistent_calls_have_no_problems() -> None:
    assert result_problems(_call("COMPLETED", [(1, "HTTP 503"), (1, None)])) == []
    # A round-1 attempt interrupted by a reverted end, then the client's second end: round 2.
    assert result_problems(_call("COMPLETED", [(1, None), (2, "HTTP 503"), (2, None)])) == []
    reason = "AI processing gave up after all retries (2 attempts; last error: HTTP 503 from the AI service)"
    assert result_problems(_call("FAILED", [(1, "e"), (1, "e")], failure_reason=reason)) == []
    permanent = "AI failed permanently on attempt 1: cannot be decoded"
    assert result_problems(_call("FAILED", [(1, "cannot be decoded")], failure_reason=permanent)) == []
    assert result_problems(_call("PROCESSING_AI", [(1, "e")])) == []
    assert result_problems(_call("IN_PROGRESS", [])) == []


@pytest.mark.parametrize(
    ("call", "problem"),
    [
        (_call("COMPLETED", [(1, None)], transcript=None), "COMPLETED without a transcript"),
        (_call("COMPLETED", []), "COMPLETED without any AI attempt"),
        (_call("COMPLETED", [(1, None), (2, "e")]), "every attempt of round 2 failed"),
        (_call("COMPLETED", [(1, None)], failure_reason="x"), "COMPLETED with a failure_reason"),
        (_call("COMPLETED", [(1, None)], attempts=2), "ai.attempts is 2"),
        (_call("COMPLETED", [(2, "e"), (1, None)]), "non-decreasing"),
        (_call("FAILED", [(1, "e")], transcript="t", failure_reason="r"), "FAILED with an AI result"),
        (_call("FAILED", [(1, "e")], failure_reason="gave up after all retries (3 attempts; x)"), "reason says 3"),
        (_call("FAILED", [(1, "e"), (2, "e")], failure_reason="gave up after 2 attempts"), "reason says 2"),
        (_call("FAILED", [(1, None)], failure_reason="failed permanently on attempt 1: x"), "names attempt 1"),
        (_call("PROCESSING_AI", [(1, None)], transcript="t"), "PROCESSING_AI with an AI result"),
    ],
)
def test_contradictions_between_state_result_and_history_are_found(call: dict[str, Any], problem: str) -> None:
    assert any(problem in p for p in result_problems(call)), result_problems(call)

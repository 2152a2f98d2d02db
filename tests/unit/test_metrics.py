"""The metrics each function emits, read back from the EMF lines they print."""

from __future__ import annotations

import io
import json
import logging
from collections import Counter
from typing import Any

import pytest

import ai_worker.dlq
import ai_worker.handler
import ai_worker.sweeper
from ai_worker.handler import WorkerDeps
from callcore import services
from callcore.domain.errors import PermanentAIError, RetryableAIError
from callcore.domain.model import Packet, WorkItem
from callcore.metrics import NAMESPACE, FunctionMetrics, Metric
from callcore.settings import Settings
from tests.fakes import FakeAIProvider, FakeQueue, InMemoryCallStore, InMemoryRecordingStore


def emf_lines(capsys: pytest.CaptureFixture[str]) -> list[dict[str, Any]]:
    return [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith('{"_aws"')]


def totals(lines: list[dict[str, Any]], function: str) -> Counter[str]:
    """Each metric's sum over the lines of ``function`` (EMF keeps a line's values as a list)."""
    sums: Counter[str] = Counter()
    for line in lines:
        if line.get("function") != function:
            continue
        for name in (m["Name"] for d in line["_aws"]["CloudWatchMetrics"] for m in d["Metrics"]):
            values = line[name] if isinstance(line[name], list) else [line[name]]
            sums[name] += sum(values)
    return sums


def test_a_flush_writes_one_emf_line_in_the_namespace_dimensioned_by_function(
    capsys: pytest.CaptureFixture[str],
) -> None:
    metrics = FunctionMetrics("SomeFunction")
    metrics.flush()  # nothing counted: nothing written
    assert emf_lines(capsys) == []

    metrics.count(Metric.PACKETS_ACCEPTED)
    metrics.count(Metric.PACKETS_ACCEPTED, 2)
    metrics.count(Metric.PACKETS_REFUSED, 0)  # zero is not a data point
    metrics.milliseconds(Metric.AI_LATENCY, 12.5)
    metrics.flush()
    metrics.count(Metric.CALLS_ENDED)
    metrics.flush()

    first, second = emf_lines(capsys)
    (directive,) = first["_aws"]["CloudWatchMetrics"]
    assert directive["Namespace"] == NAMESPACE
    assert ["function", "service"] in [sorted(d) for d in directive["Dimensions"]]
    assert {m["Name"]: m["Unit"] for m in directive["Metrics"]} == {
        "PacketsAccepted": "Count",
        "AiLatency": "Milliseconds",
    }
    assert (first["function"], first["PacketsAccepted"], first["AiLatency"]) == ("SomeFunction", [1.0, 2.0], [12.5])
    assert (second["function"], second["CallsEnded"]) == ("SomeFunction", [1.0])
    assert "PacketsAccepted" not in second


def ended(store: InMemoryCallStore, queue: FakeQueue, call_id: str) -> WorkItem:
    services.record_packet(store, call_id, Packet(sequence=0, data="aGVsbG8=", timestamp=1.0))
    services.end_call(store, queue, call_id)
    return queue.sent[-1]


def sqs_event(*items: WorkItem, receive_count: int = 1) -> dict[str, Any]:
    return {
        "Records": [
            {
                "messageId": f"m{i}",
                "receiptHandle": f"r{i}",
                "body": json.dumps(item.to_dict()),
                "attributes": {"ApproximateReceiveCount": str(receive_count)},
                "messageAttributes": {},
                "eventSource": "aws:sqs",
                "eventSourceARN": "arn:aws:sqs:us-east-1:000000000000:WorkQueue",
            }
            for i, item in enumerate(items)
        ]
    }


def test_the_worker_counts_ai_attempts_by_outcome_and_times_them(capsys: pytest.CaptureFixture[str]) -> None:
    store, queue = InMemoryCallStore(), FakeQueue()
    items = [ended(store, queue, c) for c in ("ok", "busy", "broken")]
    ai = FakeAIProvider(script={"busy": [RetryableAIError("503", status=503)], "broken": [PermanentAIError("no")]})
    deps = WorkerDeps(settings=Settings(), store=store, ai=ai, queue=queue, recordings=InMemoryRecordingStore())
    capsys.readouterr()

    ai_worker.handler.build_handler(deps)(sqs_event(*items), None)

    lines = emf_lines(capsys)
    assert len(lines) == 1  # one line an invocation
    sums = totals(lines, "AiWorkerFunction")
    assert {k: sums[k] for k in ("AiAttempts", "AiSuccesses", "AiRetryableFailures", "AiPermanentFailures")} == {
        "AiAttempts": 3,
        "AiSuccesses": 1,
        "AiRetryableFailures": 1,
        "AiPermanentFailures": 1,
    }
    # One latency per provider call: three transcriptions and the one sentiment that followed.
    assert len(lines[0]["AiLatency"]) == 4


def test_the_dead_letter_handler_counts_the_calls_it_failed(capsys: pytest.CaptureFixture[str]) -> None:
    store, queue = InMemoryCallStore(), FakeQueue()
    item = ended(store, queue, "exhausted")
    capsys.readouterr()

    ai_worker.dlq.build_handler(store)(sqs_event(item, item), None)  # the second finds it FAILED already

    assert totals(emf_lines(capsys), "DlqHandlerFunction")["CallsDeadLettered"] == 1


def test_the_sweeper_counts_resends_calls_past_the_horizon_and_archives(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    store, queue = InMemoryCallStore(), FakeQueue()
    ended(store, queue, "silent")
    # Everything happened long ago: past the retry horizon, and past ArchiveAfterDays.
    monkeypatch.setattr(services, "seconds_since", lambda iso: Settings().processing_timeout_s + 1)
    monkeypatch.setattr(services, "iso_seconds_ago", lambda seconds: "9999-01-01T00:00:00.000000Z")
    capsys.readouterr()

    ai_worker.sweeper.build_handler(store, queue, Settings())({}, None)

    sums = totals(emf_lines(capsys), "SweeperFunction")
    assert (sums["WorkItemsResent"], sums["CallsPastRetryHorizon"]) == (1, 1)


def test_the_shared_packages_lines_about_a_call_carry_its_call_id_and_round_as_fields(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    store, queue = InMemoryCallStore(), FakeQueue()
    ended(store, queue, "silent")
    monkeypatch.setattr(services, "seconds_since", lambda iso: Settings().processing_timeout_s + 1)
    monkeypatch.setattr(services, "iso_seconds_ago", lambda seconds: "9999-01-01T00:00:00.000000Z")
    # The handler the functions gave the shared package's logger (its stream was fixed at import).
    (handler,) = [h for h in logging.getLogger("callcore").handlers if type(h) is logging.StreamHandler]
    written = io.StringIO()
    previous = handler.setStream(written)
    try:
        ai_worker.sweeper.build_handler(store, queue, Settings())({}, None)
    finally:
        handler.setStream(previous)

    lines = [json.loads(line) for line in written.getvalue().splitlines()]
    resend = [line for line in lines if "sending it again" in line["message"]]
    assert len(resend) == 1, lines
    assert (resend[0]["call_id"], resend[0]["round"], resend[0]["level"]) == ("silent", 1, "WARNING")

"""The AI half of the pipeline with fakes: process_call, the DLQ's fail_exhausted, operator
retry, the sweep for lost work items, and the worker, DLQ and sweeper Lambda handlers
driven with events in Lambda's SQS shape."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest

import ai_worker.dlq
import ai_worker.handler
import ai_worker.sweeper
from ai_worker.handler import WorkerDeps
from callcore import services
from callcore.domain.errors import (
    CallNotFoundError,
    DependencyUnavailableError,
    InvalidTransitionError,
    PermanentAIError,
    RetryableAIError,
)
from callcore.domain.model import Call, CallState, Packet, Sentiment, WorkItem
from callcore.domain.retry import backoff_delay
from callcore.services import ProcessOutcome
from callcore.settings import Settings
from tests.fakes import FakeAIProvider, FakeQueue, InMemoryCallStore

QUEUE_ARN = "arn:aws:sqs:us-east-1:123456789012:WorkQueue"
SETTINGS = Settings(retry_base_delay_s=2.0, retry_max_delay_s=60.0, max_receive_count=5)

Handler = Callable[[dict[str, Any], Any], dict[str, Any]]


def retryable(message: str = "mock AI service answered HTTP 503 Service Unavailable") -> RetryableAIError:
    return RetryableAIError(message, status=503)


def ended_call(store: InMemoryCallStore, queue: FakeQueue, call_id: str, *data: str) -> WorkItem:
    """A call with packets, ended: PROCESSING_AI in round 1 with its work item on the queue."""
    for sequence, chunk in enumerate(data or ("hello",), start=1):
        services.record_packet(store, call_id, Packet(sequence=sequence, data=chunk, timestamp=float(sequence)))
    services.end_call(store, queue, call_id)
    item = queue.sent[-1]
    assert item == WorkItem(call_id=call_id, round=1)
    return item


def failed_call(store: InMemoryCallStore, queue: FakeQueue, call_id: str, reason: str = "gave up") -> WorkItem:
    """An ended call that then FAILED in round 1."""
    item = ended_call(store, queue, call_id)
    store.transition(
        call_id,
        source=CallState.PROCESSING_AI,
        target=CallState.FAILED,
        now="2024-01-01T00:00:01.000000Z",
        expected_round=1,
        failure_reason=reason,
    )
    return item


def get(store: InMemoryCallStore, call_id: str) -> Call:
    call = store.get_call(call_id)
    assert call is not None
    return call


def process(store: InMemoryCallStore, ai: FakeAIProvider, item: WorkItem) -> ProcessOutcome:
    return asyncio.run(services.process_call(store, ai, item))


# --- process_call -----------------------------------------------------------------------


def test_process_call_completes_with_one_attempt_and_stores_transcript_and_sentiment(
    store: InMemoryCallStore, queue: FakeQueue
) -> None:
    item = ended_call(store, queue, "c1", "hello", "world")
    ai = FakeAIProvider({"c1": ["hello world, thanks"]}, sentiment=Sentiment("POSITIVE", 1.0))

    outcome = process(store, ai, item)

    assert outcome is ProcessOutcome.COMPLETED
    call = get(store, "c1")
    assert call.state is CallState.COMPLETED
    assert call.ai_attempts == 1
    assert call.transcript == "hello world, thanks"
    assert call.sentiment == Sentiment("POSITIVE", 1.0)
    assert call.failure_reason is None
    assert [(a.round, a.number, a.error) for a in call.attempts] == [(1, 1, None)]
    assert ai.scored == ["hello world, thanks"]


def test_process_call_gives_the_ai_the_calls_packets_in_sequence_order(store: InMemoryCallStore) -> None:
    queue = FakeQueue()
    for sequence in (3, 1, 2):
        services.record_packet(store, "c1", Packet(sequence=sequence, data=f"chunk-{sequence}", timestamp=1.0))
    services.end_call(store, queue, "c1")
    ai = FakeAIProvider()

    process(store, ai, queue.sent[-1])

    [(call_id, packets)] = ai.calls
    assert call_id == "c1"
    assert [p.sequence for p in packets] == [1, 2, 3]


def test_duplicate_delivery_after_completed_is_skipped_and_changes_nothing(
    store: InMemoryCallStore, queue: FakeQueue
) -> None:
    item = ended_call(store, queue, "c1")
    ai = FakeAIProvider()
    process(store, ai, item)
    before = get(store, "c1")

    outcome = process(store, ai, item)

    assert outcome is ProcessOutcome.SKIPPED
    assert get(store, "c1") == before
    assert get(store, "c1").ai_attempts == 1
    assert ai.calls_for("c1") == 1


def test_duplicate_delivery_after_failed_is_skipped_and_changes_nothing(
    store: InMemoryCallStore, queue: FakeQueue
) -> None:
    item = ended_call(store, queue, "c1")
    ai = FakeAIProvider({"c1": [PermanentAIError("audio of packet 1 cannot be decoded")]})
    process(store, ai, item)
    before = get(store, "c1")

    outcome = process(store, ai, item)

    assert outcome is ProcessOutcome.SKIPPED
    assert get(store, "c1") == before
    assert ai.calls_for("c1") == 1


def test_stale_work_item_of_an_earlier_round_is_skipped(store: InMemoryCallStore, queue: FakeQueue) -> None:
    # GIVEN a call that failed in round 1 and was retried: it is PROCESSING_AI in round 2
    old_item = failed_call(store, queue, "c1")
    services.retry_call(store, queue, "c1")
    before = get(store, "c1")
    assert (before.state, before.round) == (CallState.PROCESSING_AI, 2)
    ai = FakeAIProvider()

    # WHEN the round-1 item is delivered again
    outcome = process(store, ai, old_item)

    # THEN nothing happens: the round-2 item is the one that counts
    assert outcome is ProcessOutcome.SKIPPED
    assert get(store, "c1") == before
    assert ai.calls == []


def test_work_item_for_an_unknown_call_is_skipped(store: InMemoryCallStore) -> None:
    ai = FakeAIProvider()

    assert process(store, ai, WorkItem(call_id="ghost", round=1)) is ProcessOutcome.SKIPPED
    assert ai.calls == []
    assert store.get_call("ghost") is None


def test_retryable_error_raises_and_records_the_error_leaving_the_call_processing(
    store: InMemoryCallStore, queue: FakeQueue
) -> None:
    item = ended_call(store, queue, "c1")
    ai = FakeAIProvider({"c1": [retryable("HTTP 503 from the AI")]})

    with pytest.raises(RetryableAIError):
        process(store, ai, item)

    call = get(store, "c1")
    assert call.state is CallState.PROCESSING_AI
    assert call.ai_attempts == 1
    assert call.ai_last_error == "HTTP 503 from the AI"
    assert [(a.round, a.number, a.error) for a in call.attempts] == [(1, 1, "HTTP 503 from the AI")]
    assert call.transcript is None


def test_redelivery_after_a_retryable_error_completes_with_two_attempts_and_keeps_history(
    store: InMemoryCallStore, queue: FakeQueue
) -> None:
    item = ended_call(store, queue, "c1")
    ai = FakeAIProvider({"c1": [retryable("first try 503"), "second try ok"]})
    with pytest.raises(RetryableAIError):
        process(store, ai, item)

    outcome = process(store, ai, item)

    assert outcome is ProcessOutcome.COMPLETED
    call = get(store, "c1")
    assert call.state is CallState.COMPLETED
    assert call.ai_attempts == 2
    assert call.transcript == "second try ok"
    assert [(a.number, a.error) for a in call.attempts] == [(1, "first try 503"), (2, None)]


def test_permanent_error_fails_the_call_at_once_naming_the_error(store: InMemoryCallStore, queue: FakeQueue) -> None:
    item = ended_call(store, queue, "c1")
    ai = FakeAIProvider({"c1": [PermanentAIError("audio of packet 1 cannot be decoded")]})

    outcome = process(store, ai, item)

    assert outcome is ProcessOutcome.FAILED
    call = get(store, "c1")
    assert call.state is CallState.FAILED
    assert call.ai_attempts == 1
    assert call.failure_reason is not None
    assert "audio of packet 1 cannot be decoded" in call.failure_reason
    assert call.ai_last_error == "audio of packet 1 cannot be decoded"
    assert call.transcript is None
    assert ai.scored == []


# --- fail_exhausted (the dead-letter queue) ---------------------------------------------


def exhaust(store: InMemoryCallStore, item: WorkItem, errors: list[str]) -> FakeAIProvider:
    """Run one retryable failure per entry of ``errors`` for ``item``."""
    ai = FakeAIProvider({item.call_id: [retryable(e) for e in errors]})
    for _ in errors:
        with pytest.raises(RetryableAIError):
            process(store, ai, item)
    return ai


def test_fail_exhausted_fails_the_call_naming_the_attempts_of_the_round_and_the_last_error(
    store: InMemoryCallStore, queue: FakeQueue
) -> None:
    item = ended_call(store, queue, "c1")
    exhaust(store, item, ["503 one", "503 two", "timeout three"])

    assert services.fail_exhausted(store, item) is True

    call = get(store, "c1")
    assert call.state is CallState.FAILED
    assert call.failure_reason is not None
    assert "3 attempts" in call.failure_reason
    assert "timeout three" in call.failure_reason
    assert call.ai_attempts == 3


def test_fail_exhausted_counts_only_the_attempts_of_the_items_round(store: InMemoryCallStore, queue: FakeQueue) -> None:
    first = ended_call(store, queue, "c1")
    exhaust(store, first, ["503 a", "503 b"])
    services.fail_exhausted(store, first)
    services.retry_call(store, queue, "c1")
    second = queue.sent[-1]
    exhaust(store, second, ["503 c"])

    assert services.fail_exhausted(store, second) is True

    call = get(store, "c1")
    assert call.failure_reason is not None
    assert "after 1 attempt " in call.failure_reason
    assert "503 c" in call.failure_reason
    assert call.ai_attempts == 3  # across both rounds


def test_fail_exhausted_is_idempotent(store: InMemoryCallStore, queue: FakeQueue) -> None:
    item = ended_call(store, queue, "c1")
    exhaust(store, item, ["503"])
    assert services.fail_exhausted(store, item) is True
    before = get(store, "c1")

    assert services.fail_exhausted(store, item) is False

    assert get(store, "c1") == before


def test_fail_exhausted_leaves_a_completed_call_alone(store: InMemoryCallStore, queue: FakeQueue) -> None:
    item = ended_call(store, queue, "c1")
    process(store, FakeAIProvider(), item)
    before = get(store, "c1")

    assert services.fail_exhausted(store, item) is False
    assert get(store, "c1") == before


def test_fail_exhausted_ignores_a_stale_round(store: InMemoryCallStore, queue: FakeQueue) -> None:
    old_item = failed_call(store, queue, "c1")
    services.retry_call(store, queue, "c1")
    before = get(store, "c1")

    assert services.fail_exhausted(store, old_item) is False
    assert get(store, "c1") == before


def test_fail_exhausted_for_an_unknown_call_returns_false(store: InMemoryCallStore) -> None:
    assert services.fail_exhausted(store, WorkItem(call_id="ghost", round=1)) is False
    assert store.get_call("ghost") is None


# --- retry_call -------------------------------------------------------------------------


def test_retry_moves_a_failed_call_to_processing_in_a_new_round_with_a_new_work_item(
    store: InMemoryCallStore, queue: FakeQueue
) -> None:
    item = ended_call(store, queue, "c1")
    process(store, FakeAIProvider({"c1": [PermanentAIError("undecodable")]}), item)
    history = get(store, "c1").attempts

    call = services.retry_call(store, queue, "c1")

    assert call.state is CallState.PROCESSING_AI
    assert call.round == 2
    assert queue.sent == [WorkItem("c1", 1), WorkItem("c1", 2)]
    stored = get(store, "c1")
    assert stored.state is CallState.PROCESSING_AI
    assert stored.round == 2
    assert stored.enqueued_round == 2
    assert stored.attempts == history
    assert stored.ai_attempts == 1
    assert stored.reason_for_failure is None  # kept stored for a revert, not shown


def test_retried_call_completes_when_the_ai_recovers(store: InMemoryCallStore, queue: FakeQueue) -> None:
    item = ended_call(store, queue, "c1")
    ai = FakeAIProvider({"c1": [PermanentAIError("undecodable"), "recovered"]})
    process(store, ai, item)
    services.retry_call(store, queue, "c1")

    outcome = process(store, ai, queue.sent[-1])

    assert outcome is ProcessOutcome.COMPLETED
    call = get(store, "c1")
    assert call.state is CallState.COMPLETED
    assert call.transcript == "recovered"
    assert [(a.round, a.number) for a in call.attempts] == [(1, 1), (2, 2)]


@pytest.mark.parametrize("state", [CallState.IN_PROGRESS, CallState.PROCESSING_AI, CallState.COMPLETED])
def test_retry_from_any_state_but_failed_is_an_invalid_transition(
    store: InMemoryCallStore, queue: FakeQueue, state: CallState
) -> None:
    services.record_packet(store, "c1", Packet(sequence=1, data="x", timestamp=1.0))
    if state is not CallState.IN_PROGRESS:
        services.end_call(store, queue, "c1")
    if state is CallState.COMPLETED:
        process(store, FakeAIProvider(), queue.sent[-1])
    before = get(store, "c1")
    assert before.state is state
    sent = list(queue.sent)

    with pytest.raises(InvalidTransitionError) as excinfo:
        services.retry_call(store, queue, "c1")

    assert excinfo.value.current is state
    assert get(store, "c1") == before
    assert queue.sent == sent


def test_retry_of_an_unknown_call_is_not_found(store: InMemoryCallStore, queue: FakeQueue) -> None:
    with pytest.raises(CallNotFoundError):
        services.retry_call(store, queue, "ghost")
    assert queue.sent == []


def test_retry_with_the_queue_down_raises_and_the_call_is_failed_again(
    store: InMemoryCallStore, queue: FakeQueue
) -> None:
    failed_call(store, queue, "c1")
    queue.fail_with = DependencyUnavailableError("SQS", "unreachable")

    with pytest.raises(DependencyUnavailableError):
        services.retry_call(store, queue, "c1")

    call = get(store, "c1")
    assert call.state is CallState.FAILED
    assert queue.sent == [WorkItem("c1", 1)]
    # ... and the operator can retry again once the queue is back
    queue.fail_with = None
    assert services.retry_call(store, queue, "c1").state is CallState.PROCESSING_AI
    assert queue.sent[-1] == WorkItem("c1", get(store, "c1").round)


def test_retry_with_the_queue_down_keeps_the_calls_failure_reason(store: InMemoryCallStore, queue: FakeQueue) -> None:
    failed_call(store, queue, "c1", reason="AI processing gave up after 5 attempts")
    queue.fail_with = DependencyUnavailableError("SQS", "unreachable")

    with pytest.raises(DependencyUnavailableError):
        services.retry_call(store, queue, "c1")

    call = get(store, "c1")
    assert call.state is CallState.FAILED
    assert call.failure_reason == "AI processing gave up after 5 attempts"


# --- resend_lost_work (the sweeper) -----------------------------------------------------

NOW = datetime(2024, 1, 1, 12, 0, 0, tzinfo=UTC)
OLD = "2024-01-01T11:00:00.000000Z"  # an hour before NOW
RECENT = "2024-01-01T11:59:55.000000Z"  # 5 s before NOW


@pytest.fixture
def frozen_now(monkeypatch: pytest.MonkeyPatch) -> None:
    """To the service it is always NOW."""

    def seconds_since(iso: str) -> float:
        then = datetime.strptime(iso, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
        return (NOW - then).total_seconds()

    monkeypatch.setattr(services, "seconds_since", seconds_since)
    assert services.seconds_since(OLD) > services.RESEND_AFTER_S
    assert services.seconds_since(RECENT) < services.RESEND_AFTER_S


def processing_without_recorded_send(store: InMemoryCallStore, call_id: str, at: str) -> None:
    """PROCESSING_AI in round 1, as left by an end whose SQS send and revert both failed."""
    services.record_packet(store, call_id, Packet(sequence=1, data="x", timestamp=1.0))
    store.transition(call_id, source=CallState.IN_PROGRESS, target=CallState.PROCESSING_AI, now=at, new_round=True)


@pytest.mark.usefixtures("frozen_now")
def test_resend_lost_work_resends_only_old_unrecorded_processing_calls(
    store: InMemoryCallStore, queue: FakeQueue
) -> None:
    processing_without_recorded_send(store, "lost", at=OLD)
    processing_without_recorded_send(store, "recent", at=RECENT)
    processing_without_recorded_send(store, "recorded", at=OLD)
    store.mark_enqueued("recorded", 1)
    services.record_packet(store, "open", Packet(sequence=1, data="x", timestamp=1.0))

    sent = services.resend_lost_work(store, queue)

    assert sent == 1
    assert queue.sent == [WorkItem("lost", 1)]
    assert get(store, "lost").enqueued_round == 1
    assert get(store, "recent").enqueued_round == 0


@pytest.mark.usefixtures("frozen_now")
def test_resend_lost_work_does_not_resend_once_recorded(store: InMemoryCallStore, queue: FakeQueue) -> None:
    processing_without_recorded_send(store, "lost", at=OLD)
    services.resend_lost_work(store, queue)

    assert services.resend_lost_work(store, queue) == 0
    assert queue.sent == [WorkItem("lost", 1)]


@pytest.mark.usefixtures("frozen_now")
def test_resend_lost_work_pages_through_every_processing_call(store: InMemoryCallStore, queue: FakeQueue) -> None:
    for i in range(7):
        processing_without_recorded_send(store, f"lost-{i}", at=OLD)

    assert services.resend_lost_work(store, queue, page_size=3) == 7
    assert sorted(item.call_id for item in queue.sent) == [f"lost-{i}" for i in range(7)]


@pytest.mark.usefixtures("frozen_now")
def test_sweeper_handler_reports_how_many_items_it_resent(store: InMemoryCallStore, queue: FakeQueue) -> None:
    processing_without_recorded_send(store, "lost", at=OLD)
    handler = ai_worker.sweeper.build_handler(store, queue)

    assert handler({"source": "aws.events", "detail-type": "Scheduled Event", "detail": {}}, None) == {"resent": 1}
    assert queue.sent == [WorkItem("lost", 1)]


# --- the worker Lambda handler ----------------------------------------------------------


def make_sqs_event(*bodies: str, receive_count: int = 1) -> dict[str, Any]:
    """An SQS event as Lambda's event source mapping delivers it, one record per body.

    Record ``i`` has messageId ``msg-i`` and receiptHandle ``rh-i``.
    """
    return {
        "Records": [
            {
                "messageId": f"msg-{i}",
                "receiptHandle": f"rh-{i}",
                "body": body,
                "attributes": {
                    "ApproximateReceiveCount": str(receive_count),
                    "SentTimestamp": "1704067200000",
                    "SenderId": "AIDAEXAMPLE",
                    "ApproximateFirstReceiveTimestamp": "1704067200001",
                },
                "messageAttributes": {},
                "md5OfBody": hashlib.md5(body.encode(), usedforsecurity=False).hexdigest(),
                "eventSource": "aws:sqs",
                "eventSourceARN": QUEUE_ARN,
                "awsRegion": "us-east-1",
            }
            for i, body in enumerate(bodies)
        ]
    }


def body(item: WorkItem) -> str:
    return json.dumps(item.to_dict())


def worker(
    store: InMemoryCallStore, ai: FakeAIProvider | Any, queue: FakeQueue, settings: Settings = SETTINGS
) -> Handler:
    return ai_worker.handler.build_handler(WorkerDeps(settings=settings, store=store, ai=ai, queue=queue))


def failures(response: dict[str, Any]) -> list[str]:
    return [f["itemIdentifier"] for f in response["batchItemFailures"]]


def ended_calls(store: InMemoryCallStore, queue: FakeQueue, *call_ids: str) -> list[WorkItem]:
    return [ended_call(store, queue, call_id) for call_id in call_ids]


def test_worker_batch_that_all_succeeds_reports_no_failures(store: InMemoryCallStore, queue: FakeQueue) -> None:
    items = ended_calls(store, queue, "c1", "c2", "c3")
    ai = FakeAIProvider()

    response = worker(store, ai, queue)(make_sqs_event(*map(body, items)), None)

    assert response == {"batchItemFailures": []}
    assert [get(store, i.call_id).state for i in items] == [CallState.COMPLETED] * 3
    assert queue.visibility_changes == []


def test_worker_reports_exactly_the_failing_record_and_backs_it_off(store: InMemoryCallStore, queue: FakeQueue) -> None:
    items = ended_calls(store, queue, "c1", "c2", "c3")
    ai = FakeAIProvider({"c2": [retryable()]})
    receive_count = 3
    ceiling = min(SETTINGS.retry_max_delay_s, SETTINGS.retry_base_delay_s * 2 ** (receive_count - 1))  # 8 s

    response = worker(store, ai, queue)(make_sqs_event(*map(body, items), receive_count=receive_count), None)

    assert failures(response) == ["msg-1"]
    [(receipt_handle, timeout)] = queue.visibility_changes
    assert receipt_handle == "rh-1"
    assert type(timeout) is int
    assert 0 <= timeout <= ceiling
    assert get(store, "c1").state is CallState.COMPLETED
    assert get(store, "c2").state is CallState.PROCESSING_AI
    assert get(store, "c2").ai_last_error is not None
    assert get(store, "c3").state is CallState.COMPLETED


@pytest.mark.parametrize(("receive_count", "ceiling"), [(1, 2), (2, 4), (3, 8), (4, 16)])
def test_worker_backoff_comes_from_the_receive_count_and_retry_settings(
    store: InMemoryCallStore, queue: FakeQueue, monkeypatch: pytest.MonkeyPatch, receive_count: int, ceiling: int
) -> None:
    # The highest draw of the jitter is the ceiling of the schedule.
    def highest_backoff(count: int, base_s: float, cap_s: float) -> int:
        return backoff_delay(count, base_s, cap_s, uniform=lambda low, high: high)

    monkeypatch.setattr(ai_worker.handler, "backoff_delay", highest_backoff)
    ok, bad = ended_calls(store, queue, "ok", "c1")

    response = worker(store, FakeAIProvider({"c1": [retryable()]}), queue)(
        make_sqs_event(body(ok), body(bad), receive_count=receive_count), None
    )

    assert failures(response) == ["msg-1"]
    assert queue.visibility_changes == [("rh-1", ceiling)]


@pytest.mark.parametrize("receive_count", [SETTINGS.max_receive_count, SETTINGS.max_receive_count + 2])
def test_worker_on_the_last_receive_sets_visibility_zero_so_redrive_is_immediate(
    store: InMemoryCallStore, queue: FakeQueue, receive_count: int
) -> None:
    ok, bad = ended_calls(store, queue, "ok", "c1")

    response = worker(store, FakeAIProvider({"c1": [retryable()]}), queue)(
        make_sqs_event(body(ok), body(bad), receive_count=receive_count), None
    )

    assert failures(response) == ["msg-1"]
    assert queue.visibility_changes == [("rh-1", 0)]
    assert get(store, "c1").state is CallState.PROCESSING_AI  # the DLQ handler fails it


def test_worker_last_receive_follows_max_receive_count_setting(store: InMemoryCallStore, queue: FakeQueue) -> None:
    ok, bad = ended_calls(store, queue, "ok", "c1")
    settings = dataclasses.replace(SETTINGS, max_receive_count=3)
    ai = FakeAIProvider({"c1": [retryable(), retryable()]})
    handler = worker(store, ai, queue, settings)

    handler(make_sqs_event(body(ok), body(bad), receive_count=2), None)
    handler(make_sqs_event(body(ok), body(bad), receive_count=3), None)

    [(_, second_to_last), last] = queue.visibility_changes
    assert 0 <= second_to_last <= 4
    assert last == ("rh-1", 0)


@pytest.mark.parametrize(
    "unreadable",
    ["not json", "[1, 2]", json.dumps({"call_id": "bad id!", "round": 1}), json.dumps({"call_id": "c1", "round": 0})],
)
def test_worker_drops_an_unreadable_body_without_reporting_a_failure(
    store: InMemoryCallStore, queue: FakeQueue, unreadable: str
) -> None:
    [item] = ended_calls(store, queue, "c1")
    ai = FakeAIProvider()

    response = worker(store, ai, queue)(make_sqs_event(unreadable, body(item)), None)

    assert response == {"batchItemFailures": []}
    assert queue.visibility_changes == []
    assert [call_id for call_id, _ in ai.calls] == ["c1"]


def test_worker_permanent_error_fails_the_call_and_is_not_a_batch_failure(
    store: InMemoryCallStore, queue: FakeQueue
) -> None:
    [item] = ended_calls(store, queue, "c1")
    ai = FakeAIProvider({"c1": [PermanentAIError("audio of packet 1 cannot be decoded")]})

    response = worker(store, ai, queue)(make_sqs_event(body(item)), None)

    assert response == {"batchItemFailures": []}
    assert queue.visibility_changes == []
    call = get(store, "c1")
    assert call.state is CallState.FAILED
    assert call.failure_reason is not None
    assert "cannot be decoded" in call.failure_reason


def test_worker_duplicate_message_for_a_completed_call_does_nothing(store: InMemoryCallStore, queue: FakeQueue) -> None:
    [item] = ended_calls(store, queue, "c1")
    ai = FakeAIProvider()
    handler = worker(store, ai, queue)
    handler(make_sqs_event(body(item)), None)
    before = get(store, "c1")

    # A redelivery (a new messageId, as after a redrive) of the same work item
    response = handler(make_sqs_event(body(item), receive_count=2), None)

    assert response == {"batchItemFailures": []}
    assert get(store, "c1") == before
    assert before.ai_attempts == 1
    assert ai.calls_for("c1") == 1


def test_worker_backs_off_every_record_even_when_the_whole_batch_fails(
    store: InMemoryCallStore, queue: FakeQueue
) -> None:
    items = ended_calls(store, queue, "c1", "c2")
    ai = FakeAIProvider({"c1": [retryable()], "c2": [retryable()]})

    event = make_sqs_event(*map(body, items), receive_count=2)
    response = worker(store, ai, queue)(event, None)

    assert len(response["batchItemFailures"]) == 2

    assert sorted(rh for rh, _ in queue.visibility_changes) == ["rh-0", "rh-1"]
    assert all(0 <= timeout <= 4 for _, timeout in queue.visibility_changes)


def test_worker_batch_whose_only_record_fails_reports_it_as_a_batch_item_failure(
    store: InMemoryCallStore, queue: FakeQueue
) -> None:
    [item] = ended_calls(store, queue, "c1")

    response = worker(store, FakeAIProvider({"c1": [retryable()]}), queue)(make_sqs_event(body(item)), None)

    assert failures(response) == ["msg-0"]
    assert [rh for rh, _ in queue.visibility_changes] == ["rh-0"]


class DynamoDBDownStore(InMemoryCallStore):
    """DynamoDB throttles every write that starts an attempt for the calls in ``down``."""

    def __init__(self, *down: str) -> None:
        super().__init__()
        self.down = set(down)

    def start_attempt(self, call_id: str, round: int, *, now: str) -> int | None:
        if call_id in self.down:
            raise DependencyUnavailableError("DynamoDB", "throttled")
        return super().start_attempt(call_id, round, now=now)


def test_worker_reports_a_dependency_outage_as_a_retryable_failure(queue: FakeQueue) -> None:
    store = DynamoDBDownStore("c1")
    ok, bad = ended_calls(store, queue, "ok", "c1")

    response = worker(store, FakeAIProvider(), queue)(make_sqs_event(body(ok), body(bad), receive_count=2), None)

    assert failures(response) == ["msg-1"]
    [(receipt_handle, timeout)] = queue.visibility_changes
    assert receipt_handle == "rh-1"
    assert 0 <= timeout <= 4
    assert get(store, "c1").state is CallState.PROCESSING_AI


def test_worker_still_reports_the_failure_when_the_visibility_change_fails(
    store: InMemoryCallStore, queue: FakeQueue
) -> None:
    ok, bad = ended_calls(store, queue, "ok", "c1")
    queue.visibility_fail_with = DependencyUnavailableError("SQS", "unreachable")

    response = worker(store, FakeAIProvider({"c1": [retryable()]}), queue)(make_sqs_event(body(ok), body(bad)), None)

    assert failures(response) == ["msg-1"]
    assert queue.visibility_changes == []


class GatheringAI(FakeAIProvider):
    """Answers only once ``expected`` transcriptions are in flight at the same time."""

    def __init__(self, expected: int) -> None:
        super().__init__()
        self._expected = expected
        self.in_flight = 0
        self.peak = 0
        self._all_in: asyncio.Event | None = None

    async def transcribe(self, call_id: str, packets: list[Packet]) -> str:
        if self._all_in is None:
            self._all_in = asyncio.Event()
        self.in_flight += 1
        self.peak = max(self.peak, self.in_flight)
        if self.in_flight == self._expected:
            self._all_in.set()
        try:
            # A guard, not a wait: records handled one at a time would never all be in flight.
            await asyncio.wait_for(self._all_in.wait(), timeout=5)
        finally:
            self.in_flight -= 1
        return await super().transcribe(call_id, packets)


def test_worker_processes_the_records_of_a_batch_concurrently(store: InMemoryCallStore, queue: FakeQueue) -> None:
    items = ended_calls(store, queue, *(f"c{i}" for i in range(10)))
    ai = GatheringAI(expected=10)

    response = worker(store, ai, queue)(make_sqs_event(*map(body, items)), None)

    assert response == {"batchItemFailures": []}
    assert ai.peak == 10
    assert all(get(store, i.call_id).state is CallState.COMPLETED for i in items)


def test_worker_module_exposes_the_lambda_handler_named_in_the_template() -> None:
    assert callable(ai_worker.handler.lambda_handler)
    assert callable(ai_worker.dlq.lambda_handler)
    assert callable(ai_worker.sweeper.lambda_handler)


# --- the dead-letter queue handler ------------------------------------------------------


def test_dlq_handler_fails_the_call_with_a_reason(store: InMemoryCallStore, queue: FakeQueue) -> None:
    [item] = ended_calls(store, queue, "c1")
    exhaust(store, item, ["503 one", "503 two"])

    response = ai_worker.dlq.build_handler(store)(make_sqs_event(body(item), receive_count=1), None)

    assert response == {"batchItemFailures": []}
    call = get(store, "c1")
    assert call.state is CallState.FAILED
    assert call.failure_reason is not None
    assert "2 attempts" in call.failure_reason
    assert "503 two" in call.failure_reason


def test_dlq_handler_twice_changes_nothing_more(store: InMemoryCallStore, queue: FakeQueue) -> None:
    [item] = ended_calls(store, queue, "c1")
    handler = ai_worker.dlq.build_handler(store)
    handler(make_sqs_event(body(item)), None)
    before = get(store, "c1")
    assert before.state is CallState.FAILED

    response = handler(make_sqs_event(body(item)), None)

    assert response == {"batchItemFailures": []}
    assert get(store, "c1") == before


def test_dlq_handler_leaves_a_completed_call_alone(store: InMemoryCallStore, queue: FakeQueue) -> None:
    [item] = ended_calls(store, queue, "c1")
    worker(store, FakeAIProvider(), queue)(make_sqs_event(body(item)), None)
    before = get(store, "c1")

    response = ai_worker.dlq.build_handler(store)(make_sqs_event(body(item)), None)

    assert response == {"batchItemFailures": []}
    assert get(store, "c1") == before


def test_dlq_handler_drops_an_unreadable_body_without_reporting_a_failure(store: InMemoryCallStore) -> None:
    response = ai_worker.dlq.build_handler(store)(make_sqs_event("not json"), None)

    assert response == {"batchItemFailures": []}


class DynamoDBDownOnGetStore(InMemoryCallStore):
    def get_call(self, call_id: str) -> Call | None:
        raise DependencyUnavailableError("DynamoDB", "throttled")


def test_dlq_handler_keeps_the_record_when_dynamodb_is_down(queue: FakeQueue) -> None:
    store = DynamoDBDownOnGetStore()
    item = WorkItem(call_id="c1", round=1)

    response = ai_worker.dlq.build_handler(store)(make_sqs_event("unreadable", body(item)), None)

    assert failures(response) == ["msg-1"]

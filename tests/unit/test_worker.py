"""The AI half of the pipeline with fakes: process_call, the DLQ's fail_exhausted, operator
retry, the sweep of PROCESSING_AI calls (unsent and lost work items), and the worker, DLQ
and sweeper Lambda handlers driven with events in Lambda's SQS shape."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import hashlib
import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

import ai_worker.dlq
import ai_worker.handler
import ai_worker.sweeper
from ai_worker.handler import WorkerDeps, audio_limits
from callcore import services
from callcore.domain.audio import CallAudio
from callcore.domain.errors import (
    CallNotFoundError,
    CallTooLargeError,
    DependencyUnavailableError,
    InvalidTransitionError,
    PermanentAIError,
    RetryableAIError,
)
from callcore.domain.model import (
    MAX_TRANSCRIPT_BYTES,
    Attempt,
    Call,
    CallState,
    Packet,
    Sentiment,
    TransitionRule,
    WorkItem,
    transition_rule,
)
from callcore.domain.retry import backoff_delay
from callcore.services import ProcessOutcome
from callcore.settings import Settings
from tests.fakes import FakeAIProvider, FakeQueue, InMemoryCallArchive, InMemoryCallStore, InMemoryRecordingStore

QUEUE_ARN = "arn:aws:sqs:us-east-1:123456789012:WorkQueue"
SETTINGS = Settings(retry_base_delay_s=2.0, retry_max_delay_s=60.0, max_receive_count=5)

Handler = Callable[[dict[str, Any], Any], dict[str, Any]]


def retryable(message: str = "mock AI service answered HTTP 503 Service Unavailable") -> RetryableAIError:
    return RetryableAIError(message, status=503)


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def ended_call(store: InMemoryCallStore, queue: FakeQueue, call_id: str, *data: str) -> WorkItem:
    """A call with packets, ended: PROCESSING_AI in round 1 with its work item on the queue."""
    for sequence, chunk in enumerate(data or ("hello",), start=1):
        # Base64 text: audio as the worker decodes it (mu-law), text as the mock reads it.
        encoded = b64(chunk)
        services.record_packet(store, call_id, Packet(sequence=sequence, data=encoded, timestamp=float(sequence)))
    services.end_call(store, queue, call_id)
    item = queue.sent[-1]
    assert item == WorkItem(call_id=call_id, round=1)
    return item


def failed_call(store: InMemoryCallStore, queue: FakeQueue, call_id: str, reason: str = "gave up") -> WorkItem:
    """An ended call that then FAILED in round 1."""
    item = ended_call(store, queue, call_id)
    store.transition(
        call_id,
        transition_rule(call_id, CallState.PROCESSING_AI, CallState.FAILED),
        now="2024-01-01T00:00:01.000000Z",
        token=services.new_token(),
        expected_round=1,
        failure_reason=reason,
    )
    return item


def get(store: InMemoryCallStore, call_id: str) -> Call:
    call = store.get_call(call_id)
    assert call is not None
    return call


def process(
    store: InMemoryCallStore,
    ai: FakeAIProvider,
    item: WorkItem,
    *,
    max_call_bytes: int = SETTINGS.max_call_bytes,
    recordings: InMemoryRecordingStore | None = None,
    queue: FakeQueue | None = None,
) -> ProcessOutcome:
    limits = dataclasses.replace(audio_limits(SETTINGS), max_call_bytes=max_call_bytes)
    return asyncio.run(
        services.process_call(
            store, ai, recordings or InMemoryRecordingStore(), queue or FakeQueue(), item, limits=limits
        )
    )


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
    assert call.transcript_truncated is False
    assert call.sentiment == Sentiment("POSITIVE", 1.0)
    assert call.failure_reason is None
    assert [(a.round, a.number, a.error) for a in call.attempts] == [(1, 1, None)]
    assert ai.scored == ["hello world, thanks"]


def test_process_call_gives_the_ai_the_calls_packets_in_sequence_order(store: InMemoryCallStore) -> None:
    queue = FakeQueue()
    for sequence in (3, 1, 2):
        services.record_packet(store, "c1", Packet(sequence=sequence, data=b64(f"chunk-{sequence}"), timestamp=1.0))
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


def test_a_call_over_max_call_bytes_fails_at_once_naming_the_limit_without_calling_the_ai(
    store: InMemoryCallStore, queue: FakeQueue
) -> None:
    # GIVEN a call with 10 + 10 bytes of packet data, and a limit of 15
    item = ended_call(store, queue, "c1", "a" * 10, "b" * 10)
    ai = FakeAIProvider()

    # WHEN the worker processes it
    outcome = process(store, ai, item, max_call_bytes=15)

    # THEN it fails on its one attempt, without a retry and without asking the AI
    assert outcome is ProcessOutcome.FAILED
    call = get(store, "c1")
    assert call.state is CallState.FAILED
    assert call.ai_attempts == 1
    assert call.failure_reason is not None
    assert "15 bytes" in call.failure_reason
    assert call.ai_last_error is not None
    assert "15 bytes" in call.ai_last_error
    assert ai.calls == []
    assert ai.scored == []


def test_a_call_of_exactly_max_call_bytes_is_processed(store: InMemoryCallStore, queue: FakeQueue) -> None:
    item = ended_call(store, queue, "c1", "a" * 15, "b" * 15)  # 20 characters of base64 each
    ai = FakeAIProvider()

    assert process(store, ai, item, max_call_bytes=40) is ProcessOutcome.COMPLETED
    assert ai.calls_for("c1") == 1


def test_a_transcript_over_the_limit_is_stored_cut_and_flagged_and_the_call_completes(
    store: InMemoryCallStore, queue: FakeQueue
) -> None:
    item = ended_call(store, queue, "c1")
    transcript = "word " * (MAX_TRANSCRIPT_BYTES // 5 + 100)
    ai = FakeAIProvider({"c1": [transcript]})

    outcome = process(store, ai, item)

    assert outcome is ProcessOutcome.COMPLETED
    call = get(store, "c1")
    assert call.state is CallState.COMPLETED
    assert call.transcript_truncated is True
    assert call.transcript == transcript[:MAX_TRANSCRIPT_BYTES]
    assert ai.scored == [transcript]  # the sentiment is of the whole call


class ResultTooLargeStore(InMemoryCallStore):
    """A store whose record cannot hold the AI result (DynamoDB's item size limit)."""

    def transition(self, call_id: str, rule: TransitionRule, **kwargs: Any) -> Call:
        if kwargs.get("result") is not None:
            raise CallTooLargeError(f"call {call_id!r}: the record with the result is over 400 KB")
        return super().transition(call_id, rule, **kwargs)


def test_a_result_too_large_to_store_fails_the_call_with_a_reason(queue: FakeQueue) -> None:
    store = ResultTooLargeStore()
    item = ended_call(store, queue, "c1")

    outcome = process(store, FakeAIProvider(), item)

    assert outcome is ProcessOutcome.FAILED
    call = get(store, "c1")
    assert call.state is CallState.FAILED
    assert call.failure_reason is not None
    assert "could not be stored" in call.failure_reason
    assert "over 400 KB" in call.failure_reason
    assert call.transcript is None


def number(attempt: Attempt | None) -> int:
    assert attempt is not None
    return attempt.number


def test_round_1s_late_error_arriving_after_round_2s_attempt_started_does_not_overwrite_round_2s(
    store: InMemoryCallStore, queue: FakeQueue
) -> None:
    # GIVEN round 1's attempt started, then the round failed and was retried
    ended_call(store, queue, "c1")
    first = number(store.start_attempt("c1", 1, now="2024-01-01T00:00:01.000000Z", token="r1"))
    assert first == 1
    services.fail_exhausted(store, WorkItem("c1", 1))
    services.retry_call(store, queue, "c1")
    # ... and round 2's attempt started and recorded its error
    second = number(store.start_attempt("c1", 2, now="2024-01-01T00:00:02.000000Z", token="r2"))
    assert second == 2
    store.record_attempt_error("c1", 2, second, "round 2: HTTP 503")

    # WHEN round 1's late error arrives
    store.record_attempt_error("c1", 1, first, "round 1: timed out")

    # THEN it is ignored: the call shows round 2's error, and round 1's attempt is unchanged
    call = get(store, "c1")
    assert call.ai_last_error == "round 2: HTTP 503"
    assert [(a.round, a.number, a.error) for a in call.attempts] == [(1, 1, None), (2, 2, "round 2: HTTP 503")]


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
    assert call.failure_reason == "AI processing gave up after all retries (3 attempts; last error: timeout three)"
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
    assert "(1 attempt;" in call.failure_reason
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
    assert stored.reason_for_failure is None  # kept stored as history, not shown


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
    services.record_packet(store, "c1", Packet(sequence=1, data=b64("x"), timestamp=1.0))
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


def test_retry_with_the_queue_down_leaves_the_call_processing_for_the_sweeper_to_send(
    store: InMemoryCallStore, queue: FakeQueue, clock: Clock
) -> None:
    # GIVEN a failed call and an SQS outage
    failed_call(store, queue, "c1", reason="AI processing gave up after 5 attempts")
    queue.fail_with = DependencyUnavailableError("SQS", "unreachable")

    # WHEN the operator retries it
    call = services.retry_call(store, queue, "c1")

    # THEN the retry holds: round 2 is PROCESSING_AI, its work item known not to be sent
    assert (call.state, call.round) == (CallState.PROCESSING_AI, 2)
    stored = get(store, "c1")
    assert (stored.state, stored.round, stored.enqueued_round) == (CallState.PROCESSING_AI, 2, 1)
    assert stored.failure_reason == "AI processing gave up after 5 attempts"  # kept as history
    assert queue.sent == [WorkItem("c1", 1)]

    # ... and once SQS is back, the sweeper sends round 2's item, once
    queue.fail_with = None
    clock.advance(SETTINGS.work_resend_after_s + 1)
    assert sweep(store, queue) == services.SweepOutcome(resent=1, failed=0)
    assert sweep(store, queue) == services.SweepOutcome(resent=0, failed=0)
    assert queue.sent == [WorkItem("c1", 1), WorkItem("c1", 2)]
    assert get(store, "c1").enqueued_round == 2


def test_a_second_retry_of_a_call_whose_retry_send_failed_is_an_invalid_transition(
    store: InMemoryCallStore, queue: FakeQueue
) -> None:
    failed_call(store, queue, "c1")
    queue.fail_with = DependencyUnavailableError("SQS", "unreachable")
    services.retry_call(store, queue, "c1")
    queue.fail_with = None

    with pytest.raises(InvalidTransitionError) as excinfo:
        services.retry_call(store, queue, "c1")

    assert excinfo.value.current is CallState.PROCESSING_AI
    assert queue.sent == [WorkItem("c1", 1)]


# --- sweep_processing (the sweeper) -----------------------------------------------------

ISO = "%Y-%m-%dT%H:%M:%S.%fZ"
NOW = datetime(2024, 1, 1, 12, 0, 0, tzinfo=UTC)
RESEND_AFTER_S = SETTINGS.work_resend_after_s  # 30 s
TIMEOUT_S = SETTINGS.processing_timeout_s  # an hour: past every retry
GIVE_UP_S = SETTINGS.give_up_after_s()  # and the queue's retention: the item is certainly gone


class Clock:
    """The service's clock, which moves only when a test advances it."""

    def __init__(self, now: datetime) -> None:
        self.now = now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)

    def now_iso(self) -> str:
        return self.now.strftime(ISO)

    def iso_seconds_ago(self, seconds: float) -> str:
        return (self.now - timedelta(seconds=seconds)).strftime(ISO)

    def seconds_since(self, iso: str) -> float:
        return (self.now - datetime.strptime(iso, ISO).replace(tzinfo=UTC)).total_seconds()


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    """To the service it is ``clock.now``, NOW until the test advances it."""
    clock = Clock(NOW)
    monkeypatch.setattr(services, "now_iso", clock.now_iso)
    monkeypatch.setattr(services, "iso_seconds_ago", clock.iso_seconds_ago)
    monkeypatch.setattr(services, "seconds_since", clock.seconds_since)
    return clock


def sweep(store: InMemoryCallStore, queue: FakeQueue, *, page_size: int = 100) -> services.SweepOutcome:
    return services.sweep_processing(
        store,
        queue,
        resend_after_s=RESEND_AFTER_S,
        processing_timeout_s=TIMEOUT_S,
        give_up_after_s=GIVE_UP_S,
        page_size=page_size,
    )


def ended_without_a_sent_item(store: InMemoryCallStore, queue: FakeQueue, call_id: str) -> None:
    """PROCESSING_AI in round 1, as left by an end whose SQS send failed."""
    services.record_packet(store, call_id, Packet(sequence=1, data="x", timestamp=1.0))
    queue.fail_next = True
    assert services.end_call(store, queue, call_id).processing
    assert get(store, call_id).enqueued_round == 0


def test_sweep_sends_a_sent_item_again_once_when_no_result_came_past_the_processing_timeout(
    store: InMemoryCallStore, queue: FakeQueue, clock: Clock
) -> None:
    # GIVEN a call whose work item was sent and recorded, then went silent (lost, or
    # its dead letter's handler failed)
    item = ended_call(store, queue, "silent")

    # WHEN the sweeper runs past the retry horizon, and again later
    clock.advance(TIMEOUT_S + 1)
    first = sweep(store, queue)
    clock.advance(TIMEOUT_S + 1)
    second = sweep(store, queue)

    # THEN the item is sent again once: the round stays PROCESSING_AI for it
    # Still past the horizon on the second sweep, after its one resend: the alarm's gauge stays up.
    assert (first, second) == (services.SweepOutcome(resent=1, past_horizon=1), services.SweepOutcome(past_horizon=1))
    assert queue.sent == [item, item]
    assert get(store, "silent").state is CallState.PROCESSING_AI


def test_sweep_fails_a_call_whose_work_item_is_certainly_gone_naming_the_rounds_last_error(
    store: InMemoryCallStore, queue: FakeQueue, clock: Clock
) -> None:
    # GIVEN a call whose work item was sent, and whose one attempt failed
    item = ended_call(store, queue, "lost")
    exhaust(store, item, ["503 once"])

    # WHEN the sweeper runs after the queue's retention period has passed since the send
    clock.advance(GIVE_UP_S + 1)
    outcome = sweep(store, queue)

    # THEN the call is FAILED with a reason saying its work item was lost, and nothing is resent
    assert outcome == services.SweepOutcome(failed=1, past_horizon=1)
    call = get(store, "lost")
    assert call.state is CallState.FAILED
    assert call.failure_reason is not None
    assert "work item was lost" in call.failure_reason
    assert "Retry the call" in call.failure_reason
    assert "1 attempt; last error: 503 once" in call.failure_reason
    assert queue.sent == [item]


def test_a_call_the_sweeper_fails_before_any_attempt_read_its_packets_keeps_their_statistics(
    store: InMemoryCallStore, queue: FakeQueue, clock: Clock
) -> None:
    # GIVEN a call whose work item was lost before any attempt
    ended_call(store, queue, "lost", "one", "two")

    # WHEN the sweeper gives up on it
    clock.advance(GIVE_UP_S + 1)
    assert sweep(store, queue).failed == 1

    # THEN it keeps its packets' statistics, for after they expire (PACKET_RETENTION_DAYS)
    call = get(store, "lost")
    assert call.state is CallState.FAILED
    assert call.packet_stats is not None
    assert (call.packet_stats.received, call.packet_stats.highest_sequence) == (2, 2)


def test_the_give_up_clock_runs_from_the_last_send_not_from_the_end(
    store: InMemoryCallStore, queue: FakeQueue, clock: Clock
) -> None:
    # GIVEN an end whose send failed, and SQS down for longer than the retry horizon
    ended_without_a_sent_item(store, queue, "late")
    clock.advance(TIMEOUT_S * 2)
    # WHEN the sweeper finally sends it
    assert sweep(store, queue) == services.SweepOutcome(resent=1)
    # THEN its retries get their whole horizon, counted from that send
    clock.advance(TIMEOUT_S - 1)
    assert sweep(store, queue) == services.SweepOutcome()
    assert get(store, "late").state is CallState.PROCESSING_AI


def test_sweep_leaves_a_call_with_a_sent_item_alone_within_the_processing_timeout(
    store: InMemoryCallStore, queue: FakeQueue, clock: Clock
) -> None:
    # GIVEN a call whose work item was sent and recorded
    item = ended_call(store, queue, "busy")
    before = get(store, "busy")

    # WHEN the sweeper runs long after the resend delay but before the timeout
    clock.advance(TIMEOUT_S - 1)
    outcome = sweep(store, queue)

    # THEN the call is untouched: its item may still be retrying
    assert outcome == services.SweepOutcome()
    assert get(store, "busy") == before
    assert queue.sent == [item]


def test_sweep_sends_an_unsent_work_item_older_than_the_resend_delay_once(
    store: InMemoryCallStore, queue: FakeQueue, clock: Clock
) -> None:
    # GIVEN an end whose send failed
    ended_without_a_sent_item(store, queue, "unsent")

    # WHEN the sweeper runs after the resend delay, twice
    clock.advance(RESEND_AFTER_S + 1)
    first = sweep(store, queue)
    second = sweep(store, queue)

    # THEN the item is sent and recorded by the first sweep only
    assert (first, second) == (services.SweepOutcome(resent=1), services.SweepOutcome())
    assert queue.sent == [WorkItem("unsent", 1)]
    call = get(store, "unsent")
    assert (call.state, call.enqueued_round) == (CallState.PROCESSING_AI, 1)


def test_overlapping_sweeps_send_an_unsent_item_once_and_a_failed_send_is_claimed_again_later(
    store: InMemoryCallStore, queue: FakeQueue, clock: Clock
) -> None:
    # GIVEN an end whose send failed, and a sweep whose own send fails too
    ended_without_a_sent_item(store, queue, "unsent")
    clock.advance(RESEND_AFTER_S + 1)
    queue.fail_next = True
    assert sweep(store, queue) == services.SweepOutcome(errors=1)
    # WHEN an overlapping sweep runs at once (Lambda retrying the scheduled invocation)
    # THEN it does not send: the first sweep's claim holds
    assert sweep(store, queue) == services.SweepOutcome()
    assert queue.sent == []
    # ... and once the claim is older than the resend delay, a sweep sends it
    clock.advance(RESEND_AFTER_S + 1)
    assert sweep(store, queue) == services.SweepOutcome(resent=1)
    assert queue.sent == [WorkItem("unsent", 1)]


def test_sweep_does_not_send_an_unsent_item_within_the_resend_delay(
    store: InMemoryCallStore, queue: FakeQueue, clock: Clock
) -> None:
    # GIVEN an end whose send failed 5 s ago (a concurrent end could still be sending)
    ended_without_a_sent_item(store, queue, "recent")
    clock.advance(5)

    assert sweep(store, queue) == services.SweepOutcome()
    assert queue.sent == []


def test_sweep_touches_only_processing_calls(store: InMemoryCallStore, queue: FakeQueue, clock: Clock) -> None:
    services.record_packet(store, "open", Packet(sequence=1, data="x", timestamp=1.0))
    process(store, FakeAIProvider(), ended_call(store, queue, "done"))
    failed_call(store, queue, "failed")
    before = {call_id: get(store, call_id) for call_id in ("open", "done", "failed")}
    sent = list(queue.sent)

    clock.advance(GIVE_UP_S + 1)

    assert sweep(store, queue) == services.SweepOutcome()
    assert {call_id: get(store, call_id) for call_id in before} == before
    assert queue.sent == sent


def test_sweep_pages_through_every_processing_call(store: InMemoryCallStore, queue: FakeQueue, clock: Clock) -> None:
    for i in range(4):
        ended_call(store, queue, f"lost-{i}")
    clock.advance(GIVE_UP_S + 1)
    for i in range(7):
        ended_without_a_sent_item(store, queue, f"unsent-{i}")
    clock.advance(RESEND_AFTER_S + 1)

    outcome = sweep(store, queue, page_size=3)

    assert outcome == services.SweepOutcome(resent=7, failed=4, past_horizon=4)
    assert sorted(item.call_id for item in queue.sent if item.call_id.startswith("unsent")) == [
        f"unsent-{i}" for i in range(7)
    ]
    assert all(get(store, f"lost-{i}").state is CallState.FAILED for i in range(4))


class ClaimFailsFor(InMemoryCallStore):
    """A store throttled for one call's writes."""

    def __init__(self, call_id: str) -> None:
        super().__init__()
        self.throttled = call_id

    def claim_send(self, call_id: str, round: int, *, now: str, unclaimed_since: str) -> bool:
        if call_id == self.throttled:
            raise DependencyUnavailableError("DynamoDB", "ThrottlingException")
        return super().claim_send(call_id, round, now=now, unclaimed_since=unclaimed_since)


def test_one_call_that_cannot_be_swept_now_does_not_stop_the_sweep_of_the_others(
    queue: FakeQueue, clock: Clock
) -> None:
    store = ClaimFailsFor("b")
    for call_id in ("a", "b", "c"):
        ended_without_a_sent_item(store, queue, call_id)
    clock.advance(RESEND_AFTER_S + 1)

    assert sweep(store, queue) == services.SweepOutcome(resent=2, errors=1)
    assert sorted(item.call_id for item in queue.sent) == ["a", "c"]


def test_sweeper_handler_reports_what_it_resent_failed_and_could_not_do(
    store: InMemoryCallStore, queue: FakeQueue, clock: Clock
) -> None:
    ended_call(store, queue, "lost")
    clock.advance(GIVE_UP_S + 1)
    ended_without_a_sent_item(store, queue, "unsent")
    clock.advance(RESEND_AFTER_S + 1)
    handler = ai_worker.sweeper.build_handler(store, queue, SETTINGS)

    response = handler({"source": "aws.events", "detail-type": "Scheduled Event", "detail": {}}, None)

    assert response == {"resent": 1, "failed": 1, "errors": 0, "archived": 0}
    assert queue.sent[-1] == WorkItem("unsent", 1)
    assert get(store, "lost").state is CallState.FAILED


def test_sweeper_handler_follows_the_resend_and_timeout_settings(
    store: InMemoryCallStore, queue: FakeQueue, clock: Clock
) -> None:
    item = ended_call(store, queue, "silent")
    settings = dataclasses.replace(SETTINGS, processing_timeout_s=100.0)
    handler = ai_worker.sweeper.build_handler(store, queue, settings)

    clock.advance(101)
    assert handler({}, None) == {"resent": 1, "failed": 0, "errors": 0, "archived": 0}
    assert queue.sent == [item, item]
    clock.advance(settings.give_up_after_s() + 1)
    assert handler({}, None) == {"resent": 0, "failed": 1, "errors": 0, "archived": 0}


def test_sweeper_handler_archives_finished_calls_once_they_are_archive_after_days_old(
    store: InMemoryCallStore, queue: FakeQueue, clock: Clock
) -> None:
    archive = InMemoryCallArchive()
    settings = dataclasses.replace(SETTINGS, archive_after_days=30)
    ended_call(store, queue, "old")
    rule = transition_rule("old", CallState.PROCESSING_AI, CallState.FAILED)
    store.transition("old", rule, now=clock.now_iso(), token=services.new_token(), failure_reason="gave up")
    handler = ai_worker.sweeper.build_handler(store, queue, settings, archive)

    clock.advance(30 * 86_400 - 60)
    assert handler({}, None)["archived"] == 0
    clock.advance(120)
    assert handler({}, None)["archived"] == 1
    assert get(store, "old").state is CallState.ARCHIVED
    assert archive.find("old") is not None
    assert handler({}, None)["archived"] == 0


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
    deps = WorkerDeps(settings=settings, store=store, ai=ai, queue=queue, recordings=InMemoryRecordingStore())
    return ai_worker.handler.build_handler(deps)


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

    def start_attempt(self, call_id: str, round: int, *, now: str, token: str) -> Attempt | None:
        if call_id in self.down:
            raise DependencyUnavailableError("DynamoDB", "throttled")
        return super().start_attempt(call_id, round, now=now, token=token)


def test_worker_reports_a_dependency_outage_as_a_retryable_failure(queue: FakeQueue) -> None:
    store = DynamoDBDownStore("c1")
    ok, bad = ended_calls(store, queue, "ok", "c1")

    response = worker(store, FakeAIProvider(), queue)(make_sqs_event(body(ok), body(bad), receive_count=2), None)

    assert failures(response) == ["msg-1"]
    [(receipt_handle, timeout)] = queue.visibility_changes
    assert receipt_handle == "rh-1"
    assert 0 <= timeout <= 4
    assert get(store, "c1").state is CallState.PROCESSING_AI


def test_worker_fails_a_call_over_the_max_call_bytes_setting_without_a_batch_failure(
    store: InMemoryCallStore, queue: FakeQueue
) -> None:
    [item] = ended_calls(store, queue, "c1")  # 5 bytes of packet data
    ai = FakeAIProvider()
    settings = dataclasses.replace(SETTINGS, max_call_bytes=4)

    response = worker(store, ai, queue, settings)(make_sqs_event(body(item)), None)

    assert response == {"batchItemFailures": []}
    assert queue.visibility_changes == []
    assert get(store, "c1").state is CallState.FAILED
    assert ai.calls == []


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

    async def transcribe(self, audio: CallAudio) -> str:
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
        return await super().transcribe(audio)


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
    assert "(2 attempts; last error: 503 two)" in call.failure_reason


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

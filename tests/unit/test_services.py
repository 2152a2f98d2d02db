"""Use cases against the in-memory fakes: packets, the end of a call (and the sweep that
sends a work item whose send failed), reading calls, and the store's idempotent writes."""

from __future__ import annotations

import dataclasses
import itertools
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

from callcore import services
from callcore.domain.errors import (
    CallNotAcceptingPacketsError,
    CallNotFoundError,
    InvalidTransitionError,
    SequenceConflictError,
)
from callcore.domain.model import AIResult, Call, CallState, Packet, Sentiment, WorkItem, transition_rule
from callcore.services import PacketOutcome
from tests.fakes import FakeQueue, InMemoryCallArchive, InMemoryCallStore

T0 = "2024-01-01T00:00:00.000000Z"
# Earlier than every reading of the ticking clock below.
BEFORE_ALL_TICKS = "2000-01-01T00:00:00.000000Z"


@pytest.fixture(autouse=True)
def ticking_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every reading of the clock is strictly later than the one before, so arrival order is exact."""
    ticks = itertools.count(1)
    lock = threading.Lock()

    def now_ns() -> int:
        with lock:
            return next(ticks) * 1_000

    def now_iso() -> str:
        return f"2024-01-02T00:00:00.{now_ns() // 1_000:06d}Z"

    def iso_seconds_ago(seconds: float) -> str:
        # As no time passes, only "0 s ago" is later than anything stored.
        return now_iso() if seconds <= 0 else BEFORE_ALL_TICKS

    monkeypatch.setattr(services, "now_ns", now_ns)
    monkeypatch.setattr(services, "now_iso", now_iso)
    # Ticks are microseconds apart: to the service, no time passes unless a test says so.
    monkeypatch.setattr(services, "seconds_since", lambda iso: 0.0)
    monkeypatch.setattr(services, "iso_seconds_ago", iso_seconds_ago)


def packet(sequence: int, data: str | None = None, timestamp: float = 1.0) -> Packet:
    return Packet(sequence=sequence, data=f"audio-{sequence}" if data is None else data, timestamp=timestamp)


def move(
    store: InMemoryCallStore,
    call_id: str,
    source: CallState,
    target: CallState,
    *,
    now: str = T0,
    failure_reason: str | None = None,
) -> Call:
    """One transition the way a use case makes it, with a fresh token."""
    rule = transition_rule(call_id, source, target)
    return store.transition(call_id, rule, now=now, token=services.new_token(), failure_reason=failure_reason)


def sweep(store: InMemoryCallStore, queue: FakeQueue, *, resend_after_s: float = 0.0) -> services.SweepOutcome:
    return services.sweep_processing(
        store, queue, resend_after_s=resend_after_s, processing_timeout_s=3600.0, give_up_after_s=7200.0
    )


def record_all(store: InMemoryCallStore, call_id: str, *sequences: int) -> None:
    for seq in sequences:
        assert services.record_packet(store, call_id, packet(seq)) is PacketOutcome.ACCEPTED


def run_concurrently(n: int, action: Callable[[], object]) -> list[object]:
    """Run ``action`` in ``n`` threads released together by a barrier."""
    barrier = threading.Barrier(n)

    def go() -> object:
        barrier.wait()
        return action()

    with ThreadPoolExecutor(max_workers=n) as pool:
        futures = [pool.submit(go) for _ in range(n)]
        return [f.result() for f in futures]


# --- record_packet ---------------------------------------------------------------------


def test_first_packet_is_accepted_and_creates_an_in_progress_call(store: InMemoryCallStore) -> None:
    outcome = services.record_packet(store, "c1", packet(1))

    assert outcome is PacketOutcome.ACCEPTED
    call = store.get_call("c1")
    assert call is not None
    assert call.state is CallState.IN_PROGRESS
    assert call.round == 0
    assert call.created_at == call.updated_at
    assert store.packets("c1") == [packet(1)]


def test_later_packets_are_stored_without_changing_the_call(store: InMemoryCallStore) -> None:
    record_all(store, "c1", 1)
    before = store.get_call("c1")

    record_all(store, "c1", 3, 2)

    assert store.get_call("c1") == before
    assert [p.sequence for p in store.packets("c1")] == [1, 2, 3]


def test_duplicate_packet_changes_only_the_duplicates_count(store: InMemoryCallStore) -> None:
    # GIVEN a stored packet
    services.record_packet(store, "c1", packet(1))
    before = store.get_call("c1")
    assert before is not None

    # WHEN the same sequence and data arrive again, with a new timestamp
    outcome = services.record_packet(store, "c1", packet(1, timestamp=99.0))

    # THEN it is a duplicate and only the count moved
    assert outcome is PacketOutcome.DUPLICATE
    assert store.get_call("c1") == dataclasses.replace(before, duplicates=1)
    assert store.packets("c1") == [packet(1)]


def test_same_sequence_with_different_data_is_a_conflict_and_the_stored_packet_is_unchanged(
    store: InMemoryCallStore,
) -> None:
    services.record_packet(store, "c1", packet(1, data="original"))

    with pytest.raises(SequenceConflictError) as excinfo:
        services.record_packet(store, "c1", packet(1, data="different"))

    assert excinfo.value.sequence == 1
    assert store.packets("c1") == [packet(1, data="original")]
    call = store.get_call("c1")
    assert call is not None
    assert call.duplicates == 0


def test_packet_after_end_is_refused_with_the_state_and_not_stored(store: InMemoryCallStore, queue: FakeQueue) -> None:
    record_all(store, "c1", 1)
    services.end_call(store, queue, "c1")

    with pytest.raises(CallNotAcceptingPacketsError) as excinfo:
        services.record_packet(store, "c1", packet(2))

    assert excinfo.value.state is CallState.PROCESSING_AI
    assert [p.sequence for p in store.packets("c1")] == [1]
    assert [a.sequence for a in store.arrivals("c1")] == [1]


def test_packet_for_a_failed_call_is_refused_with_state_failed(store: InMemoryCallStore, queue: FakeQueue) -> None:
    record_all(store, "c1", 1)
    services.end_call(store, queue, "c1")
    move(store, "c1", CallState.PROCESSING_AI, CallState.FAILED, failure_reason="x")

    with pytest.raises(CallNotAcceptingPacketsError) as excinfo:
        services.record_packet(store, "c1", packet(2))

    assert excinfo.value.state is CallState.FAILED


def test_retransmission_of_a_stored_packet_after_end_is_a_duplicate(store: InMemoryCallStore, queue: FakeQueue) -> None:
    # GIVEN a packet stored before the end of its call
    record_all(store, "c1", 1)
    services.end_call(store, queue, "c1")

    # WHEN the PBX retransmits it
    outcome = services.record_packet(store, "c1", packet(1))

    # THEN it is a duplicate, not a 409: the packet is stored and part of the work
    assert outcome is PacketOutcome.DUPLICATE
    call = store.get_call("c1")
    assert call is not None
    assert call.duplicates == 1
    assert call.state is CallState.PROCESSING_AI


def test_conflicting_packet_after_end_is_still_a_sequence_conflict(store: InMemoryCallStore, queue: FakeQueue) -> None:
    record_all(store, "c1", 1)
    services.end_call(store, queue, "c1")

    with pytest.raises(SequenceConflictError):
        services.record_packet(store, "c1", packet(1, data="different"))

    assert store.packets("c1") == [packet(1)]


def test_concurrent_identical_packets_are_accepted_exactly_once(store: InMemoryCallStore) -> None:
    outcomes = run_concurrently(16, lambda: services.record_packet(store, "c1", packet(1)))

    assert outcomes.count(PacketOutcome.ACCEPTED) == 1
    assert outcomes.count(PacketOutcome.DUPLICATE) == 15
    call = store.get_call("c1")
    assert call is not None
    assert call.duplicates == 15
    assert store.packets("c1") == [packet(1)]


def test_concurrent_first_packets_of_a_new_call_are_all_stored(store: InMemoryCallStore) -> None:
    seqs = iter(range(16))
    lock = threading.Lock()

    def next_packet() -> PacketOutcome:
        with lock:
            seq = next(seqs)
        return services.record_packet(store, "c1", packet(seq))

    outcomes = run_concurrently(16, next_packet)

    assert outcomes == [PacketOutcome.ACCEPTED] * 16
    assert [p.sequence for p in store.packets("c1")] == list(range(16))


# --- end_call --------------------------------------------------------------------------


def test_end_moves_the_call_to_processing_ai_and_sends_one_work_item_of_round_1(
    store: InMemoryCallStore, queue: FakeQueue
) -> None:
    record_all(store, "c1", 1, 2)

    outcome = services.end_call(store, queue, "c1")

    assert outcome == services.EndOutcome(state=CallState.PROCESSING_AI, processing=True, moved=True)
    assert queue.sent == [WorkItem(call_id="c1", round=1)]
    call = store.get_call("c1")
    assert call is not None
    assert call.state is CallState.PROCESSING_AI
    assert call.round == 1


def test_repeated_end_is_still_processing_and_sends_nothing_more(store: InMemoryCallStore, queue: FakeQueue) -> None:
    record_all(store, "c1", 1)
    services.end_call(store, queue, "c1")

    outcome = services.end_call(store, queue, "c1")

    assert outcome == services.EndOutcome(state=CallState.PROCESSING_AI, processing=True)
    assert queue.sent == [WorkItem(call_id="c1", round=1)]


def test_concurrent_ends_send_exactly_one_work_item(store: InMemoryCallStore, queue: FakeQueue) -> None:
    record_all(store, "c1", 1)

    outcomes = [
        o
        for o in run_concurrently(16, lambda: services.end_call(store, queue, "c1"))
        if isinstance(o, services.EndOutcome)
    ]

    # One of them moved the call; the others found it moved.
    assert sorted(o.moved for o in outcomes) == [False] * 15 + [True]  # 16: each returned an EndOutcome
    assert {(o.state, o.processing) for o in outcomes} == {(CallState.PROCESSING_AI, True)}
    assert queue.sent == [WorkItem(call_id="c1", round=1)]


def test_end_of_an_unknown_call_raises_call_not_found(store: InMemoryCallStore, queue: FakeQueue) -> None:
    with pytest.raises(CallNotFoundError):
        services.end_call(store, queue, "nope")

    assert queue.sent == []
    assert store.get_call("nope") is None


def test_end_with_last_sequence_records_it_on_the_call(store: InMemoryCallStore, queue: FakeQueue) -> None:
    record_all(store, "c1", 1, 2)

    services.end_call(store, queue, "c1", last_sequence=5)

    call = store.get_call("c1")
    assert call is not None
    assert call.last_sequence == 5


def test_end_when_the_queue_is_down_still_answers_processing_and_leaves_the_item_unsent(
    store: InMemoryCallStore, queue: FakeQueue
) -> None:
    # GIVEN an open call and an SQS outage
    record_all(store, "c1", 1)
    queue.fail_next = True

    # WHEN the call ends
    outcome = services.end_call(store, queue, "c1")

    # THEN the end is accepted (202): the call stays ended, and its round's work item is
    # known not to be on the queue, for the sweeper to send
    assert outcome == services.EndOutcome(state=CallState.PROCESSING_AI, processing=True, moved=True)
    assert queue.sent == []
    call = store.get_call("c1")
    assert call is not None
    assert call.state is CallState.PROCESSING_AI
    assert (call.round, call.enqueued_round) == (1, 0)


def test_packets_are_refused_after_an_end_whose_send_failed(store: InMemoryCallStore, queue: FakeQueue) -> None:
    record_all(store, "c1", 1)
    queue.fail_next = True
    services.end_call(store, queue, "c1")

    with pytest.raises(CallNotAcceptingPacketsError) as excinfo:
        services.record_packet(store, "c1", packet(2))

    assert excinfo.value.state is CallState.PROCESSING_AI
    assert [p.sequence for p in store.packets("c1")] == [1]


@pytest.mark.parametrize("seconds_later", [0.0, 31.0, 86_400.0])
def test_a_repeated_end_after_a_failed_send_sends_nothing_however_late(
    store: InMemoryCallStore, queue: FakeQueue, monkeypatch: pytest.MonkeyPatch, seconds_later: float
) -> None:
    # GIVEN an end whose send failed
    record_all(store, "c1", 1)
    queue.fail_next = True
    services.end_call(store, queue, "c1")

    # WHEN the PBX repeats the end, at once or much later
    monkeypatch.setattr(services, "seconds_since", lambda iso: seconds_later)
    outcome = services.end_call(store, queue, "c1")

    # THEN it is told the call is processing, and the sending is left to the sweeper
    assert outcome == services.EndOutcome(state=CallState.PROCESSING_AI, processing=True)
    assert queue.sent == []
    call = store.get_call("c1")
    assert call is not None
    assert (call.state, call.round, call.enqueued_round) == (CallState.PROCESSING_AI, 1, 0)


def test_the_sweeper_sends_the_work_item_of_an_end_whose_send_failed_exactly_once(
    store: InMemoryCallStore, queue: FakeQueue
) -> None:
    # GIVEN an end whose send failed, and SQS back
    record_all(store, "c1", 1)
    queue.fail_next = True
    services.end_call(store, queue, "c1")

    # WHEN the sweeper runs, with no delay before resending
    first = sweep(store, queue, resend_after_s=0)

    # THEN the round's one work item is sent and recorded
    assert first == services.SweepOutcome(resent=1, failed=0)
    assert queue.sent == [WorkItem(call_id="c1", round=1)]
    call = store.get_call("c1")
    assert call is not None
    assert (call.state, call.enqueued_round) == (CallState.PROCESSING_AI, 1)

    # ... and neither a second sweep nor a repeated end sends it again
    assert sweep(store, queue, resend_after_s=0) == services.SweepOutcome(resent=0, failed=0)
    assert services.end_call(store, queue, "c1").processing
    assert queue.sent == [WorkItem(call_id="c1", round=1)]


def test_the_sweeper_leaves_an_unsent_item_alone_while_its_end_may_still_be_sending(
    store: InMemoryCallStore, queue: FakeQueue
) -> None:
    # GIVEN an end whose send is not recorded, made just now (the clock does not move)
    record_all(store, "c1", 1)
    queue.fail_next = True
    services.end_call(store, queue, "c1")

    # WHEN the sweeper runs with its usual delay
    outcome = sweep(store, queue, resend_after_s=30)

    # THEN it sends nothing yet: a concurrent end could still be sending the item
    assert outcome == services.SweepOutcome(resent=0, failed=0)
    assert queue.sent == []


def test_the_sweeper_keeps_the_item_for_the_next_sweep_when_sqs_is_still_down(
    store: InMemoryCallStore, queue: FakeQueue
) -> None:
    record_all(store, "c1", 1)
    queue.fail_next = True
    services.end_call(store, queue, "c1")
    queue.fail_next = True

    sweep(store, queue)
    assert queue.sent == []

    assert sweep(store, queue) == services.SweepOutcome(resent=1, failed=0)
    assert queue.sent == [WorkItem(call_id="c1", round=1)]


def test_end_of_a_completed_call_reports_completed_and_not_processing(
    store: InMemoryCallStore, queue: FakeQueue
) -> None:
    record_all(store, "c1", 1)
    services.end_call(store, queue, "c1")
    move(store, "c1", CallState.PROCESSING_AI, CallState.COMPLETED)

    outcome = services.end_call(store, queue, "c1")

    assert outcome == services.EndOutcome(state=CallState.COMPLETED, processing=False)
    assert queue.sent == [WorkItem(call_id="c1", round=1)]


def test_end_of_a_failed_call_reports_failed_and_sends_nothing(store: InMemoryCallStore, queue: FakeQueue) -> None:
    record_all(store, "c1", 1)
    services.end_call(store, queue, "c1")
    move(store, "c1", CallState.PROCESSING_AI, CallState.FAILED, failure_reason="x")

    outcome = services.end_call(store, queue, "c1")

    assert outcome == services.EndOutcome(state=CallState.FAILED, processing=False)
    assert len(queue.sent) == 1


# --- get_call --------------------------------------------------------------------------


def test_get_call_reports_received_and_missing_packets(store: InMemoryCallStore) -> None:
    record_all(store, "c1", 1, 2, 5, 4)
    services.record_packet(store, "c1", packet(2))

    details = services.get_call(store, InMemoryCallArchive(), "c1")

    assert details.call.call_id == "c1"
    assert details.call.state is CallState.IN_PROGRESS
    assert details.packets.received == 4
    assert details.packets.missing == [3]
    assert details.packets.missing_count == 1
    assert details.packets.highest_sequence == 5
    assert details.packets.out_of_order == 1
    assert details.packets.duplicates == 1


def test_get_call_reports_the_tail_up_to_last_sequence_as_missing(store: InMemoryCallStore, queue: FakeQueue) -> None:
    record_all(store, "c1", 1, 2)
    services.end_call(store, queue, "c1", last_sequence=4)

    details = services.get_call(store, InMemoryCallArchive(), "c1")

    assert details.packets.missing == [3, 4]


def test_get_call_of_an_unknown_call_raises_call_not_found(store: InMemoryCallStore) -> None:
    with pytest.raises(CallNotFoundError) as excinfo:
        services.get_call(store, InMemoryCallArchive(), "nope")

    assert excinfo.value.call_id == "nope"


# --- archive_call ----------------------------------------------------------------------


def finished(store: InMemoryCallStore, queue: FakeQueue, call_id: str, state: CallState) -> Call:
    """A call with packets 0 to 2 (1 twice), ended, and COMPLETED with a result or FAILED with a reason."""
    record_all(store, call_id, 0, 2, 1)
    services.record_packet(store, call_id, packet(1))
    services.end_call(store, queue, call_id, last_sequence=3)
    if state is CallState.COMPLETED:
        rule = transition_rule(call_id, CallState.PROCESSING_AI, CallState.COMPLETED)
        result = AIResult("hello there", Sentiment("POSITIVE", 0.9))
        return store.transition(call_id, rule, now=T0, token=services.new_token(), result=result)
    return move(store, call_id, CallState.PROCESSING_AI, CallState.FAILED, failure_reason="AI gave up")


@pytest.mark.parametrize("state", [CallState.COMPLETED, CallState.FAILED])
def test_archiving_a_finished_call_keeps_its_record_and_get_shows_it_without_its_packets(
    store: InMemoryCallStore, queue: FakeQueue, state: CallState, monkeypatch: pytest.MonkeyPatch
) -> None:
    archive = InMemoryCallArchive()
    before = finished(store, queue, "c1", state)
    shown_before = services.get_call(store, archive, "c1")

    call = services.archive_call(store, archive, "c1")

    assert call.state is CallState.ARCHIVED
    record = archive.find("c1")
    assert record is not None
    assert record["timeline"]["finished_as"] == state.value
    assert record["timeline"]["archived_at"] == call.updated_at
    assert record["ai"]["transcript"] == before.transcript
    assert record["failure_reason"] == before.failure_reason
    # The packets leave with their TTL: GET must not need them any more.
    monkeypatch.setattr(store, "arrivals", lambda call_id: pytest.fail("GET read the packets of an archived call"))
    shown = services.get_call(store, archive, "c1")
    assert shown.call.state is CallState.ARCHIVED
    assert shown.packets == shown_before.packets
    assert (shown.packets.received, shown.packets.duplicates, shown.packets.missing) == (3, 1, [3])
    assert shown.call.transcript == before.transcript


def test_archiving_again_changes_nothing(store: InMemoryCallStore, queue: FakeQueue) -> None:
    archive = InMemoryCallArchive()
    finished(store, queue, "c1", CallState.COMPLETED)
    first = services.archive_call(store, archive, "c1")

    assert services.archive_call(store, archive, "c1") == first


@pytest.mark.parametrize("state", [CallState.IN_PROGRESS, CallState.PROCESSING_AI])
def test_a_call_not_finished_is_not_archived(store: InMemoryCallStore, queue: FakeQueue, state: CallState) -> None:
    archive = InMemoryCallArchive()
    record_all(store, "c1", 0)
    if state is CallState.PROCESSING_AI:
        services.end_call(store, queue, "c1")

    with pytest.raises(InvalidTransitionError) as excinfo:
        services.archive_call(store, archive, "c1")

    assert excinfo.value.current is state
    assert archive.find("c1") is None
    assert store.get_call("c1").state is state  # type: ignore[union-attr]


def test_archiving_an_unknown_call_raises_call_not_found(store: InMemoryCallStore) -> None:
    with pytest.raises(CallNotFoundError):
        services.archive_call(store, InMemoryCallArchive(), "nope")


def test_an_archived_call_cannot_be_retried(store: InMemoryCallStore, queue: FakeQueue) -> None:
    finished(store, queue, "c1", CallState.FAILED)
    services.archive_call(store, InMemoryCallArchive(), "c1")

    with pytest.raises(InvalidTransitionError):
        services.retry_call(store, queue, "c1")


def archive_and_retry_at_once(
    store: InMemoryCallStore, queue: FakeQueue, archive: InMemoryCallArchive, call_id: str
) -> list[str]:
    """Archive and retry ``call_id`` in two threads released together; the names of those that went through."""
    barrier = threading.Barrier(2)

    def go(name: str) -> str | None:
        barrier.wait()
        try:
            if name == "archive":
                services.archive_call(store, archive, call_id)
            else:
                services.retry_call(store, queue, call_id)
        except InvalidTransitionError:
            return None
        return name

    with ThreadPoolExecutor(max_workers=2) as pool:
        return [name for name in pool.map(go, ["archive", "retry"]) if name]


def test_archive_and_retry_racing_on_a_failed_call_end_in_exactly_one_of_them(
    store: InMemoryCallStore, queue: FakeQueue
) -> None:
    archive = InMemoryCallArchive()
    for n in range(50):
        call_id = f"race-{n}"
        finished(store, queue, call_id, CallState.FAILED)
        sent_before = len(queue.sent)

        won = archive_and_retry_at_once(store, queue, archive, call_id)

        assert len(won) == 1, won
        state = store.get_call(call_id).state  # type: ignore[union-attr]
        assert state is (CallState.ARCHIVED if won == ["archive"] else CallState.PROCESSING_AI)
        assert len(queue.sent) - sent_before == (1 if won == ["retry"] else 0)


def test_archive_due_archives_only_finished_calls_unchanged_for_long_enough(
    store: InMemoryCallStore, queue: FakeQueue
) -> None:
    archive = InMemoryCallArchive()
    finished(store, queue, "done", CallState.COMPLETED)
    finished(store, queue, "gave-up", CallState.FAILED)
    record_all(store, "live", 0)

    # No time passes in these tests: "older than 0 s" is every call, "older than a day" none.
    assert services.archive_due(store, archive, older_than_s=86_400) == 0
    assert services.archive_due(store, archive, older_than_s=0) == 2

    states = {c: store.get_call(c).state for c in ("done", "gave-up", "live")}  # type: ignore[union-attr]
    assert states == {"done": CallState.ARCHIVED, "gave-up": CallState.ARCHIVED, "live": CallState.IN_PROGRESS}


# --- list_calls ------------------------------------------------------------------------


@pytest.fixture
def three_completed_calls(store: InMemoryCallStore, queue: FakeQueue) -> Iterator[None]:
    """c-a, c-b, c-c completed in that order, and c-open still IN_PROGRESS."""
    for call_id in ("c-a", "c-b", "c-c", "c-open"):
        record_all(store, call_id, 1)
    for i, call_id in enumerate(("c-a", "c-b", "c-c")):
        services.end_call(store, queue, call_id)
        move(store, call_id, CallState.PROCESSING_AI, CallState.COMPLETED, now=f"2024-02-01T00:00:0{i}.000000Z")
    yield


@pytest.mark.usefixtures("three_completed_calls")
def test_list_calls_returns_calls_in_one_state_most_recently_changed_first(store: InMemoryCallStore) -> None:
    page = services.list_calls(store, CallState.COMPLETED, limit=10, cursor=None)

    assert [c.call_id for c in page.calls] == ["c-c", "c-b", "c-a"]
    assert page.next_cursor is None


@pytest.mark.usefixtures("three_completed_calls")
def test_list_calls_pages_with_a_cursor_without_repeats_or_gaps(store: InMemoryCallStore) -> None:
    first = services.list_calls(store, CallState.COMPLETED, limit=2, cursor=None)
    assert first.next_cursor is not None
    second = services.list_calls(store, CallState.COMPLETED, limit=2, cursor=first.next_cursor)

    assert [c.call_id for c in first.calls] == ["c-c", "c-b"]
    assert [c.call_id for c in second.calls] == ["c-a"]
    assert second.next_cursor is None


@pytest.mark.parametrize("cursor", ["not base64 !", "bm90IGpzb24", "WzFd"])  # junk, "not json", "[1]"
def test_list_calls_with_a_cursor_it_did_not_return_raises_value_error(store: InMemoryCallStore, cursor: str) -> None:
    with pytest.raises(ValueError, match="cursor"):
        services.list_calls(store, CallState.COMPLETED, limit=10, cursor=cursor)


def test_a_repeated_end_soon_after_does_not_send_a_second_work_item_while_the_first_is_unrecorded() -> None:
    # GIVEN an end whose send is not yet recorded (a concurrent end is still in flight)
    store, queue = InMemoryCallStore(), FakeQueue()
    record_all(store, "c1", 1)
    move(store, "c1", CallState.IN_PROGRESS, CallState.PROCESSING_AI)

    # WHEN another end arrives at once
    outcome = services.end_call(store, queue, "c1")

    # THEN it reports the state and sends nothing: the first request owns the send
    assert outcome.processing
    assert queue.sent == []


# --- idempotent store writes: a request resent after its answer was lost -----------------


def test_a_transition_resent_with_the_same_token_returns_the_moved_call_instead_of_refusing(
    store: InMemoryCallStore,
) -> None:
    # GIVEN an end whose write succeeded but whose answer was lost
    record_all(store, "c1", 1)
    rule = transition_rule("c1", CallState.IN_PROGRESS, CallState.PROCESSING_AI)
    first = store.transition("c1", rule, now=T0, token="end-1", last_sequence=4)

    # WHEN the same write is resent with the same token
    again = store.transition("c1", rule, now="2024-01-01T00:00:05.000000Z", token="end-1", last_sequence=4)

    # THEN it answers with the call as moved, and moves nothing a second time
    assert again == first == store.get_call("c1")
    assert (again.state, again.round, again.updated_at) == (CallState.PROCESSING_AI, 1, T0)


def test_a_transition_with_another_token_is_still_refused_with_the_current_state(store: InMemoryCallStore) -> None:
    record_all(store, "c1", 1)
    rule = transition_rule("c1", CallState.IN_PROGRESS, CallState.PROCESSING_AI)
    moved = store.transition("c1", rule, now=T0, token="end-1")

    with pytest.raises(InvalidTransitionError) as excinfo:
        store.transition("c1", rule, now=T0, token="end-2")

    assert excinfo.value.current is CallState.PROCESSING_AI
    assert excinfo.value.call == moved
    assert store.get_call("c1") == moved


def test_an_attempt_started_again_with_the_same_token_gets_the_same_number_and_counts_once(
    store: InMemoryCallStore, queue: FakeQueue
) -> None:
    # GIVEN an ended call whose first attempt was counted but whose answer was lost
    record_all(store, "c1", 1)
    services.end_call(store, queue, "c1")
    first = store.start_attempt("c1", 1, now=T0, token="attempt-1")

    # WHEN the same write is resent
    again = store.start_attempt("c1", 1, now=T0, token="attempt-1")

    # THEN it is the same attempt, counted once
    assert first is not None and again is not None
    assert (first.number, first.recording) == (again.number, again.recording) == (1, None)
    call = store.get_call("c1")
    assert call is not None
    assert call.ai_attempts == 1
    assert [(a.round, a.number) for a in call.attempts] == [(1, 1)]

    # ... while a new attempt (a new token) is the next number
    second = store.start_attempt("c1", 1, now=T0, token="attempt-2")
    assert second is not None and second.number == 2


def test_deadline_refuses_an_sdk_call_that_might_outlive_the_request(monkeypatch: pytest.MonkeyPatch) -> None:
    from callcore.adapters import aws_errors
    from callcore.domain.errors import DependencyUnavailableError

    now = [100.0]
    monkeypatch.setattr(aws_errors, "_clock", lambda: now[0])
    with aws_errors.request_deadline(9.5, 7.0):
        with aws_errors.dependency("DynamoDB"):
            pass  # 2.5 s of budget left for starting calls
        now[0] += 2.0
        with aws_errors.dependency("DynamoDB"):
            pass
        now[0] += 1.0
        with pytest.raises(DependencyUnavailableError), aws_errors.dependency("DynamoDB"):
            pytest.fail("the call must not start")
    with aws_errors.dependency("DynamoDB"):
        pass  # outside a request (the worker), nothing bounds it

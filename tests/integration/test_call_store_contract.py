"""The CallStore contract: one suite, run against the in-memory fake and DynamoDB on moto.

Every test runs twice, once with ``InMemoryCallStore`` (what the unit tests trust) and
once with ``DynamoDBCallStore`` over HTTP to the session's moto server (the tables of
template.yaml), and asserts the same observable results of both: returned values,
``get_call`` afterwards, exceptions. Where the two disagree, this suite fails, so the
fake cannot drift from the adapter.

The DynamoDB tables are shared with the rest of the session: every test uses call ids
of its own, and timestamps of its own (a year no other test uses, far in the future),
so that ordering on the shared ``by-state`` index is deterministic and no sweep ever
takes these calls for stale ones.
"""

from __future__ import annotations

import base64
import itertools
import json
from dataclasses import replace
from typing import Any

import pytest

from callcore.bootstrap import Ports
from callcore.domain.errors import CallNotFoundError, CallTooLargeError, InvalidTransitionError
from callcore.domain.model import (
    AIResult,
    Arrival,
    Attempt,
    AttemptRecord,
    Call,
    CallState,
    Packet,
    PacketStats,
    Recording,
    Sentiment,
    transition_rule,
)
from callcore.ports import MAX_BATCHED_PACKET_BYTES, CallStore, PacketWrite
from callcore.services import new_token
from tests.fakes import InMemoryCallStore

IN_PROGRESS = CallState.IN_PROGRESS
PROCESSING_AI = CallState.PROCESSING_AI
COMPLETED = CallState.COMPLETED
FAILED = CallState.FAILED
ARCHIVED = CallState.ARCHIVED


# --- fixtures and helpers ----------------------------------------------------------------


@pytest.fixture(params=["memory", "dynamodb"])
def store(request: pytest.FixtureRequest) -> CallStore:
    if request.param == "memory":
        return InMemoryCallStore()
    ports: Ports = request.getfixturevalue("ports")
    return ports.store


# Each test gets a year of its own, later than every earlier test's: its calls are the
# most recently changed of the shared index while it runs.
_years = itertools.count(3000)


class Clock:
    """Timestamps of one test alone, in ``now_iso()``'s format, later on every ``tick()``."""

    def __init__(self, year: int) -> None:
        self.year = year
        self._ticks = itertools.count(1)

    def tick(self) -> str:
        return f"{self.year:04d}-01-01T00:00:00.{next(self._ticks):06d}Z"

    @property
    def start(self) -> str:
        """Earlier than every tick of this test, later than every other earlier test's."""
        return f"{self.year:04d}-01-01T00:00:00.000000Z"


@pytest.fixture
def clock() -> Clock:
    return Clock(next(_years))


def packet(sequence: int, data: str | None = None) -> Packet:
    return Packet(
        sequence=sequence,
        data=data if data is not None else f"audio-{sequence}",
        timestamp=1_700_000_000.0 + sequence * 0.02,
    )


def add(store: CallStore, call_id: str, pkt: Packet, clock: Clock, received_at_ns: int | None = None) -> PacketWrite:
    received = received_at_ns if received_at_ns is not None else 1_000_000 + pkt.sequence
    return store.add_packet(call_id, pkt, now=clock.tick(), received_at_ns=received)


def move(store: CallStore, call_id: str, source: CallState, target: CallState, clock: Clock, **kwargs: Any) -> Call:
    """``source`` -> ``target`` with a token of its own; keyword arguments go to ``transition``."""
    rule = transition_rule(call_id, source, target)
    return store.transition(call_id, rule, now=clock.tick(), token=new_token(), **kwargs)


def open_call(store: CallStore, call_id: str, clock: Clock) -> Call:
    assert add(store, call_id, packet(0), clock).stored
    call = store.get_call(call_id)
    assert call is not None
    return call


def processing(store: CallStore, call_id: str, clock: Clock) -> Call:
    """A call in PROCESSING_AI, round 1."""
    open_call(store, call_id, clock)
    return move(store, call_id, IN_PROGRESS, PROCESSING_AI, clock)


def failed(store: CallStore, call_id: str, clock: Clock, reason: str = "AI failed permanently") -> Call:
    """A call FAILED in round 1 with ``reason``."""
    processing(store, call_id, clock)
    return move(store, call_id, PROCESSING_AI, FAILED, clock, failure_reason=reason)


def attempt_of(attempt: Attempt | None) -> tuple[int, Recording | None] | None:
    """An attempt's number and the recording it found (its call is checked on its own)."""
    return None if attempt is None else (attempt.number, attempt.recording)


def stored_call(store: CallStore, call_id: str) -> Call:
    call = store.get_call(call_id)
    assert call is not None, f"call {call_id} is not stored"
    return call


def listed_ids(store: CallStore, state: CallState, clock: Clock, mine: set[str], **kwargs: Any) -> list[str]:
    """The ids of ``mine`` that ``list_calls`` lists in ``state``, in listed order, over all pages.

    Paging stops after the first page that reaches calls older than this test's (the
    shared index holds other tests' calls after ours).
    """
    limit = kwargs.pop("limit", 100)
    seen: list[str] = []
    cursor: str | None = None
    while True:
        page = store.list_calls(state, limit=limit, cursor=cursor, **kwargs)
        assert all(call.state is state for call in page.calls)
        seen += [call.call_id for call in page.calls if call.call_id in mine]
        older = any(call.updated_at < clock.start for call in page.calls)
        if page.next_cursor is None or older:
            return seen
        cursor = page.next_cursor


def listed(store: CallStore, state: CallState, call_id: str) -> Call:
    """``call_id`` as ``list_calls`` lists it (its first page suffices: the call is this test's, the newest)."""
    page = store.list_calls(state, limit=100, cursor=None)
    matches = [call for call in page.calls if call.call_id == call_id]
    assert len(matches) == 1, f"{call_id} listed {len(matches)} times in {state.value}"
    return matches[0]


def b64(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


# --- add_packet ----------------------------------------------------------------------------


def test_the_first_packet_creates_the_call_in_progress(store: CallStore, call_id: str, clock: Clock) -> None:
    now = clock.tick()
    assert store.add_packet(call_id, packet(0), now=now, received_at_ns=1) == PacketWrite(stored=True)
    assert store.get_call(call_id) == Call(call_id=call_id, state=IN_PROGRESS, created_at=now, updated_at=now)
    assert store.packets(call_id) == [packet(0)]


def test_a_first_packet_with_a_sequence_other_than_zero_creates_the_call_too(
    store: CallStore, call_id: str, clock: Clock
) -> None:
    now = clock.tick()
    assert store.add_packet(call_id, packet(5), now=now, received_at_ns=1) == PacketWrite(stored=True)
    assert store.get_call(call_id) == Call(call_id=call_id, state=IN_PROGRESS, created_at=now, updated_at=now)
    assert store.packets(call_id) == [packet(5)]


@pytest.mark.parametrize("later_sequence", [1, 0], ids=["later-sequence", "sequence-0-after-others"])
def test_a_later_packet_is_stored_and_leaves_the_call_record_unchanged(
    store: CallStore, call_id: str, clock: Clock, later_sequence: int
) -> None:
    first_sequence = 7
    add(store, call_id, packet(first_sequence), clock)
    before = stored_call(store, call_id)
    assert add(store, call_id, packet(later_sequence), clock) == PacketWrite(stored=True)
    assert store.get_call(call_id) == before
    assert store.packets(call_id) == sorted([packet(first_sequence), packet(later_sequence)], key=lambda p: p.sequence)


@pytest.mark.parametrize("sequence", [0, 3], ids=["sequence-0", "sequence-3"])
def test_the_same_sequence_again_is_not_stored_and_returns_the_stored_packet(
    store: CallStore, call_id: str, clock: Clock, sequence: int
) -> None:
    original = packet(sequence, data="the first audio")
    add(store, call_id, original, clock)
    before = stored_call(store, call_id)
    again = add(store, call_id, packet(sequence, data="other audio"), clock, received_at_ns=9_999_999)
    assert again == PacketWrite(stored=False, existing=original, call_state=None)
    assert store.packets(call_id) == [original]
    assert store.arrivals(call_id) == [Arrival(sequence=sequence, received_at_ns=1_000_000 + sequence)]
    assert store.get_call(call_id) == before


@pytest.mark.parametrize("sequence", [0, 4], ids=["sequence-0", "sequence-4"])
def test_a_new_packet_after_the_call_left_in_progress_is_refused_with_the_calls_state(
    store: CallStore, call_id: str, clock: Clock, sequence: int
) -> None:
    add(store, call_id, packet(1), clock)
    move(store, call_id, IN_PROGRESS, PROCESSING_AI, clock)
    before = stored_call(store, call_id)
    assert add(store, call_id, packet(sequence), clock) == PacketWrite(stored=False, call_state=PROCESSING_AI)
    assert store.packets(call_id) == [packet(1)]
    assert store.get_call(call_id) == before


@pytest.mark.parametrize("sequence", [0, 2], ids=["sequence-0", "sequence-2"])
def test_a_repeated_packet_after_the_call_left_in_progress_reports_the_stored_packet_and_the_state(
    store: CallStore, call_id: str, clock: Clock, sequence: int
) -> None:
    add(store, call_id, packet(sequence), clock)
    move(store, call_id, IN_PROGRESS, PROCESSING_AI, clock)
    before = move(store, call_id, PROCESSING_AI, FAILED, clock, failure_reason="gave up")
    write = add(store, call_id, packet(sequence, data="other audio"), clock)
    assert write == PacketWrite(stored=False, existing=packet(sequence), call_state=FAILED)
    assert store.packets(call_id) == [packet(sequence)]
    assert store.get_call(call_id) == before


# --- add_packets (the batch route) ---------------------------------------------------------


def add_batch(
    store: CallStore, call_id: str, packets: list[Packet], clock: Clock, received_at_ns: int = 5_000_000
) -> list[PacketWrite]:
    return store.add_packets(call_id, packets, now=clock.tick(), received_at_ns=received_at_ns)


def test_a_first_batch_creates_the_call_and_stores_each_packet(store: CallStore, call_id: str, clock: Clock) -> None:
    now = clock.tick()
    sent = [packet(s) for s in (3, 1, 12, 2)]  # across two slots, out of order
    assert store.add_packets(call_id, sent, now=now, received_at_ns=100) == [PacketWrite(stored=True)] * 4
    assert store.get_call(call_id) == Call(call_id=call_id, state=IN_PROGRESS, created_at=now, updated_at=now)
    assert store.packets(call_id) == sorted(sent, key=lambda p: p.sequence)


def test_a_batchs_packets_arrive_in_its_order_one_nanosecond_apart(
    store: CallStore, call_id: str, clock: Clock
) -> None:
    add_batch(store, call_id, [packet(s) for s in (2, 0, 1)], clock, received_at_ns=100)
    assert store.arrivals(call_id) == [Arrival(2, 100), Arrival(0, 101), Arrival(1, 102)]


def test_a_batch_with_a_sequence_twice_is_refused_and_stores_nothing(
    store: CallStore, call_id: str, clock: Clock
) -> None:
    with pytest.raises(ValueError, match="distinct"):
        add_batch(store, call_id, [packet(1), packet(1)], clock)
    assert store.get_call(call_id) is None
    assert store.packets(call_id) == []


def test_a_batch_over_stored_sequences_returns_them_and_stores_the_rest(
    store: CallStore, call_id: str, clock: Clock
) -> None:
    add_batch(store, call_id, [packet(0), packet(1, data="first")], clock)
    before = stored_call(store, call_id)
    writes = add_batch(store, call_id, [packet(1, data="second"), packet(2), packet(11), packet(0)], clock)
    assert writes == [
        PacketWrite(stored=False, existing=packet(1, data="first")),
        PacketWrite(stored=True),
        PacketWrite(stored=True),
        PacketWrite(stored=False, existing=packet(0)),
    ]
    assert store.packets(call_id) == [packet(0), packet(1, data="first"), packet(2), packet(11)]
    assert store.get_call(call_id) == before


def test_a_batch_after_the_call_left_in_progress_reports_stored_packets_and_the_state(
    store: CallStore, call_id: str, clock: Clock
) -> None:
    add_batch(store, call_id, [packet(0), packet(1)], clock)
    move(store, call_id, IN_PROGRESS, PROCESSING_AI, clock)
    writes = add_batch(store, call_id, [packet(1), packet(2), packet(30)], clock)
    assert writes == [
        PacketWrite(stored=False, existing=packet(1), call_state=PROCESSING_AI),
        PacketWrite(stored=False, call_state=PROCESSING_AI),
        PacketWrite(stored=False, call_state=PROCESSING_AI),
    ]
    assert store.packets(call_id) == [packet(0), packet(1)]


@pytest.mark.parametrize("first", ["single", "batch"])
def test_a_sequence_is_stored_once_whichever_route_stored_it_first(
    store: CallStore, call_id: str, clock: Clock, first: str
) -> None:
    # A call's first packet fixes where its packets live; every later packet, by either
    # route, meets what is stored there.
    if first == "single":
        add(store, call_id, packet(4, data="first"), clock)
    else:
        add_batch(store, call_id, [packet(4, data="first")], clock)
    assert add(store, call_id, packet(4, data="again"), clock) == PacketWrite(
        stored=False, existing=packet(4, data="first")
    )
    assert add_batch(store, call_id, [packet(4, data="again"), packet(5)], clock) == [
        PacketWrite(stored=False, existing=packet(4, data="first")),
        PacketWrite(stored=True),
    ]
    assert add(store, call_id, packet(6), clock) == PacketWrite(stored=True)
    move(store, call_id, IN_PROGRESS, PROCESSING_AI, clock)
    assert add(store, call_id, packet(6), clock) == PacketWrite(
        stored=False, existing=packet(6), call_state=PROCESSING_AI
    )
    assert add(store, call_id, packet(7), clock) == PacketWrite(stored=False, call_state=PROCESSING_AI)
    assert store.packets(call_id) == [packet(4, data="first"), packet(5), packet(6)]
    assert sorted(a.sequence for a in store.arrivals(call_id)) == [4, 5, 6]


def test_a_packet_too_large_for_a_slot_is_refused_on_a_batched_call_and_stored_on_a_single_one(
    store: CallStore, call_id: str, clock: Clock
) -> None:
    big = packet(9, data="x" * (MAX_BATCHED_PACKET_BYTES + 1))
    add_batch(store, call_id, [packet(0)], clock)
    with pytest.raises(CallTooLargeError):
        add(store, call_id, big, clock)
    assert store.packets(call_id) == [packet(0)]
    other = f"{call_id}-single"
    add(store, other, packet(0), clock)
    assert add(store, other, big, clock) == PacketWrite(stored=True)


@pytest.mark.parametrize(
    "data",
    [
        base64.b64encode(bytes(range(256)) * 2).decode(),  # canonical base64: kept as its bytes
        base64.urlsafe_b64encode(bytes(range(256))).decode(),  # another alphabet: kept as text
        "QQ",  # unpadded
        "not base64 at all, é",
        "",
    ],
    ids=["base64", "urlsafe", "unpadded", "text", "empty"],
)
def test_a_batched_packets_data_timestamp_and_format_come_back_exactly(
    store: CallStore, call_id: str, clock: Clock, data: str
) -> None:
    sent = Packet(sequence=3, data=data, timestamp=1_700_000_000.1234567, audio_format="pcm16/16000")
    plain = Packet(sequence=4, data=data, timestamp=0.5)
    add_batch(store, call_id, [sent, plain], clock)
    assert store.packets(call_id) == [sent, plain]


def test_packets_max_bytes_counts_a_batched_calls_packets_too(store: CallStore, call_id: str, clock: Clock) -> None:
    add_batch(store, call_id, [packet(s, data="x" * 10) for s in range(3)], clock)
    assert len(store.packets(call_id, max_bytes=30)) == 3
    with pytest.raises(CallTooLargeError):
        store.packets(call_id, max_bytes=29)


# --- count_duplicate -----------------------------------------------------------------------


def test_count_duplicate_adds_one_to_the_calls_duplicates_and_nothing_else(
    store: CallStore, call_id: str, clock: Clock
) -> None:
    before = open_call(store, call_id, clock)
    store.count_duplicate(call_id, token="t1")
    store.count_duplicate(call_id, token="t2")
    assert store.get_call(call_id) == Call(
        call_id=call_id, state=IN_PROGRESS, created_at=before.created_at, updated_at=before.updated_at, duplicates=2
    )


def test_count_duplicate_adds_count_when_given(store: CallStore, call_id: str, clock: Clock) -> None:
    open_call(store, call_id, clock)
    store.count_duplicate(call_id, token=new_token(), count=3)
    store.count_duplicate(call_id, token=new_token())
    assert stored_call(store, call_id).duplicates == 4


def test_count_duplicate_resent_with_the_same_token_counts_once(store: CallStore, call_id: str, clock: Clock) -> None:
    open_call(store, call_id, clock)
    store.count_duplicate(call_id, token="t1")
    store.count_duplicate(call_id, token="t1")  # the same write, resent after its answer was lost
    call = store.get_call(call_id)
    assert call is not None and call.duplicates == 1


def test_count_duplicate_of_an_unknown_call_raises_call_not_found_and_creates_nothing(
    store: CallStore, call_id: str
) -> None:
    with pytest.raises(CallNotFoundError):
        store.count_duplicate(call_id, token="t1")
    assert store.get_call(call_id) is None


# --- transition ----------------------------------------------------------------------------


def test_a_transition_moves_the_call_sets_updated_at_and_returns_the_call_as_stored(
    store: CallStore, call_id: str, clock: Clock
) -> None:
    opened = open_call(store, call_id, clock)
    now = clock.tick()
    rule = transition_rule(call_id, IN_PROGRESS, PROCESSING_AI)
    moved = store.transition(call_id, rule, now=now, token=new_token())
    assert moved == Call(call_id=call_id, state=PROCESSING_AI, created_at=opened.created_at, updated_at=now, round=1)
    assert store.get_call(call_id) == moved


def test_a_transition_from_another_state_than_the_rules_source_is_refused_with_the_current_call(
    store: CallStore, call_id: str, clock: Clock
) -> None:
    current = processing(store, call_id, clock)
    with pytest.raises(InvalidTransitionError) as refused:
        move(store, call_id, FAILED, PROCESSING_AI, clock)
    assert refused.value.current is PROCESSING_AI
    assert refused.value.target is PROCESSING_AI
    assert refused.value.call == current
    assert store.get_call(call_id) == current


def test_a_transition_of_an_unknown_call_raises_call_not_found_and_creates_nothing(
    store: CallStore, call_id: str, clock: Clock
) -> None:
    with pytest.raises(CallNotFoundError):
        move(store, call_id, IN_PROGRESS, PROCESSING_AI, clock)
    assert store.get_call(call_id) is None


def test_a_transition_outside_the_expected_round_is_refused(store: CallStore, call_id: str, clock: Clock) -> None:
    current = processing(store, call_id, clock)
    with pytest.raises(InvalidTransitionError) as refused:
        move(store, call_id, PROCESSING_AI, COMPLETED, clock, expected_round=2)
    assert refused.value.current is PROCESSING_AI
    assert refused.value.call == current
    assert store.get_call(call_id) == current


def test_a_transition_in_the_expected_round_goes_through(store: CallStore, call_id: str, clock: Clock) -> None:
    processing(store, call_id, clock)
    moved = move(store, call_id, PROCESSING_AI, FAILED, clock, expected_round=1, failure_reason="no luck")
    assert (moved.state, moved.round, moved.failure_reason) == (FAILED, 1, "no luck")
    assert store.get_call(call_id) == moved


def test_every_entry_into_processing_ai_starts_a_new_round_and_no_other_transition_does(
    store: CallStore, call_id: str, clock: Clock
) -> None:
    open_call(store, call_id, clock)
    rounds = [
        move(store, call_id, IN_PROGRESS, PROCESSING_AI, clock).round,
        move(store, call_id, PROCESSING_AI, FAILED, clock, failure_reason="first").round,
        move(store, call_id, FAILED, PROCESSING_AI, clock).round,
        move(store, call_id, PROCESSING_AI, FAILED, clock, failure_reason="second").round,
        move(store, call_id, FAILED, PROCESSING_AI, clock).round,
        move(store, call_id, PROCESSING_AI, COMPLETED, clock).round,
        move(store, call_id, COMPLETED, ARCHIVED, clock).round,
    ]
    assert rounds == [1, 1, 2, 2, 3, 3, 3]
    assert stored_call(store, call_id).round == 3


def test_a_transition_to_failed_stores_the_failure_reason(store: CallStore, call_id: str, clock: Clock) -> None:
    call = failed(store, call_id, clock, reason="the audio cannot be decoded")
    assert call.failure_reason == "the audio cannot be decoded"
    assert call.reason_for_failure == "the audio cannot be decoded"
    assert store.get_call(call_id) == call


def test_retrying_a_failed_call_keeps_its_failure_reason_stored_but_not_shown(
    store: CallStore, call_id: str, clock: Clock
) -> None:
    failed(store, call_id, clock, reason="timed out")
    retried = move(store, call_id, FAILED, PROCESSING_AI, clock)
    assert retried.failure_reason == "timed out"
    assert retried.reason_for_failure is None
    assert store.get_call(call_id) == retried


def test_completing_a_call_clears_its_failure_reason(store: CallStore, call_id: str, clock: Clock) -> None:
    failed(store, call_id, clock, reason="timed out")
    move(store, call_id, FAILED, PROCESSING_AI, clock)
    completed = move(store, call_id, PROCESSING_AI, COMPLETED, clock)
    assert completed.failure_reason is None
    assert store.get_call(call_id) == completed


def test_archiving_a_failed_call_keeps_its_failure_reason(store: CallStore, call_id: str, clock: Clock) -> None:
    failed(store, call_id, clock, reason="timed out")
    archived = move(store, call_id, FAILED, ARCHIVED, clock)
    assert archived.failure_reason == "timed out"
    assert store.get_call(call_id) == archived


def test_a_transition_with_a_result_stores_the_transcript_its_truncation_and_the_sentiment(
    store: CallStore, call_id: str, clock: Clock
) -> None:
    processing(store, call_id, clock)
    result = AIResult("hello, thanks for calling", Sentiment("POSITIVE", 0.875), transcript_truncated=True)
    completed = move(store, call_id, PROCESSING_AI, COMPLETED, clock, result=result)
    assert (completed.transcript, completed.transcript_truncated, completed.sentiment) == (
        "hello, thanks for calling",
        True,
        Sentiment("POSITIVE", 0.875),
    )
    assert store.get_call(call_id) == completed


def test_a_transition_without_a_result_keeps_the_stored_result(store: CallStore, call_id: str, clock: Clock) -> None:
    processing(store, call_id, clock)
    result = AIResult(transcript="hi", sentiment=Sentiment("NEGATIVE", 0.25))
    move(store, call_id, PROCESSING_AI, COMPLETED, clock, result=result)
    archived = move(store, call_id, COMPLETED, ARCHIVED, clock)
    assert (archived.transcript, archived.transcript_truncated, archived.sentiment) == ("hi", False, result.sentiment)
    assert store.get_call(call_id) == archived


def test_a_transition_with_last_sequence_stores_it_and_a_later_one_without_keeps_it(
    store: CallStore, call_id: str, clock: Clock
) -> None:
    open_call(store, call_id, clock)
    ended = move(store, call_id, IN_PROGRESS, PROCESSING_AI, clock, last_sequence=41)
    assert ended.last_sequence == 41
    assert stored_call(store, call_id).last_sequence == 41
    assert move(store, call_id, PROCESSING_AI, COMPLETED, clock).last_sequence == 41
    assert stored_call(store, call_id).last_sequence == 41


def test_the_same_token_again_after_success_returns_the_moved_call_and_changes_nothing(
    store: CallStore, call_id: str, clock: Clock
) -> None:
    open_call(store, call_id, clock)
    rule = transition_rule(call_id, IN_PROGRESS, PROCESSING_AI)
    token = new_token()
    moved = store.transition(call_id, rule, now=clock.tick(), token=token, last_sequence=3)
    again = store.transition(call_id, rule, now=clock.tick(), token=token, last_sequence=3)
    assert again == moved
    assert store.get_call(call_id) == moved


def test_a_different_token_after_success_is_refused(store: CallStore, call_id: str, clock: Clock) -> None:
    open_call(store, call_id, clock)
    rule = transition_rule(call_id, IN_PROGRESS, PROCESSING_AI)
    moved = store.transition(call_id, rule, now=clock.tick(), token=new_token())
    with pytest.raises(InvalidTransitionError) as refused:
        store.transition(call_id, rule, now=clock.tick(), token=new_token())
    assert refused.value.current is PROCESSING_AI
    assert refused.value.call == moved
    assert store.get_call(call_id) == moved


def test_an_earlier_token_is_refused_once_a_later_transition_went_through(
    store: CallStore, call_id: str, clock: Clock
) -> None:
    open_call(store, call_id, clock)
    rule = transition_rule(call_id, IN_PROGRESS, PROCESSING_AI)
    first = new_token()
    store.transition(call_id, rule, now=clock.tick(), token=first)
    completed = move(store, call_id, PROCESSING_AI, COMPLETED, clock)
    with pytest.raises(InvalidTransitionError) as refused:
        store.transition(call_id, rule, now=clock.tick(), token=first)
    assert refused.value.current is COMPLETED
    assert store.get_call(call_id) == completed


# --- start_attempt -------------------------------------------------------------------------


def test_start_attempt_numbers_attempts_across_rounds_and_keeps_their_history(
    store: CallStore, call_id: str, clock: Clock
) -> None:
    processing(store, call_id, clock)
    started = [clock.tick() for _ in range(3)]
    assert attempt_of(store.start_attempt(call_id, 1, now=started[0], token=new_token())) == (1, None)
    assert attempt_of(store.start_attempt(call_id, 1, now=started[1], token=new_token())) == (2, None)
    move(store, call_id, PROCESSING_AI, FAILED, clock, failure_reason="gave up")
    move(store, call_id, FAILED, PROCESSING_AI, clock)
    assert attempt_of(store.start_attempt(call_id, 2, now=started[2], token=new_token())) == (3, None)
    call = stored_call(store, call_id)
    assert call.ai_attempts == 3
    assert call.attempts == [
        AttemptRecord(round=1, number=1, started_at=started[0]),
        AttemptRecord(round=1, number=2, started_at=started[1]),
        AttemptRecord(round=2, number=3, started_at=started[2]),
    ]


@pytest.mark.parametrize("state", [IN_PROGRESS, COMPLETED, FAILED])
def test_start_attempt_is_none_and_counts_nothing_unless_the_call_is_processing_ai(
    store: CallStore, call_id: str, clock: Clock, state: CallState
) -> None:
    open_call(store, call_id, clock)
    if state is not IN_PROGRESS:
        move(store, call_id, IN_PROGRESS, PROCESSING_AI, clock)
        move(store, call_id, PROCESSING_AI, state, clock)
    before = stored_call(store, call_id)
    for round_ in (0, 1):
        assert store.start_attempt(call_id, round_, now=clock.tick(), token=new_token()) is None
    assert store.get_call(call_id) == before


def test_start_attempt_for_another_round_is_none_and_counts_nothing(
    store: CallStore, call_id: str, clock: Clock
) -> None:
    before = processing(store, call_id, clock)
    assert store.start_attempt(call_id, 2, now=clock.tick(), token=new_token()) is None
    assert store.start_attempt(call_id, 0, now=clock.tick(), token=new_token()) is None
    assert store.get_call(call_id) == before


def test_start_attempt_of_an_unknown_call_is_none_and_creates_nothing(
    store: CallStore, call_id: str, clock: Clock
) -> None:
    assert store.start_attempt(call_id, 1, now=clock.tick(), token=new_token()) is None
    assert store.get_call(call_id) is None


def test_start_attempt_with_the_same_token_again_returns_the_same_number_and_counts_once(
    store: CallStore, call_id: str, clock: Clock
) -> None:
    processing(store, call_id, clock)
    store.start_attempt(call_id, 1, now=clock.tick(), token=new_token())
    token = new_token()
    started = clock.tick()
    assert attempt_of(store.start_attempt(call_id, 1, now=started, token=token)) == (2, None)
    after = stored_call(store, call_id)
    assert attempt_of(store.start_attempt(call_id, 1, now=clock.tick(), token=token)) == (2, None)
    assert store.get_call(call_id) == after
    assert after.ai_attempts == 2
    assert after.attempts[-1] == AttemptRecord(round=1, number=2, started_at=started)


def test_start_attempt_returns_the_recording_the_call_has_noted(store: CallStore, call_id: str, clock: Clock) -> None:
    # The worker stores and notes a call's recording once: a later attempt learns it from
    # the write that counts it, with no request of its own.
    processing(store, call_id, clock)
    assert attempt_of(store.start_attempt(call_id, 1, now=clock.tick(), token=new_token())) == (1, None)
    recording = Recording(key=f"calls/{call_id}/recording.wav", duration_s=1.5, bytes=24_044)
    store.set_recording(call_id, recording)
    token = new_token()
    assert attempt_of(store.start_attempt(call_id, 1, now=clock.tick(), token=token)) == (2, recording)
    # ... and so does a resent write whose first answer was lost.
    assert attempt_of(store.start_attempt(call_id, 1, now=clock.tick(), token=token)) == (2, recording)


# --- record_attempt_error ------------------------------------------------------------------


def test_record_attempt_error_sets_the_attempts_error_and_the_calls_last_error(
    store: CallStore, call_id: str, clock: Clock
) -> None:
    processing(store, call_id, clock)
    first, second = (clock.tick(), clock.tick())
    store.start_attempt(call_id, 1, now=first, token=new_token())
    store.start_attempt(call_id, 1, now=second, token=new_token())
    store.record_attempt_error(call_id, 1, 2, "HTTP 503 from the AI service")
    store.record_attempt_error(call_id, 1, 1, "timed out")
    call = stored_call(store, call_id)
    assert call.attempts == [
        AttemptRecord(round=1, number=1, started_at=first, error="timed out"),
        AttemptRecord(round=1, number=2, started_at=second, error="HTTP 503 from the AI service"),
    ]
    assert call.ai_last_error == "timed out"
    assert call.state is PROCESSING_AI


def test_record_attempt_error_notes_the_recording_and_statistics_in_the_same_write(
    store: CallStore, call_id: str, clock: Clock
) -> None:
    processing(store, call_id, clock)
    store.start_attempt(call_id, 1, now=clock.tick(), token=new_token())
    stats = PacketStats(received=2, duplicates=0, out_of_order=0, highest_sequence=1, missing=[], missing_count=0)
    recording = Recording(key=f"calls/{call_id}/recording.wav", duration_s=0.04, bytes=684)
    before = stored_call(store, call_id)

    store.record_attempt_error(call_id, 1, 1, "HTTP 503", recording=recording, packet_stats=stats)

    call = stored_call(store, call_id)
    assert (call.recording, call.packet_stats, call.ai_last_error) == (recording, stats, "HTTP 503")
    assert replace(call, recording=None, packet_stats=None, attempts=before.attempts, ai_last_error=None) == before


def test_a_transition_notes_the_recording_and_statistics_in_the_same_write(
    store: CallStore, call_id: str, clock: Clock
) -> None:
    processing(store, call_id, clock)
    stats = PacketStats(received=2, duplicates=0, out_of_order=1, highest_sequence=2, missing=[1], missing_count=1)
    recording = Recording(key=f"calls/{call_id}/recording.wav", duration_s=0.06, bytes=1_004)

    moved = move(
        store, call_id, PROCESSING_AI, FAILED, clock, failure_reason="no", recording=recording, packet_stats=stats
    )

    assert moved == stored_call(store, call_id)
    assert (moved.state, moved.recording, moved.packet_stats) == (FAILED, recording, stats)
    # Without them, a transition leaves what the call noted.
    assert move(store, call_id, FAILED, PROCESSING_AI, clock).recording == recording
    assert stored_call(store, call_id).packet_stats == stats


def test_record_attempt_error_of_a_stale_round_changes_nothing(store: CallStore, call_id: str, clock: Clock) -> None:
    processing(store, call_id, clock)
    store.start_attempt(call_id, 1, now=clock.tick(), token=new_token())
    move(store, call_id, PROCESSING_AI, FAILED, clock, failure_reason="gave up")
    move(store, call_id, FAILED, PROCESSING_AI, clock)
    before = stored_call(store, call_id)
    store.record_attempt_error(call_id, 1, 1, "a late error of round 1")
    assert store.get_call(call_id) == before


def test_record_attempt_error_of_an_unknown_call_changes_nothing(store: CallStore, call_id: str) -> None:
    store.record_attempt_error(call_id, 1, 1, "an error for a call that is not there")
    assert store.get_call(call_id) is None


# --- packets -------------------------------------------------------------------------------


def test_packets_come_in_sequence_order_whatever_the_order_they_arrived_in(
    store: CallStore, call_id: str, clock: Clock
) -> None:
    for received, sequence in enumerate([3, 0, 10, 2, 1]):
        add(store, call_id, packet(sequence), clock, received_at_ns=received)
    assert store.packets(call_id) == [packet(s) for s in (0, 1, 2, 3, 10)]


def test_a_packets_timestamp_comes_back_to_the_microsecond(store: CallStore, call_id: str, clock: Clock) -> None:
    sent = Packet(sequence=0, data="audio", timestamp=1_700_000_000.1234567)
    add(store, call_id, sent, clock)
    kept = Packet(sequence=0, data="audio", timestamp=round(sent.timestamp, 6))
    assert store.packets(call_id) == [kept]
    assert add(store, call_id, sent, clock) == PacketWrite(stored=False, existing=kept)


def test_packets_of_an_unknown_call_are_empty(store: CallStore, call_id: str) -> None:
    assert store.packets(call_id) == []


def test_packets_within_max_bytes_are_returned_and_beyond_it_raise_call_too_large(
    store: CallStore, call_id: str, clock: Clock
) -> None:
    for sequence in range(3):
        add(store, call_id, packet(sequence, data="x" * 10), clock)
    assert len(store.packets(call_id, max_bytes=30)) == 3
    with pytest.raises(CallTooLargeError):
        store.packets(call_id, max_bytes=29)


# --- arrivals ------------------------------------------------------------------------------


def test_arrivals_hold_one_entry_per_stored_sequence_with_its_received_at(
    store: CallStore, call_id: str, clock: Clock
) -> None:
    add(store, call_id, packet(0), clock, received_at_ns=1_000)
    add(store, call_id, packet(1), clock, received_at_ns=2_000)
    add(store, call_id, packet(1), clock, received_at_ns=3_000)  # a duplicate: not stored
    add(store, call_id, packet(5), clock, received_at_ns=4_000)
    move(store, call_id, IN_PROGRESS, PROCESSING_AI, clock)
    add(store, call_id, packet(6), clock, received_at_ns=5_000)  # refused: the call ended
    assert sorted(store.arrivals(call_id), key=lambda a: a.sequence) == [
        Arrival(sequence=0, received_at_ns=1_000),
        Arrival(sequence=1, received_at_ns=2_000),
        Arrival(sequence=5, received_at_ns=4_000),
    ]


def test_arrivals_come_in_the_order_the_packets_were_received(store: CallStore, call_id: str, clock: Clock) -> None:
    for received, sequence in enumerate([3, 0, 2, 1], start=1):
        add(store, call_id, packet(sequence), clock, received_at_ns=received * 1_000)
    assert store.arrivals(call_id) == [
        Arrival(sequence=3, received_at_ns=1_000),
        Arrival(sequence=0, received_at_ns=2_000),
        Arrival(sequence=2, received_at_ns=3_000),
        Arrival(sequence=1, received_at_ns=4_000),
    ]


def test_arrivals_of_an_unknown_call_are_empty(store: CallStore, call_id: str) -> None:
    assert store.arrivals(call_id) == []


@pytest.mark.parametrize("batched", [False, True], ids=["single", "batched"])
def test_packets_come_back_with_when_they_were_received(
    store: CallStore, call_id: str, clock: Clock, batched: bool
) -> None:
    # What the worker orders arrivals by when it notes the statistics: from the same read
    # as the audio, so a long call's packets are read once.
    if batched:
        add_batch(store, call_id, [packet(s) for s in (2, 0, 1)], clock, received_at_ns=100)
        expected = {2: 100, 0: 101, 1: 102}
    else:
        for received, sequence in ((300, 2), (100, 0), (200, 1)):
            add(store, call_id, packet(sequence), clock, received_at_ns=received)
        expected = {2: 300, 0: 100, 1: 200}
    assert {p.sequence: p.received_at_ns for p in store.packets(call_id)} == expected


# --- note_packet_stats ---------------------------------------------------------------------


def test_noted_packet_stats_come_back_with_the_call_and_the_duplicates_counted_since(
    store: CallStore, call_id: str, clock: Clock
) -> None:
    processing(store, call_id, clock)
    assert stored_call(store, call_id).packet_stats is None
    stats = PacketStats(
        received=3, duplicates=0, out_of_order=1, highest_sequence=5, missing=[1, 2, 4], missing_count=3
    )
    store.note_packet_stats(call_id, stats)
    store.note_packet_stats(call_id, stats)  # a resent write: the same again
    assert stored_call(store, call_id).packet_stats == stats
    # The call counts duplicates, also after its end: the noted statistics show its count.
    store.count_duplicate(call_id, token=new_token(), count=2)
    call = stored_call(store, call_id)
    assert call.packet_stats == replace(stats, duplicates=2)
    assert call.duplicates == 2
    # A later attempt finds them on its call, with no read of its own.
    attempt = store.start_attempt(call_id, 1, now=clock.tick(), token=new_token())
    assert attempt is not None
    assert attempt.call == stored_call(store, call_id)
    assert attempt.call.packet_stats == replace(stats, duplicates=2)


def test_set_recording_with_packet_stats_notes_both_and_keeps_what_the_call_had(
    store: CallStore, call_id: str, clock: Clock
) -> None:
    processing(store, call_id, clock)
    stats = PacketStats(received=2, duplicates=0, out_of_order=0, highest_sequence=1, missing=[], missing_count=0)
    recording = Recording(key=f"calls/{call_id}/recording.wav", duration_s=0.04, bytes=684)
    before = stored_call(store, call_id)

    store.set_recording(call_id, recording, packet_stats=stats)

    assert stored_call(store, call_id) == replace(before, recording=recording, packet_stats=stats)
    # The recording alone leaves the statistics noted.
    store.set_recording(call_id, recording)
    assert stored_call(store, call_id).packet_stats == stats


def test_noted_packet_stats_of_a_call_with_no_packets_keep_no_highest_sequence(
    store: CallStore, call_id: str, clock: Clock
) -> None:
    processing(store, call_id, clock)
    empty = PacketStats(received=0, duplicates=0, out_of_order=0, highest_sequence=None, missing=[], missing_count=0)
    store.note_packet_stats(call_id, empty)
    assert stored_call(store, call_id).packet_stats == empty


def test_note_packet_stats_of_an_unknown_call_is_not_found_and_creates_nothing(store: CallStore, call_id: str) -> None:
    stats = PacketStats(received=1, duplicates=0, out_of_order=0, highest_sequence=0, missing=[], missing_count=0)
    with pytest.raises(CallNotFoundError):
        store.note_packet_stats(call_id, stats)
    assert store.get_call(call_id) is None


# --- mark_enqueued -------------------------------------------------------------------------


def test_mark_enqueued_records_the_current_round_and_when_and_nothing_else(
    store: CallStore, call_id: str, clock: Clock
) -> None:
    before = processing(store, call_id, clock)
    sent_at = clock.tick()
    store.mark_enqueued(call_id, 1, now=sent_at)
    assert store.get_call(call_id) == Call(
        call_id=call_id,
        state=PROCESSING_AI,
        created_at=before.created_at,
        updated_at=before.updated_at,
        round=1,
        enqueued_round=1,
        enqueued_at=sent_at,
    )


def test_mark_enqueued_for_another_round_changes_nothing(store: CallStore, call_id: str, clock: Clock) -> None:
    processing(store, call_id, clock)
    move(store, call_id, PROCESSING_AI, FAILED, clock, failure_reason="gave up")
    before = move(store, call_id, FAILED, PROCESSING_AI, clock)
    store.mark_enqueued(call_id, 1, now=clock.tick())  # a stale round's late mark
    store.mark_enqueued(call_id, 3, now=clock.tick())
    assert store.get_call(call_id) == before
    assert before.enqueued_round == 0


def test_mark_enqueued_of_an_unknown_call_creates_nothing(store: CallStore, call_id: str, clock: Clock) -> None:
    store.mark_enqueued(call_id, 1, now=clock.tick())
    assert store.get_call(call_id) is None


# --- the sweeper's claims ------------------------------------------------------------------


def test_a_send_is_claimed_once_until_the_claim_is_older_than_asked(
    store: CallStore, call_id: str, clock: Clock
) -> None:
    processing(store, call_id, clock)
    first = clock.tick()
    assert store.claim_send(call_id, 1, now=first, unclaimed_since=clock.start)
    # an overlapping sweep, whose cutoff is before the first claim
    assert not store.claim_send(call_id, 1, now=clock.tick(), unclaimed_since=first)
    # a later sweep, whose cutoff is after it
    assert store.claim_send(call_id, 1, now=clock.tick(), unclaimed_since=clock.tick())


def test_a_send_is_not_claimed_for_another_round_or_state(store: CallStore, call_id: str, clock: Clock) -> None:
    open_call(store, call_id, clock)
    assert not store.claim_send(call_id, 0, now=clock.tick(), unclaimed_since=clock.start)
    move(store, call_id, IN_PROGRESS, PROCESSING_AI, clock)
    assert not store.claim_send(call_id, 2, now=clock.tick(), unclaimed_since=clock.start)
    assert not store.claim_send(f"{call_id}-unknown", 1, now=clock.tick(), unclaimed_since=clock.start)
    assert store.get_call(f"{call_id}-unknown") is None


def test_a_stale_resend_is_claimed_once_per_round(store: CallStore, call_id: str, clock: Clock) -> None:
    processing(store, call_id, clock)
    assert store.claim_stale_resend(call_id, 1)
    assert not store.claim_stale_resend(call_id, 1)
    move(store, call_id, PROCESSING_AI, FAILED, clock, failure_reason="gave up")
    assert not store.claim_stale_resend(call_id, 1)
    move(store, call_id, FAILED, PROCESSING_AI, clock)
    assert store.claim_stale_resend(call_id, 2)
    assert not store.claim_stale_resend(call_id, 2)


# --- get_call ------------------------------------------------------------------------------


def test_get_call_of_an_unknown_call_is_none(store: CallStore, call_id: str) -> None:
    assert store.get_call(call_id) is None


# --- list_calls ----------------------------------------------------------------------------


def test_list_calls_lists_only_calls_in_the_asked_state(store: CallStore, call_id: str, clock: Clock) -> None:
    ids = {state: f"{call_id}-{state.value}" for state in (IN_PROGRESS, PROCESSING_AI, FAILED)}
    open_call(store, ids[IN_PROGRESS], clock)
    processing(store, ids[PROCESSING_AI], clock)
    failed(store, ids[FAILED], clock)
    mine = set(ids.values())
    for state, cid in ids.items():
        assert listed_ids(store, state, clock, mine) == [cid]
    assert listed_ids(store, COMPLETED, clock, mine) == []


def test_list_calls_lists_the_most_recently_changed_call_first(store: CallStore, call_id: str, clock: Clock) -> None:
    ids = [f"{call_id}-{i}" for i in range(3)]
    for cid in ids:
        open_call(store, cid, clock)
    for cid in (ids[2], ids[0], ids[1]):  # changed last: ids[1]
        move(store, cid, IN_PROGRESS, PROCESSING_AI, clock)
    assert listed_ids(store, PROCESSING_AI, clock, set(ids)) == [ids[1], ids[0], ids[2]]
    assert listed_ids(store, IN_PROGRESS, clock, set(ids)) == []


def test_a_listed_call_carries_its_timestamps_round_enqueued_round_and_failure_reason(
    store: CallStore, call_id: str, clock: Clock
) -> None:
    processing(store, call_id, clock)
    store.mark_enqueued(call_id, 1, now=clock.tick())
    move(store, call_id, PROCESSING_AI, FAILED, clock, failure_reason="gave up")
    full = move(store, call_id, FAILED, PROCESSING_AI, clock, last_sequence=9)
    assert listed(store, PROCESSING_AI, call_id) == Call(
        call_id=call_id,
        state=PROCESSING_AI,
        created_at=full.created_at,
        updated_at=full.updated_at,
        round=2,
        enqueued_round=1,
        failure_reason="gave up",
    )  # enqueued_at is not in the index: the sweeper reads the call for it


@pytest.mark.parametrize("limit", [1, 2, 3])
def test_list_calls_pages_with_a_cursor_over_every_call_once_in_order(
    store: CallStore, call_id: str, clock: Clock, limit: int
) -> None:
    ids = [f"{call_id}-{i}" for i in range(5)]
    for cid in ids:
        processing(store, cid, clock)
    assert listed_ids(store, PROCESSING_AI, clock, set(ids), limit=limit) == list(reversed(ids))


def test_list_calls_lists_only_calls_changed_before_updated_before(
    store: CallStore, call_id: str, clock: Clock
) -> None:
    ids = [f"{call_id}-{i}" for i in range(3)]
    changed = [processing(store, cid, clock).updated_at for cid in ids]
    mine = set(ids)
    assert listed_ids(store, PROCESSING_AI, clock, mine, updated_before=changed[1]) == [ids[0]]
    assert listed_ids(store, PROCESSING_AI, clock, mine, updated_before=clock.tick()) == list(reversed(ids))
    assert listed_ids(store, PROCESSING_AI, clock, mine, updated_before=changed[0]) == []


def test_list_calls_pages_with_updated_before_too(store: CallStore, call_id: str, clock: Clock) -> None:
    ids = [f"{call_id}-{i}" for i in range(4)]
    changed = [processing(store, cid, clock).updated_at for cid in ids]
    assert listed_ids(store, PROCESSING_AI, clock, set(ids), limit=1, updated_before=changed[3]) == [
        ids[2],
        ids[1],
        ids[0],
    ]


@pytest.mark.parametrize("limit", [0, -1])
def test_list_calls_with_a_limit_below_one_raises_value_error(store: CallStore, limit: int) -> None:
    with pytest.raises(ValueError, match="limit"):
        store.list_calls(PROCESSING_AI, limit=limit, cursor=None)


@pytest.mark.parametrize(
    "cursor",
    [
        "not a cursor",
        b64("not json"),
        b64("[]"),
        b64("{}"),
        b64(json.dumps({"state": "PROCESSING_AI", "updated_at": 1, "call_id": None})),
    ],
    ids=["garbage", "not-json", "a-list", "an-empty-object", "wrong-types"],
)
def test_list_calls_with_a_cursor_it_did_not_issue_raises_value_error(store: CallStore, cursor: str) -> None:
    with pytest.raises(ValueError, match="cursor"):
        store.list_calls(PROCESSING_AI, limit=10, cursor=cursor)


def test_list_calls_with_a_cursor_issued_for_another_state_raises_value_error(
    store: CallStore, call_id: str, clock: Clock
) -> None:
    for i in range(2):
        failed(store, f"{call_id}-{i}", clock)
    cursor = store.list_calls(FAILED, limit=1, cursor=None).next_cursor
    assert cursor is not None
    with pytest.raises(ValueError, match="cursor"):
        store.list_calls(PROCESSING_AI, limit=10, cursor=cursor)


# --- count_calls ---------------------------------------------------------------------------
# The index is shared with the session's other tests: counts are compared before and after
# this test's own calls (no other test writes meanwhile).

EVERY_CALL = 1_000_000  # more than the session ever stores: an exact count


def test_count_calls_counts_the_calls_in_each_state(store: CallStore, call_id: str, clock: Clock) -> None:
    before = {state: store.count_calls(state, up_to=EVERY_CALL) for state in CallState}
    open_call(store, f"{call_id}-open", clock)
    for i in range(2):
        processing(store, f"{call_id}-processing-{i}", clock)
    failed(store, f"{call_id}-failed", clock)
    result = AIResult("ok", Sentiment("NEUTRAL", 0.0))
    move(store, f"{call_id}-processing-1", PROCESSING_AI, COMPLETED, clock, result=result)

    after = {state: store.count_calls(state, up_to=EVERY_CALL) for state in CallState}

    assert {state: after[state] - before[state] for state in CallState} == {
        IN_PROGRESS: 1,
        PROCESSING_AI: 1,
        COMPLETED: 1,
        FAILED: 1,
        ARCHIVED: 0,
    }


@pytest.mark.parametrize("up_to", [1, 2, 3])
def test_count_calls_stops_at_up_to(store: CallStore, call_id: str, clock: Clock, up_to: int) -> None:
    for i in range(3):
        failed(store, f"{call_id}-{i}", clock)
    assert store.count_calls(FAILED, up_to=up_to) == up_to
    assert store.count_calls(FAILED, up_to=EVERY_CALL) >= 3


@pytest.mark.parametrize("up_to", [0, -1])
def test_count_calls_with_up_to_below_one_raises_value_error(store: CallStore, up_to: int) -> None:
    with pytest.raises(ValueError, match="up_to"):
        store.count_calls(FAILED, up_to=up_to)

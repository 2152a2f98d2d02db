"""The call model: packet statistics, the state machine and its transition rules, call ids,
work items, and the bounds on what a call's record keeps."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from callcore.domain.errors import InvalidTransitionError
from callcore.domain.model import (
    MAX_ERROR_TEXT,
    MAX_TRANSCRIPT_BYTES,
    MISSING_LIST_LIMIT,
    AIResult,
    Arrival,
    Call,
    CallState,
    PacketStats,
    Sentiment,
    TransitionRule,
    WorkItem,
    can_transition,
    error_text,
    is_valid_call_id,
    transition_rule,
)


def arrivals_in_order(*sequences: int) -> list[Arrival]:
    """Arrivals stored in the order given, one nanosecond apart."""
    return [Arrival(sequence=seq, received_at_ns=1_000 + i) for i, seq in enumerate(sequences)]


# --- PacketStats.from_arrivals ---------------------------------------------------------


def test_stats_of_a_call_without_packets_are_all_zero() -> None:
    stats = PacketStats.from_arrivals([])

    assert stats == PacketStats(
        received=0, duplicates=0, out_of_order=0, highest_sequence=None, missing=[], missing_count=0
    )


def test_packets_in_order_have_no_gaps_and_none_out_of_order() -> None:
    stats = PacketStats.from_arrivals(arrivals_in_order(1, 2, 3, 4, 5))

    assert stats.received == 5
    assert stats.out_of_order == 0
    assert stats.highest_sequence == 5
    assert stats.missing == []
    assert stats.missing_count == 0


def test_gaps_between_lowest_and_highest_are_missing() -> None:
    stats = PacketStats.from_arrivals(arrivals_in_order(2, 3, 6, 9))

    assert stats.received == 4
    assert stats.missing == [4, 5, 7, 8]
    assert stats.missing_count == 4


def test_sequences_below_the_lowest_received_are_not_missing() -> None:
    # GIVEN a call whose first stored packet is 10
    stats = PacketStats.from_arrivals(arrivals_in_order(10, 11))

    # THEN 0..9 are not reported: the range starts at the lowest received
    assert stats.missing == []


def test_a_packet_stored_after_a_higher_one_counts_as_out_of_order() -> None:
    # GIVEN 1, 3, 2 stored in that order
    stats = PacketStats.from_arrivals(arrivals_in_order(1, 3, 2, 4))

    assert stats.out_of_order == 1
    assert stats.highest_sequence == 4


def test_every_late_packet_counts_as_out_of_order() -> None:
    stats = PacketStats.from_arrivals(arrivals_in_order(5, 1, 2, 3, 4))

    assert stats.out_of_order == 4


def test_out_of_order_follows_arrival_time_not_input_order() -> None:
    # GIVEN arrivals listed by sequence (as the store returns them) but 3 stored before 2
    arrivals = [Arrival(1, 100), Arrival(2, 300), Arrival(3, 200)]

    stats = PacketStats.from_arrivals(arrivals)

    assert stats.out_of_order == 1


def test_a_late_packet_removes_itself_from_missing() -> None:
    before = PacketStats.from_arrivals(arrivals_in_order(1, 3))
    after = PacketStats.from_arrivals(arrivals_in_order(1, 3, 2))

    assert before.missing == [2]
    assert after.missing == []
    assert after.missing_count == 0


def test_last_sequence_adds_the_missing_tail() -> None:
    stats = PacketStats.from_arrivals(arrivals_in_order(1, 2, 3), last_sequence=6)

    assert stats.missing == [4, 5, 6]
    assert stats.missing_count == 3
    assert stats.highest_sequence == 3


def test_last_sequence_below_the_highest_received_changes_nothing() -> None:
    without = PacketStats.from_arrivals(arrivals_in_order(1, 2, 4))
    with_low_last = PacketStats.from_arrivals(arrivals_in_order(1, 2, 4), last_sequence=2)

    assert with_low_last == without
    assert with_low_last.missing == [3]


def test_last_sequence_without_packets_reports_nothing_missing() -> None:
    stats = PacketStats.from_arrivals([], last_sequence=10)

    assert stats.missing == []
    assert stats.missing_count == 0


def test_missing_list_is_truncated_but_missing_count_is_the_total() -> None:
    # GIVEN packets 0 and 5000: 4999 sequences missing
    stats = PacketStats.from_arrivals(arrivals_in_order(0, 5000))

    assert stats.missing_count == 4999
    assert len(stats.missing) == MISSING_LIST_LIMIT
    assert stats.missing == list(range(1, MISSING_LIST_LIMIT + 1))


def test_missing_list_truncation_spans_several_gaps_in_order() -> None:
    # GIVEN three gaps of 599 each
    stats = PacketStats.from_arrivals(arrivals_in_order(0, 600, 1200, 1800))

    assert stats.missing_count == 3 * 599
    assert len(stats.missing) == MISSING_LIST_LIMIT
    assert stats.missing == [*range(1, 600), *range(601, 601 + MISSING_LIST_LIMIT - 599)]


def test_missing_tail_from_last_sequence_is_truncated_with_the_right_count() -> None:
    stats = PacketStats.from_arrivals(arrivals_in_order(0), last_sequence=MISSING_LIST_LIMIT + 10)

    assert stats.missing_count == MISSING_LIST_LIMIT + 10
    assert stats.missing == list(range(1, MISSING_LIST_LIMIT + 1))


def test_duplicates_are_passed_through_and_not_counted_as_received() -> None:
    stats = PacketStats.from_arrivals(arrivals_in_order(1, 2), duplicates=7)

    assert stats.duplicates == 7
    assert stats.received == 2


# --- state machine ---------------------------------------------------------------------

# The state diagram (README, "States"), written out independently of the model's table.
ALLOWED: dict[CallState, set[CallState]] = {
    CallState.IN_PROGRESS: {CallState.PROCESSING_AI},
    CallState.PROCESSING_AI: {CallState.COMPLETED, CallState.FAILED},
    CallState.COMPLETED: {CallState.ARCHIVED},
    CallState.FAILED: {CallState.PROCESSING_AI, CallState.ARCHIVED},
    CallState.ARCHIVED: set(),
}


@pytest.mark.parametrize("current", list(CallState))
def test_each_state_allows_exactly_the_moves_of_the_state_diagram(current: CallState) -> None:
    allowed = {target for target in CallState if can_transition(current, target)}

    assert allowed == ALLOWED[current]


@pytest.mark.parametrize(
    ("current", "target"),
    [
        (CallState.IN_PROGRESS, CallState.COMPLETED),
        (CallState.IN_PROGRESS, CallState.FAILED),
        (CallState.PROCESSING_AI, CallState.IN_PROGRESS),
        (CallState.COMPLETED, CallState.PROCESSING_AI),
        (CallState.FAILED, CallState.COMPLETED),
        (CallState.ARCHIVED, CallState.PROCESSING_AI),
    ],
)
def test_moves_outside_the_state_diagram_are_forbidden(current: CallState, target: CallState) -> None:
    assert not can_transition(current, target)


@pytest.mark.parametrize("state", list(CallState))
def test_no_state_transitions_to_itself(state: CallState) -> None:
    assert not can_transition(state, state)


# --- transition rules ------------------------------------------------------------------

ALLOWED_MOVES = [(source, target) for source, targets in ALLOWED.items() for target in targets]
FORBIDDEN_MOVES = [(source, target) for source in CallState for target in CallState if target not in ALLOWED[source]]


@pytest.mark.parametrize(("source", "target"), FORBIDDEN_MOVES)
def test_transition_rule_for_a_forbidden_move_raises_invalid_transition_naming_both_states(
    source: CallState, target: CallState
) -> None:
    with pytest.raises(InvalidTransitionError) as excinfo:
        transition_rule("c1", source, target)

    assert (excinfo.value.call_id, excinfo.value.current, excinfo.value.target) == ("c1", source, target)
    assert excinfo.value.call is None  # refused by the state machine, before any store was asked


@pytest.mark.parametrize(("source", "target"), ALLOWED_MOVES)
def test_transition_rule_for_an_allowed_move_carries_its_source_and_target(
    source: CallState, target: CallState
) -> None:
    rule = transition_rule("c1", source, target)

    assert (rule.source, rule.target) == (source, target)


@pytest.mark.parametrize(("source", "target"), ALLOWED_MOVES)
def test_every_entry_into_processing_ai_and_only_that_starts_a_new_round(source: CallState, target: CallState) -> None:
    assert transition_rule("c1", source, target).starts_round is (target is CallState.PROCESSING_AI)


@pytest.mark.parametrize(("source", "target"), ALLOWED_MOVES)
def test_only_completing_a_call_clears_its_failure_reason(source: CallState, target: CallState) -> None:
    assert transition_rule("c1", source, target).clears_failure_reason is (target is CallState.COMPLETED)


T0 = "2024-01-01T00:00:00.000000Z"
T1 = "2024-01-01T00:00:01.000000Z"


def call_in(state: CallState, **changes: Any) -> Call:
    base = Call(call_id="c1", state=state, created_at=T0, updated_at=T0, round=1, last_sequence=7)
    return dataclasses.replace(base, **changes)


def test_moving_into_processing_ai_starts_the_next_round_and_stamps_the_time() -> None:
    # GIVEN a FAILED call in round 1, WHEN the operator retries it
    call = call_in(CallState.FAILED, failure_reason="gave up")

    moved = call.moved(transition_rule("c1", CallState.FAILED, CallState.PROCESSING_AI), now=T1)

    # THEN it is PROCESSING_AI in round 2; its reason stays stored but is not shown
    assert (moved.state, moved.round, moved.updated_at) == (CallState.PROCESSING_AI, 2, T1)
    assert moved.failure_reason == "gave up"
    assert moved.reason_for_failure is None
    assert moved.last_sequence == 7


def test_moving_to_completed_stores_the_result_and_clears_the_failure_reason() -> None:
    call = call_in(CallState.PROCESSING_AI, round=2, failure_reason="round 1 gave up")
    result = AIResult("hello", Sentiment("POSITIVE", 0.9), transcript_truncated=True)

    moved = call.moved(transition_rule("c1", CallState.PROCESSING_AI, CallState.COMPLETED), now=T1, result=result)

    assert (moved.state, moved.round) == (CallState.COMPLETED, 2)
    assert moved.failure_reason is None
    assert (moved.transcript, moved.sentiment, moved.transcript_truncated) == ("hello", result.sentiment, True)


def test_moving_to_failed_stores_the_given_reason() -> None:
    call = call_in(CallState.PROCESSING_AI)

    moved = call.moved(
        transition_rule("c1", CallState.PROCESSING_AI, CallState.FAILED), now=T1, failure_reason="undecodable"
    )

    assert moved.state is CallState.FAILED
    assert moved.reason_for_failure == "undecodable"
    assert moved.round == 1


def test_a_rule_built_by_hand_is_carried_out_as_written() -> None:
    # The store carries out a rule; it does not decide one.
    rule = TransitionRule(
        source=CallState.IN_PROGRESS, target=CallState.PROCESSING_AI, starts_round=False, clears_failure_reason=True
    )

    moved = call_in(CallState.IN_PROGRESS, failure_reason="x").moved(rule, now=T1, last_sequence=9)

    assert (moved.round, moved.failure_reason, moved.last_sequence) == (1, None, 9)


# --- AIResult.bounded and error_text ----------------------------------------------------

SENTIMENT = Sentiment("NEUTRAL", 0.5)


def test_a_transcript_within_the_limit_is_stored_unchanged_and_not_flagged() -> None:
    result = AIResult("x" * MAX_TRANSCRIPT_BYTES, SENTIMENT)

    bounded = result.bounded()

    assert bounded == result
    assert bounded.transcript_truncated is False


def test_a_transcript_over_the_limit_is_cut_to_the_limit_and_flagged() -> None:
    result = AIResult("x" * (MAX_TRANSCRIPT_BYTES + 1), SENTIMENT)

    bounded = result.bounded()

    assert bounded.transcript == "x" * MAX_TRANSCRIPT_BYTES
    assert bounded.transcript_truncated is True
    assert bounded.sentiment == SENTIMENT


def test_a_transcript_over_the_limit_is_cut_on_a_utf8_character_boundary() -> None:
    # GIVEN a transcript of two-byte characters and an odd byte limit that falls inside one
    result = AIResult("\u00e9" * 10, SENTIMENT)  # 20 bytes of UTF-8

    # WHEN it is bounded to 7 bytes
    bounded = result.bounded(max_bytes=7)

    # THEN the half character is dropped, not mangled: 3 whole characters, 6 bytes
    assert bounded.transcript == "\u00e9" * 3
    assert len(bounded.transcript.encode("utf-8")) == 6
    assert bounded.transcript_truncated is True


def test_a_transcript_exactly_at_a_custom_limit_is_not_flagged() -> None:
    result = AIResult("\u00e9" * 10, SENTIMENT)

    assert result.bounded(max_bytes=20) == result


def test_error_text_keeps_a_short_message_as_it_is() -> None:
    assert error_text(ValueError("HTTP 503")) == "HTTP 503"


def test_error_text_of_an_error_without_a_message_is_its_type_name() -> None:
    assert error_text(TimeoutError()) == "TimeoutError"


def test_error_text_cuts_a_long_message_to_the_limit_and_marks_the_cut() -> None:
    text = error_text(RuntimeError("e" * (MAX_ERROR_TEXT * 3)))

    assert len(text) == MAX_ERROR_TEXT
    assert text.endswith("\u2026")


# --- call ids --------------------------------------------------------------------------


@pytest.mark.parametrize("call_id", ["c1", "A", "a" * 128, "call-2024.01.01:abc_DEF-9", "0", "...", "-:-"])
def test_call_ids_of_allowed_characters_are_valid(call_id: str) -> None:
    assert is_valid_call_id(call_id)


@pytest.mark.parametrize(
    "call_id",
    [
        "",
        "a" * 129,
        "a/b",
        "a b",
        " a",
        "a\n",
        "a\tb",
        "caf\u00e9",
        "\u0661\u0662",  # Arabic-Indic digits: \d would accept them
        "a?b",
        "a%2Fb",
        "a#b",
    ],
)
def test_call_ids_that_are_empty_too_long_or_have_other_characters_are_invalid(call_id: str) -> None:
    assert not is_valid_call_id(call_id)


# --- work items ------------------------------------------------------------------------


def test_work_item_round_trips_through_a_dict() -> None:
    item = WorkItem(call_id="c-1", round=3)

    assert item.to_dict() == {"call_id": "c-1", "round": 3}
    assert WorkItem.from_dict(item.to_dict()) == item


def test_work_item_ignores_unknown_keys() -> None:
    assert WorkItem.from_dict({"call_id": "c1", "round": 1, "extra": True}) == WorkItem("c1", 1)


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param({"round": 1}, id="missing call_id"),
        pytest.param({"call_id": None, "round": 1}, id="call_id None"),
        pytest.param({"call_id": 7, "round": 1}, id="call_id not a string"),
        pytest.param({"call_id": "", "round": 1}, id="call_id empty"),
        pytest.param({"call_id": "a/b", "round": 1}, id="call_id bad characters"),
        pytest.param({"call_id": "c1"}, id="missing round"),
        pytest.param({"call_id": "c1", "round": 0}, id="round 0"),
        pytest.param({"call_id": "c1", "round": -1}, id="round negative"),
        pytest.param({"call_id": "c1", "round": True}, id="round bool"),
        pytest.param({"call_id": "c1", "round": "1"}, id="round str"),
        pytest.param({"call_id": "c1", "round": 1.0}, id="round float"),
    ],
)
def test_work_item_from_dict_rejects_bad_values(raw: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="work item has no valid"):
        WorkItem.from_dict(raw)

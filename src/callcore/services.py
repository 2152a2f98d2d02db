"""Use cases. Each takes plain values and the ports it needs; entry points only translate."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from enum import StrEnum

from callcore.clock import now_iso, now_ns, seconds_since
from callcore.domain.errors import (
    CallNotAcceptingPacketsError,
    CallNotFoundError,
    DependencyUnavailableError,
    InvalidTransitionError,
    SequenceConflictError,
)
from callcore.domain.model import Call, CallState, Packet, PacketStats, WorkItem
from callcore.ports import CallPage, CallStore, WorkQueue

logger = logging.getLogger(__name__)


class PacketOutcome(StrEnum):
    ACCEPTED = "accepted"
    DUPLICATE = "duplicate"


def record_packet(store: CallStore, call_id: str, packet: Packet) -> PacketOutcome:
    """Store one packet of a call. Duplicates are normal traffic, not errors.

    Raises SequenceConflictError when the sequence holds different data, and
    CallNotAcceptingPacketsError once the call has ended.
    """
    write = store.add_packet(call_id, packet, now=now_iso(), received_at_ns=now_ns())
    if write.stored:
        return PacketOutcome.ACCEPTED
    if write.existing is not None:
        # A retransmission of a stored packet is a duplicate even after the call ended:
        # the packet is stored and part of the call's work, so 409 would be a lie.
        if not write.existing.same_content(packet):
            raise SequenceConflictError(call_id, packet.sequence)
        store.count_duplicate(call_id)
        return PacketOutcome.DUPLICATE
    assert write.call_state is not None, "a refused packet names the call's state"
    raise CallNotAcceptingPacketsError(call_id, write.call_state)


@dataclass(frozen=True)
class EndOutcome:
    state: CallState
    processing: bool  # True while the call's AI work is pending (202), False once finished (200)


def end_call(store: CallStore, queue: WorkQueue, call_id: str, last_sequence: int | None = None) -> EndOutcome:
    """IN_PROGRESS -> PROCESSING_AI and exactly one work item; repeating it changes nothing."""
    try:
        call = store.transition(
            call_id,
            source=CallState.IN_PROGRESS,
            target=CallState.PROCESSING_AI,
            now=now_iso(),
            new_round=True,
            last_sequence=last_sequence,
        )
    except InvalidTransitionError as exc:
        if exc.call is not None and _work_item_may_be_lost(exc.call):
            _send(store, queue, exc.call)
        return EndOutcome(state=exc.current, processing=exc.current is CallState.PROCESSING_AI)
    _enqueue(store, queue, call, previous=CallState.IN_PROGRESS)
    return EndOutcome(state=call.state, processing=True)


# Longer than any request that could still be sending a round's first work item (the
# ingest function times out after 10 s), so concurrent ends never send a second one.
RESEND_AFTER_S = 30.0


def _work_item_may_be_lost(call: Call) -> bool:
    """PROCESSING_AI, but the request that moved it there never recorded its send.

    That happens only when SQS failed and putting the call back failed too; without a
    new send the call would stay in PROCESSING_AI forever.
    """
    return (
        call.state is CallState.PROCESSING_AI
        and call.enqueued_round < call.round
        and seconds_since(call.updated_at) > RESEND_AFTER_S
    )


def _send(store: CallStore, queue: WorkQueue, call: Call) -> None:
    queue.send(WorkItem(call_id=call.call_id, round=call.round))
    try:
        store.mark_enqueued(call.call_id, call.round)
    except DependencyUnavailableError:
        # The item is on the queue. At worst a later end sends it again, and the worker
        # acts on one work item a round.
        logger.warning("call %s round %d: work item sent but not recorded", call.call_id, call.round)


def _enqueue(store: CallStore, queue: WorkQueue, call: Call, *, previous: CallState) -> None:
    """Send the call's work item; if that fails, put the call back so the client can retry.

    Only the request that won the transition sends, which is why concurrent ends put
    exactly one item on the queue.
    """
    try:
        _send(store, queue, call)
    except DependencyUnavailableError:
        try:
            store.revert_transition(call.call_id, current=call.state, round=call.round, back_to=previous, now=now_iso())
        except DependencyUnavailableError:
            logger.error(
                "call %s is %s in round %d but its work item was not sent and the state could not be reverted",
                call.call_id,
                call.state.value,
                call.round,
            )
        raise


@dataclass(frozen=True)
class CallDetails:
    call: Call
    packets: PacketStats


def get_call(store: CallStore, call_id: str) -> CallDetails:
    call = store.get_call(call_id)
    if call is None:
        raise CallNotFoundError(call_id)
    stats = PacketStats.from_arrivals(
        store.arrivals(call_id), duplicates=call.duplicates, last_sequence=call.last_sequence
    )
    return CallDetails(call=call, packets=stats)


def list_calls(store: CallStore, state: CallState, *, limit: int, cursor: str | None) -> CallPage:
    return store.list_calls(state, limit=limit, cursor=cursor)

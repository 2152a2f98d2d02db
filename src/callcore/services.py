"""Use cases. Each takes plain values and the ports it needs; entry points only translate."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from enum import StrEnum

from callcore.clock import now_iso, now_ns
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
        return EndOutcome(state=exc.current, processing=exc.current is CallState.PROCESSING_AI)
    _enqueue(store, queue, call, previous=CallState.IN_PROGRESS)
    return EndOutcome(state=call.state, processing=True)


def _enqueue(store: CallStore, queue: WorkQueue, call: Call, *, previous: CallState) -> None:
    """Send the call's work item; if that fails, put the call back so the client can retry.

    Only the request that won the transition sends, which is why concurrent ends put
    exactly one item on the queue.
    """
    try:
        queue.send(WorkItem(call_id=call.call_id, round=call.round))
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

"""Use cases. Each takes plain values and the ports it needs; entry points only translate."""

from __future__ import annotations

import asyncio
import functools
import logging
from dataclasses import dataclass
from enum import StrEnum

from callcore.clock import now_iso, now_ns, seconds_since
from callcore.domain.errors import (
    CallNotAcceptingPacketsError,
    CallNotFoundError,
    DependencyUnavailableError,
    InvalidTransitionError,
    PermanentAIError,
    RetryableAIError,
    SequenceConflictError,
)
from callcore.domain.model import AIResult, Call, CallState, Packet, PacketStats, WorkItem
from callcore.ports import AIProvider, CallPage, CallStore, WorkQueue

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
    if write.call_state is None:
        raise RuntimeError(f"store refused packet {packet.sequence} of {call_id!r} without a reason")
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


def retry_call(store: CallStore, queue: WorkQueue, call_id: str) -> Call:
    """Operator retry: FAILED -> PROCESSING_AI in a new round, with a new work item.

    Raises CallNotFoundError, or InvalidTransitionError from any state but FAILED.
    """
    call = store.transition(
        call_id, source=CallState.FAILED, target=CallState.PROCESSING_AI, now=now_iso(), new_round=True
    )
    _enqueue(store, queue, call, previous=CallState.FAILED)
    return call


class ProcessOutcome(StrEnum):
    COMPLETED = "completed"
    FAILED = "failed"
    SKIPPED = "skipped"  # not PROCESSING_AI in the item's round: already done, or a stale duplicate


async def process_call(store: CallStore, ai: AIProvider, item: WorkItem) -> ProcessOutcome:
    """One AI attempt for a work item.

    Raises RetryableAIError (or DependencyUnavailableError) for SQS to deliver the item
    again; a permanent AI error fails the call at once instead of burning retries.
    Every write is conditional on the call being PROCESSING_AI in the item's round, so
    a redelivered message changes nothing once the round is over.
    """
    attempt = await asyncio.to_thread(store.start_attempt, item.call_id, item.round, now=now_iso())
    if attempt is None:
        return ProcessOutcome.SKIPPED
    packets = await asyncio.to_thread(store.packets, item.call_id)
    try:
        transcript = await ai.transcribe(item.call_id, packets)
        sentiment = await ai.score_sentiment(transcript)
    except PermanentAIError as exc:
        await asyncio.to_thread(store.record_attempt_error, item.call_id, attempt, str(exc))
        reason = f"AI failed permanently on attempt {attempt}: {exc}"
        return await _finish(store, item, CallState.FAILED, failure_reason=reason)
    except RetryableAIError as exc:
        await asyncio.to_thread(store.record_attempt_error, item.call_id, attempt, str(exc))
        raise
    return await _finish(store, item, CallState.COMPLETED, result=AIResult(transcript, sentiment))


async def _finish(
    store: CallStore,
    item: WorkItem,
    target: CallState,
    *,
    failure_reason: str | None = None,
    result: AIResult | None = None,
) -> ProcessOutcome:
    try:
        await asyncio.to_thread(
            functools.partial(
                store.transition,
                item.call_id,
                source=CallState.PROCESSING_AI,
                target=target,
                now=now_iso(),
                expected_round=item.round,
                failure_reason=failure_reason,
                result=result,
            )
        )
    except InvalidTransitionError:
        return ProcessOutcome.SKIPPED  # a duplicate delivery finished the round first
    return ProcessOutcome.COMPLETED if target is CallState.COMPLETED else ProcessOutcome.FAILED


def fail_exhausted(store: CallStore, item: WorkItem) -> bool:
    """The work item ran out of receives (dead-letter queue): FAILED, with the attempts and last error.

    Returns False when there was nothing to do: unknown call, or not PROCESSING_AI in
    that round any more. Repeating it is harmless.
    """
    call = store.get_call(item.call_id)
    if call is None or call.state is not CallState.PROCESSING_AI or call.round != item.round:
        return False
    in_round = sum(1 for a in call.attempts if a.round == item.round)
    reason = (
        f"AI processing gave up after {in_round} attempt{'s' if in_round != 1 else ''}"
        f" (all retries used); last error: {call.ai_last_error or 'none recorded'}"
    )
    try:
        store.transition(
            item.call_id,
            source=CallState.PROCESSING_AI,
            target=CallState.FAILED,
            now=now_iso(),
            expected_round=item.round,
            failure_reason=reason,
        )
    except InvalidTransitionError:
        return False
    return True


def resend_lost_work(store: CallStore, queue: WorkQueue, *, page_size: int = 100) -> int:
    """Send the work item of every PROCESSING_AI call whose send was never recorded.

    The end (or retry) that moved such a call failed to reach SQS and failed to put the
    call back too; without this sweep it would stay in PROCESSING_AI. Returns how many
    items were sent.
    """
    sent = 0
    cursor: str | None = None
    while True:
        page = store.list_calls(CallState.PROCESSING_AI, limit=page_size, cursor=cursor)
        for call in page.calls:
            if _work_item_may_be_lost(call):
                logger.warning(
                    "call %s round %d: resending a work item that was never recorded", call.call_id, call.round
                )
                _send(store, queue, call)
                sent += 1
        if page.next_cursor is None:
            return sent
        cursor = page.next_cursor

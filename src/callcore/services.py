"""Use cases. Each takes plain values and the ports it needs; entry points only translate."""

from __future__ import annotations

import asyncio
import functools
import logging
import uuid
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import TYPE_CHECKING

from callcore.clock import iso_seconds_ago, now_iso, now_ns, seconds_since
from callcore.domain.archive import archive_record, stats_from_record
from callcore.domain.errors import (
    CallCoreError,
    CallNotAcceptingPacketsError,
    CallNotFoundError,
    CallTooLargeError,
    DependencyUnavailableError,
    InvalidTransitionError,
    PermanentAIError,
    RecordingExpiredError,
    RecordingNotFoundError,
    RetryableAIError,
    SequenceConflictError,
    TranscriptionPendingError,
)
from callcore.domain.model import (
    AIResult,
    Arrival,
    Attempt,
    Call,
    CallState,
    Packet,
    PacketStats,
    Recording,
    WorkItem,
    error_text,
    transition_rule,
)
from callcore.ports import AIProvider, CallArchive, CallPage, CallStore, PacketWrite, RecordingStore, WorkQueue

if TYPE_CHECKING:
    from callcore.domain.audio import CallAudio
    from callcore.domain.audio_format import AudioFormat
    from callcore.domain.model import Sentiment

logger = logging.getLogger(__name__)


def _keys(call_id: str, round: int) -> dict[str, object]:
    """A log line's structured keys for a call: the functions' JSON logs carry them as fields."""
    return {"call_id": call_id, "round": round}


class PacketOutcome(StrEnum):
    ACCEPTED = "accepted"
    DUPLICATE = "duplicate"
    CONFLICT = "conflict"  # batches only: the single route answers 409
    ENDED = "ended"  # batches only: the single route answers 409


def record_packet(store: CallStore, call_id: str, packet: Packet) -> PacketOutcome:
    """Store one packet of a call. Duplicates are normal traffic, not errors.

    Raises SequenceConflictError when the sequence holds different data, and
    CallNotAcceptingPacketsError once the call has ended.
    """
    write = store.add_packet(call_id, packet, now=now_iso(), received_at_ns=now_ns())
    outcome = _outcome(call_id, packet, write)
    if outcome is PacketOutcome.DUPLICATE:
        store.count_duplicate(call_id, token=new_token())
    elif outcome is PacketOutcome.CONFLICT:
        raise SequenceConflictError(call_id, packet.sequence)
    elif outcome is PacketOutcome.ENDED:
        assert write.call_state is not None
        raise CallNotAcceptingPacketsError(call_id, write.call_state)
    return outcome


def record_packets(store: CallStore, call_id: str, packets: list[Packet]) -> list[PacketOutcome]:
    """Store a batch of packets, one outcome each, in request order, by the single route's rules.

    ``conflict`` is where record_packet raises SequenceConflictError, ``ended`` where it
    raises CallNotAcceptingPacketsError. A sequence repeated within the batch is judged
    against the batch's first packet of that sequence, as if it came just after it. A
    dependency failure raises DependencyUnavailableError: what was stored stays stored,
    and sending the whole batch again answers it ``duplicate``.
    """
    first: dict[int, Packet] = {}
    for packet in packets:
        first.setdefault(packet.sequence, packet)
    writes = dict(
        zip(
            first, store.add_packets(call_id, list(first.values()), now=now_iso(), received_at_ns=now_ns()), strict=True
        )
    )
    outcomes: list[PacketOutcome] = []
    for packet in packets:
        write = writes[packet.sequence]
        if packet is not first[packet.sequence]:
            # What its sequence holds now: the first copy if it was stored, else what stopped it.
            stored = first[packet.sequence] if write.stored else write.existing
            write = PacketWrite(stored=False, existing=stored, call_state=write.call_state)
        outcomes.append(_outcome(call_id, packet, write))
    duplicates = outcomes.count(PacketOutcome.DUPLICATE)
    if duplicates:
        store.count_duplicate(call_id, token=new_token(), count=duplicates)
    return outcomes


def _outcome(call_id: str, packet: Packet, write: PacketWrite) -> PacketOutcome:
    if write.stored:
        return PacketOutcome.ACCEPTED
    if write.existing is not None:
        # A retransmission of a stored packet is a duplicate even after the call ended:
        # the packet is stored and part of the call's work, so 409 would be a lie.
        return PacketOutcome.DUPLICATE if write.existing.same_content(packet) else PacketOutcome.CONFLICT
    if write.call_state is None:
        raise RuntimeError(f"store refused packet {packet.sequence} of {call_id!r} without a reason")
    return PacketOutcome.ENDED


@dataclass(frozen=True)
class EndOutcome:
    state: CallState
    processing: bool  # True while the call's AI work is pending (202), False once finished (200)
    moved: bool = False  # this request moved the call IN_PROGRESS -> PROCESSING_AI (not a repeat)


def new_token() -> str:
    """A name for one write request, so that the same request resent is recognised as itself."""
    return uuid.uuid4().hex


def end_call(store: CallStore, queue: WorkQueue, call_id: str, last_sequence: int | None = None) -> EndOutcome:
    """IN_PROGRESS -> PROCESSING_AI and exactly one work item; repeating it changes nothing.

    Once the call is PROCESSING_AI its round's work item will be processed: sent by the
    request that moved it, or, if that send failed, by the sweeper (``sweep_processing``).
    So every 202 for an end, this one's or a repeat's, keeps that promise.
    """
    rule = transition_rule(call_id, CallState.IN_PROGRESS, CallState.PROCESSING_AI)
    try:
        call = store.transition(call_id, rule, now=now_iso(), token=new_token(), last_sequence=last_sequence)
    except InvalidTransitionError as exc:
        return EndOutcome(state=exc.current, processing=exc.current is CallState.PROCESSING_AI)
    _enqueue(store, queue, call)
    return EndOutcome(state=call.state, processing=True, moved=True)


def _enqueue(store: CallStore, queue: WorkQueue, call: Call) -> bool:
    """Send the work item of the round that ``call`` just entered, and record that it was sent.

    Only the request that won the transition sends, which is why concurrent ends put
    exactly one item on the queue. A failed send is not undone by moving the call back:
    a concurrent repeat of the end may already have answered 202 on seeing
    PROCESSING_AI. The call keeps ``enqueued_round < round``, and the sweeper sends the
    item once no request can still be sending it.
    """
    item = WorkItem(call_id=call.call_id, round=call.round)
    try:
        queue.send(item)
    except DependencyUnavailableError as exc:
        logger.warning(
            "call %s round %d: work item not sent (%s); the sweeper will send it",
            call.call_id,
            call.round,
            exc,
            extra=_keys(call.call_id, call.round),
        )
        return False
    try:
        store.mark_enqueued(call.call_id, call.round, now=now_iso())
    except DependencyUnavailableError as exc:
        # The item is on the queue. At worst the sweeper sends it again, and the worker
        # acts on one work item a round.
        logger.warning(
            "call %s round %d: work item sent but not recorded (%s)",
            call.call_id,
            call.round,
            exc,
            extra=_keys(call.call_id, call.round),
        )
    return True


@dataclass(frozen=True)
class CallDetails:
    call: Call
    packets: PacketStats


def get_call(store: CallStore, archive: CallArchive, call_id: str) -> CallDetails:
    call = store.get_call(call_id)
    if call is None:
        raise CallNotFoundError(call_id)
    if call.packet_stats is None and call.state is CallState.ARCHIVED:
        # Archived before the worker noted statistics on calls: they are in its record (its
        # packets may be gone).
        record = archive.find(call_id)
        if record:
            return CallDetails(call=call, packets=stats_from_record(record))
    return CallDetails(call=call, packets=_packet_stats(store, call))


def _packet_stats(store: CallStore, call: Call) -> PacketStats:
    """As the worker noted them (one item read, however long the call), with the duplicates
    counted since; before that, from the packets' arrivals."""
    if call.packet_stats is not None:
        return replace(call.packet_stats, duplicates=call.duplicates)
    return PacketStats.from_arrivals(
        store.arrivals(call.call_id), duplicates=call.duplicates, last_sequence=call.last_sequence
    )


ARCHIVABLE = (CallState.COMPLETED, CallState.FAILED)


def archive_call(store: CallStore, archive: CallArchive, call_id: str) -> Call:
    """COMPLETED or FAILED -> ARCHIVED, its record saved first; an ARCHIVED call is returned as it is.

    The record goes before the state: an ARCHIVED call always has one. When a retry (or
    another archive) moves the call in between, the transition is refused and the record
    saved here is replaced by the one of the call's real archiving. Raises
    CallNotFoundError, or InvalidTransitionError from IN_PROGRESS or PROCESSING_AI.
    """
    call = store.get_call(call_id)
    if call is None:
        raise CallNotFoundError(call_id)
    if call.state is CallState.ARCHIVED:
        return call
    if call.state not in ARCHIVABLE:
        raise InvalidTransitionError(call_id, call.state, CallState.ARCHIVED, call)
    now = now_iso()
    archive.save(call_id, archive_record(call, _packet_stats(store, call), archived_at=now))
    rule = transition_rule(call_id, call.state, CallState.ARCHIVED)
    try:
        return store.transition(call_id, rule, now=now, token=new_token())
    except InvalidTransitionError as exc:
        if exc.current is CallState.ARCHIVED and exc.call is not None:
            return exc.call  # a concurrent archive did it
        raise


def archive_due(store: CallStore, archive: CallArchive, *, older_than_s: float, limit: int = 100) -> int:
    """Archive the COMPLETED and FAILED calls unchanged for ``older_than_s``; how many were archived.

    At most ``limit`` a state per run (a scheduled run's time is bounded; the next one goes on).
    A call that moved meanwhile (an operator's retry) is left to its new state.
    """
    cutoff = iso_seconds_ago(older_than_s)
    archived = 0
    for state in ARCHIVABLE:
        page = store.list_calls(state, limit=limit, cursor=None, updated_before=cutoff)
        for listed in page.calls:
            try:
                archive_call(store, archive, listed.call_id)
            except InvalidTransitionError:
                continue
            archived += 1
    return archived


def get_recording(store: CallStore, call_id: str) -> Recording:
    """The call's stored recording. Raises CallNotFoundError, or RecordingNotFoundError before there is one."""
    call = store.get_call(call_id)
    if call is None:
        raise CallNotFoundError(call_id)
    if call.recording is None:
        raise RecordingNotFoundError(call_id)
    return call.recording


def list_calls(store: CallStore, state: CallState, *, limit: int, cursor: str | None) -> CallPage:
    return store.list_calls(state, limit=limit, cursor=cursor)


# How far a state's count goes: an operator reads "1000+" as well as an exact figure, and
# the cost of a count (the index items DynamoDB reads) stays bounded as ARCHIVED grows.
COUNT_UP_TO = 1000


@dataclass(frozen=True)
class StateCount:
    state: CallState
    count: int  # at most COUNT_UP_TO
    more: bool  # the state holds more calls than ``count``


def count_calls(store: CallStore, *, up_to: int = COUNT_UP_TO) -> list[StateCount]:
    """How many calls each state holds, in CallState's order, each count stopping at ``up_to``."""
    counts = []
    for state in CallState:
        # One more than shown, to tell "exactly up_to" from "more than up_to".
        seen = store.count_calls(state, up_to=up_to + 1)
        counts.append(StateCount(state=state, count=min(seen, up_to), more=seen > up_to))
    return counts


def retry_call(store: CallStore, queue: WorkQueue, call_id: str) -> Call:
    """Operator retry: FAILED -> PROCESSING_AI in a new round, with a new work item.

    Raises CallNotFoundError, or InvalidTransitionError from any state but FAILED.
    """
    rule = transition_rule(call_id, CallState.FAILED, CallState.PROCESSING_AI)
    call = store.transition(call_id, rule, now=now_iso(), token=new_token())
    _enqueue(store, queue, call)
    return call


class ProcessOutcome(StrEnum):
    COMPLETED = "completed"
    FAILED = "failed"
    PENDING = "pending"  # a transcription job still runs; a delayed check message follows it
    SKIPPED = "skipped"  # not PROCESSING_AI in the item's round: already done, or a stale duplicate


@dataclass(frozen=True)
class AudioLimits:
    """What the worker accepts of a call's audio."""

    default_format: AudioFormat
    max_call_bytes: int  # packet data read from the store
    max_pcm_bytes: int  # decoded audio, gaps included


async def process_call(
    store: CallStore,
    ai: AIProvider,
    recordings: RecordingStore,
    queue: WorkQueue,
    item: WorkItem,
    *,
    limits: AudioLimits,
) -> ProcessOutcome:
    """One AI attempt for a work item, or one check of a transcription job an attempt started.

    An attempt reads the call's packets, decodes them (audio that is not in the call's
    format fails the call at once, naming the packets), and transcribes and scores it while
    it stores the recording, once (first, for a provider that reads it from the store).

    Raises RetryableAIError (or DependencyUnavailableError) for SQS to deliver the item
    again; a permanent AI error, or a call over its size limits, fails the call at once
    instead of burning retries. A job still running is not a failure: a delayed check
    message is sent, and this item is done. Every write is conditional on the call being
    PROCESSING_AI in the item's round, so a redelivered message changes nothing once the
    round is over.
    """
    # A check resumes the audio its attempt prepared; a new attempt prepares it below.
    if item.check:
        begun: CallAudio | Attempt | None = await _checked_audio(store, item)
    else:
        begun = await asyncio.to_thread(
            functools.partial(store.start_attempt, item.call_id, item.round, now=now_iso(), token=new_token())
        )
    if begun is None:
        return ProcessOutcome.SKIPPED
    attempt = begun.number if isinstance(begun, Attempt) else begun.attempt
    unnoted = Unnoted()
    try:
        if isinstance(begun, Attempt):
            prepared = await asyncio.to_thread(_prepare_audio, store, recordings, item, begun, limits)
            audio = prepared.audio
            unnoted = Unnoted() if prepared.noted_first(ai) else prepared.unnoted
            transcript, sentiment = await _answer_saving(ai, store, recordings, prepared)
        else:
            audio = begun
            transcript, sentiment = await _answer(ai, audio)
    except TranscriptionPendingError as exc:
        # The check that follows reads the recording from the call item.
        await asyncio.to_thread(_note, store, item.call_id, unnoted)
        await asyncio.to_thread(functools.partial(queue.send, item.next_check(attempt), delay_s=exc.check_after_s))
        logger.info(
            "call %s round %d: %s; checking again in %d s",
            item.call_id,
            item.round,
            exc,
            exc.check_after_s,
            extra=_keys(item.call_id, item.round),
        )
        return ProcessOutcome.PENDING
    except CallTooLargeError as exc:
        await _record_error(store, item, attempt, exc, unnoted)
        await asyncio.to_thread(keep_packet_stats, store, item.call_id)
        return await _finish(
            store, item, CallState.FAILED, failure_reason=f"the call is too large to process: {error_text(exc)}"
        )
    except PermanentAIError as exc:
        await _record_error(store, item, attempt, exc, unnoted)
        reason = f"AI failed permanently on attempt {attempt}: {error_text(exc)}"
        return await _finish(store, item, CallState.FAILED, failure_reason=reason)
    except RetryableAIError as exc:
        await _record_error(store, item, attempt, exc, unnoted)
        raise
    result = AIResult(transcript, sentiment).bounded()
    try:
        return await _finish(store, item, CallState.COMPLETED, result=result, unnoted=unnoted)
    except CallTooLargeError as exc:
        reason = f"the AI result could not be stored on attempt {attempt}: {error_text(exc)}"
        return await _finish(store, item, CallState.FAILED, failure_reason=reason, unnoted=unnoted)


async def _answer(ai: AIProvider, audio: CallAudio) -> tuple[str, Sentiment]:
    transcript = await ai.transcribe(audio)
    return transcript, await ai.score_sentiment(transcript)


async def _answer_saving(
    ai: AIProvider, store: CallStore, recordings: RecordingStore, prepared: PreparedAudio
) -> tuple[str, Sentiment]:
    """The AI's answer, and the recording saved (when the call has none yet) while the AI
    works. Saved, whatever the AI answered, before this returns or raises, so that the
    attempt's last write may note it. A failed save (DependencyUnavailableError) fails the
    attempt for a retry, whatever the AI answered: its answer is not kept without the
    recording it is of.

    Saved and noted first (``PreparedAudio.noted_first``) for a provider that reads it from
    the store (a Transcribe job is paid for: its recording is on the call before it starts),
    and when an earlier attempt died before its last write (it may again)."""
    audio = prepared.audio
    if prepared.wav is None:
        return await _answer(ai, audio)
    save = functools.partial(recordings.save, audio.call_id, prepared.wav, duration_s=audio.recording.duration_s)
    if prepared.noted_first(ai):
        await asyncio.to_thread(save)
        await asyncio.to_thread(_note, store, audio.call_id, prepared.unnoted)
        return await _answer(ai, audio)
    answer = asyncio.ensure_future(_answer(ai, audio))
    try:
        await asyncio.to_thread(save)
    except BaseException:
        # Not cancelled: a transcription runs in a thread that cannot be stopped, and holds
        # the decoder the sandbox's next invocation needs. Waited out, its answer dropped.
        await asyncio.gather(answer, return_exceptions=True)
        raise
    return await answer


@dataclass(frozen=True)
class Unnoted:
    """What an attempt found of its call (its recording, its packet statistics) that the call
    item does not show yet. It is written with the write that ends the attempt (its error, or
    the round's end): one request fewer an attempt than a write of its own. An attempt
    that dies in between (a timeout in the AI) loses nothing: the next finds them again,
    saves the same object, and notes it before it asks the AI
    (``PreparedAudio.earlier_attempt_died``)."""

    recording: Recording | None = None
    packet_stats: PacketStats | None = None


def _note(store: CallStore, call_id: str, unnoted: Unnoted) -> None:
    """``unnoted`` as a write of its own, for an attempt that ends without a write of the call."""
    if unnoted.recording is not None:
        store.set_recording(call_id, unnoted.recording, packet_stats=unnoted.packet_stats)
    elif unnoted.packet_stats is not None:
        store.note_packet_stats(call_id, unnoted.packet_stats)


async def _record_error(store: CallStore, item: WorkItem, attempt: int, exc: Exception, unnoted: Unnoted) -> None:
    await asyncio.to_thread(
        functools.partial(
            store.record_attempt_error,
            item.call_id,
            item.round,
            attempt,
            error_text(exc),
            recording=unnoted.recording,
            packet_stats=unnoted.packet_stats,
        )
    )


@dataclass(frozen=True)
class PreparedAudio:
    """An attempt's audio; what the call item does not show yet of it (its recording, its
    packet statistics), for the attempt's last write to note; and the recording's WAV when
    it is new, to save."""

    audio: CallAudio
    unnoted: Unnoted = Unnoted()
    wav: bytes | None = None
    # The call has no recording noted after an earlier attempt: that one died before its
    # last write (a timeout in the AI, say). This one notes the recording as soon as it is
    # saved, so that a call whose every attempt dies still shows it.
    earlier_attempt_died: bool = False

    def noted_first(self, ai: AIProvider) -> bool:
        """Whether the new recording is saved and noted before the AI is asked."""
        return self.wav is not None and (ai.reads_recording or self.earlier_attempt_died)


def _prepare_audio(
    store: CallStore, recordings: RecordingStore, item: WorkItem, attempt: Attempt, limits: AudioLimits
) -> PreparedAudio:
    """The call's packets decoded into its audio and recording: an attempt that finds the
    recording and statistics noted (the call item came back with the attempt's count)
    neither computes nor saves them again."""
    # Here, not at the top: the ingest function imports this module and never decodes audio.
    from callcore.domain.audio import CallAudio, UndecodableAudioError, call_format, decode_call, from_wav, to_wav

    packets = store.packets(item.call_id, max_bytes=limits.max_call_bytes)
    noted = attempt.call.packet_stats
    # A call is created by its first packet, so none left, or fewer than were noted, means
    # they have been expiring (PACKET_RETENTION_DAYS; DynamoDB deletes them one by one, within
    # days): a late retry transcribes what an earlier round stored, not what is left, and
    # notes no statistics of it.
    if not packets or (noted is not None and len(packets) < noted.received):
        if attempt.recording is not None:
            try:
                audio = from_wav(recordings.read(attempt.recording))
            except RecordingExpiredError as exc:
                raise UndecodableAudioError(f"the call's packets have expired, and {exc}") from exc
            return PreparedAudio(CallAudio(item.call_id, item.round, attempt.number, attempt.recording, audio=audio))
        left = f"{len(packets)} of the call's {noted.received}" if noted else "none of the call's"
        raise UndecodableAudioError(
            f"{left} packets are left (they expire PACKET_RETENTION_DAYS after they arrive), "
            "and it has no recording to transcribe instead"
        )
    # Noted once (then GET reads one item, and the packets may expire: PACKET_RETENTION_DAYS).
    stats = None
    if noted is None:
        arrivals = [Arrival(p.sequence, p.received_at_ns or 0) for p in packets]
        stats = PacketStats.from_arrivals(arrivals, last_sequence=attempt.call.last_sequence)
    recording = attempt.recording
    try:
        fmt = call_format(packets, limits.default_format)
        decoded = decode_call(packets, fmt, max_pcm_bytes=limits.max_pcm_bytes)
    except (PermanentAIError, CallTooLargeError):
        if stats is not None:  # a call whose audio cannot be decoded keeps its statistics too
            store.note_packet_stats(item.call_id, stats)
        raise
    wav = None
    if recording is None:
        # An earlier attempt may have saved it and failed to note it: saving again writes the
        # same object (an ended call's packets never change). Asking S3 first would cost every
        # first attempt a request, for a failure that is rare.
        wav = to_wav(decoded)
        recording = recordings.recording_for(item.call_id, wav, duration_s=decoded.duration_s)
    call_audio = CallAudio(
        call_id=item.call_id,
        round=item.round,
        attempt=attempt.number,
        recording=recording,
        packets=packets,
        audio=decoded,
    )
    return PreparedAudio(
        call_audio,
        Unnoted(recording if wav is not None else None, stats),
        wav,
        earlier_attempt_died=attempt.number > 1,
    )


async def _checked_audio(store: CallStore, item: WorkItem) -> CallAudio | None:
    """What a delayed check resumes: None when the round is over (nothing to check any more)."""
    call = await asyncio.to_thread(store.get_call, item.call_id)
    if call is None or call.state is not CallState.PROCESSING_AI or call.round != item.round:
        return None
    if call.recording is None or item.attempt is None:
        # A check follows an attempt that stored the recording; without one there is no
        # job to check, and a new attempt (this item's redelivery) starts over.
        raise RetryableAIError(f"call {item.call_id!r} has no recording to check a transcription of")
    from callcore.domain.audio import CallAudio

    return CallAudio(
        call_id=item.call_id, round=item.round, attempt=item.attempt, recording=call.recording, check=item.check
    )


async def _finish(
    store: CallStore,
    item: WorkItem,
    target: CallState,
    *,
    failure_reason: str | None = None,
    result: AIResult | None = None,
    unnoted: Unnoted = Unnoted(),
) -> ProcessOutcome:
    rule = transition_rule(item.call_id, CallState.PROCESSING_AI, target)
    try:
        await asyncio.to_thread(
            functools.partial(
                store.transition,
                item.call_id,
                rule,
                now=now_iso(),
                token=new_token(),
                expected_round=item.round,
                failure_reason=failure_reason,
                result=result,
                recording=unnoted.recording,
                packet_stats=unnoted.packet_stats,
            )
        )
    except InvalidTransitionError:
        return ProcessOutcome.SKIPPED  # a duplicate delivery finished the round first
    return ProcessOutcome.COMPLETED if target is CallState.COMPLETED else ProcessOutcome.FAILED


def keep_packet_stats(store: CallStore, call_id: str) -> None:
    """Note the call's packet statistics from its packets' arrivals, unless an attempt noted
    them: a call that fails before any attempt read its packets (too large, work item lost,
    every attempt cut short) would otherwise show none once they expire."""
    call = store.get_call(call_id)
    if call is None or call.packet_stats is not None or call.state is CallState.IN_PROGRESS:
        return
    stats = _packet_stats(store, call)
    if stats.received:  # none left: they expired, and zeros would be wrong
        store.note_packet_stats(call_id, stats)


def _fail_round(store: CallStore, call_id: str, round: int, reason: str) -> bool:
    """PROCESSING_AI -> FAILED for ``round`` only, its packet statistics kept; False when the
    round was already over."""
    keep_packet_stats(store, call_id)
    rule = transition_rule(call_id, CallState.PROCESSING_AI, CallState.FAILED)
    try:
        store.transition(call_id, rule, now=now_iso(), token=new_token(), expected_round=round, failure_reason=reason)
    except (InvalidTransitionError, CallNotFoundError):
        return False
    return True


def _attempts_text(call: Call, round: int) -> str:
    in_round = [a for a in call.attempts if a.round == round]
    errors = [a.error for a in in_round if a.error]
    last = errors[-1] if errors else "none recorded"
    return f"{len(in_round)} attempt{'s' if len(in_round) != 1 else ''}; last error: {last}"


def fail_exhausted(store: CallStore, item: WorkItem) -> bool:
    """The work item ran out of receives (dead-letter queue): FAILED, with the attempts and last error.

    Returns False when there was nothing to do: unknown call, or not PROCESSING_AI in
    that round any more. Repeating it is harmless.
    """
    call = store.get_call(item.call_id)
    if call is None or call.state is not CallState.PROCESSING_AI or call.round != item.round:
        return False
    reason = f"AI processing gave up after all retries ({_attempts_text(call, item.round)})"
    return _fail_round(store, item.call_id, item.round, reason)


@dataclass(frozen=True)
class SweepOutcome:
    resent: int = 0
    failed: int = 0
    errors: int = 0
    # Calls found PROCESSING_AI past the retry horizon (no result PROCESSING_TIMEOUT_S after
    # their send), whatever the sweep did with them: what the on-call alarm watches.
    past_horizon: int = 0

    def __add__(self, other: SweepOutcome) -> SweepOutcome:
        return SweepOutcome(
            self.resent + other.resent,
            self.failed + other.failed,
            self.errors + other.errors,
            self.past_horizon + other.past_horizon,
        )


def sweep_processing(
    store: CallStore,
    queue: WorkQueue,
    *,
    resend_after_s: float,
    processing_timeout_s: float,
    give_up_after_s: float,
    page_size: int = 100,
) -> SweepOutcome:
    """No call stays PROCESSING_AI for good.

    - A round whose work item was never recorded as sent (its end's send failed) gets
      it sent, once no request can still be sending it (``resend_after_s``, longer than
      any ingest request). One sweep claims the send, so overlapping sweeps send once.
    - A round with no result ``processing_timeout_s`` after its item was last sent (past
      the longest retry horizon) may have lost its item: it is sent again, once.
    - A round with no result ``give_up_after_s`` after its item was last sent has
      certainly lost it (a queue keeps a message no longer than its retention period):
      the call is FAILED with that reason, and the operator can retry it.

    A call that cannot be swept now (a throttled write, say) is logged and left for the
    next sweep; it never stops the sweep of the others.
    """
    outcome = SweepOutcome()
    cutoff = iso_seconds_ago(resend_after_s)
    cursor: str | None = None
    while True:
        page = store.list_calls(CallState.PROCESSING_AI, limit=page_size, cursor=cursor, updated_before=cutoff)
        for listed in page.calls:
            try:
                outcome += _sweep_one(
                    store, queue, listed, cutoff=cutoff, timeout_s=processing_timeout_s, give_up_s=give_up_after_s
                )
            except CallCoreError:
                logger.exception(
                    "call %s round %d: sweep failed; the next sweep tries again",
                    listed.call_id,
                    listed.round,
                    extra=_keys(listed.call_id, listed.round),
                )
                outcome += SweepOutcome(errors=1)
        if page.next_cursor is None:
            return outcome
        cursor = page.next_cursor


def _sweep_one(
    store: CallStore, queue: WorkQueue, listed: Call, *, cutoff: str, timeout_s: float, give_up_s: float
) -> SweepOutcome:
    call_id, round = listed.call_id, listed.round
    if listed.enqueued_round < round:
        if not store.claim_send(call_id, round, now=now_iso(), unclaimed_since=cutoff):
            return SweepOutcome()
        logger.warning(
            "call %s round %d: sending a work item never recorded as sent", call_id, round, extra=_keys(call_id, round)
        )
        return SweepOutcome(resent=1) if _enqueue(store, queue, listed) else SweepOutcome(errors=1)
    if seconds_since(listed.updated_at) <= timeout_s:
        return SweepOutcome()
    call = store.get_call(call_id)
    if call is None or call.state is not CallState.PROCESSING_AI or call.round != round:
        return SweepOutcome()
    silent_s = seconds_since(max(call.updated_at, call.enqueued_at or call.updated_at))
    if silent_s <= timeout_s:
        return SweepOutcome()
    return SweepOutcome(past_horizon=1) + _past_horizon(
        store, queue, call, silent_s=silent_s, timeout_s=timeout_s, give_up_s=give_up_s
    )


def _past_horizon(
    store: CallStore, queue: WorkQueue, call: Call, *, silent_s: float, timeout_s: float, give_up_s: float
) -> SweepOutcome:
    """A round silent past the retry horizon: failed once its item is certainly gone, else resent once."""
    call_id, round = call.call_id, call.round
    if silent_s > give_up_s:
        reason = (
            f"no AI result {silent_s:.0f} s after its work item was last sent (a queue keeps a message at most "
            f"{give_up_s - timeout_s:.0f} s): the work item was lost ({_attempts_text(call, round)}). "
            "Retry the call to process it again."
        )
        if _fail_round(store, call_id, round, reason):
            logger.error("call %s round %d: work item lost; call FAILED", call_id, round, extra=_keys(call_id, round))
            return SweepOutcome(failed=1)
        return SweepOutcome()
    if store.claim_stale_resend(call_id, round):
        logger.warning(
            "call %s round %d: no result %.0f s after its send; sending it again, once",
            call_id,
            round,
            silent_s,
            extra=_keys(call_id, round),
        )
        return SweepOutcome(resent=1) if _enqueue(store, queue, call) else SweepOutcome(errors=1)
    return SweepOutcome()

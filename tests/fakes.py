"""In-memory stand-ins for the ports, keeping the same conditions as the AWS adapters.

``InMemoryCallStore`` mirrors ``callcore.adapters.dynamodb_store.DynamoDBCallStore``:
every method is one atomic step under a lock, with the same condition the adapter
puts on its DynamoDB write, so a service that is correct against the fake is correct
against DynamoDB for the same interleavings.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import json
import threading
from collections.abc import Iterable
from typing import Any

from callcore.adapters.s3_recordings import recording_key
from callcore.domain.audio import CallAudio
from callcore.domain.errors import (
    AIError,
    CallNotFoundError,
    CallTooLargeError,
    DependencyUnavailableError,
    InvalidTransitionError,
    RecordingExpiredError,
)
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
    TransitionRule,
    WorkItem,
)
from callcore.ports import MAX_BATCHED_PACKET_BYTES, CallPage, PacketWrite


@dataclasses.dataclass(frozen=True)
class _StoredPacket:
    packet: Packet
    received_at_ns: int


class InMemoryCallStore:
    """A ``CallStore`` held in dicts; safe to share between threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._calls: dict[str, Call] = {}
        self._packets: dict[str, dict[int, _StoredPacket]] = {}
        # Calls created by a batch: the adapter keeps their packets in slots.
        self._slotted: set[str] = set()
        # The token of each call's last transition and last attempt, as the adapter keeps them.
        self._tokens: dict[tuple[str, str], str] = {}
        self._attempt_numbers: dict[tuple[str, str], int] = {}
        # The sweeper's claims, as the adapter keeps them on the call item.
        self._claims: dict[tuple[str, str], str] = {}

    def add_packet(self, call_id: str, packet: Packet, *, now: str, received_at_ns: int) -> PacketWrite:
        """Store the packet if its sequence is new AND the call is absent or IN_PROGRESS.

        Like the adapter's transaction, a refusal reports both halves: the packet
        already stored under the sequence (if any) and the call's state (if the call
        exists and is not IN_PROGRESS).
        """
        with self._lock:
            if call_id in self._slotted and len(packet.data.encode()) > MAX_BATCHED_PACKET_BYTES:
                raise CallTooLargeError(f"call {call_id!r} streams in batches")
            return self._add(call_id, packet, now=now, received_at_ns=received_at_ns)

    def add_packets(self, call_id: str, packets: list[Packet], *, now: str, received_at_ns: int) -> list[PacketWrite]:
        """Each packet as add_packet stores it, in one step; a batch that creates its call marks it slotted,
        as the adapter's layout on the call item."""
        if len({p.sequence for p in packets}) != len(packets):
            raise ValueError("a batch's sequences must be distinct")
        with self._lock:
            if packets and call_id not in self._calls:
                self._slotted.add(call_id)
            return [self._add(call_id, p, now=now, received_at_ns=received_at_ns + i) for i, p in enumerate(packets)]

    def _add(self, call_id: str, packet: Packet, *, now: str, received_at_ns: int) -> PacketWrite:
        stored = self._packets.get(call_id, {}).get(packet.sequence)
        call = self._calls.get(call_id)
        closed = call is not None and call.state is not CallState.IN_PROGRESS
        if stored is not None or closed:
            return PacketWrite(
                stored=False,
                existing=stored.packet if stored is not None else None,
                call_state=call.state if closed and call is not None else None,
            )
        if call is None:
            # The adapter sets only if_not_exists attributes, so a packet never
            # changes updated_at of an existing call.
            self._calls[call_id] = Call(call_id=call_id, state=CallState.IN_PROGRESS, created_at=now, updated_at=now)
        self._packets.setdefault(call_id, {})[packet.sequence] = _StoredPacket(packet, received_at_ns)
        return PacketWrite(stored=True)

    def count_duplicate(self, call_id: str, *, token: str, count: int = 1) -> None:
        with self._lock:
            call = self._calls.get(call_id)
            if call is None:
                raise CallNotFoundError(call_id)
            if self._tokens.get((call_id, "duplicate")) == token:
                return
            duplicates = call.duplicates + count
            # The adapter's noted statistics read the call's own count of duplicates.
            stats = call.packet_stats and dataclasses.replace(call.packet_stats, duplicates=duplicates)
            self._calls[call_id] = dataclasses.replace(call, duplicates=duplicates, packet_stats=stats)
            self._tokens[(call_id, "duplicate")] = token

    def transition(
        self,
        call_id: str,
        rule: TransitionRule,
        *,
        now: str,
        token: str,
        expected_round: int | None = None,
        last_sequence: int | None = None,
        failure_reason: str | None = None,
        result: AIResult | None = None,
        recording: Recording | None = None,
        packet_stats: PacketStats | None = None,
    ) -> Call:
        """Like the adapter: the call must be in the rule's source (and ``expected_round``, when
        given); the same ``token`` again returns the call as it is."""
        with self._lock:
            call = self._calls.get(call_id)
            if call is None:
                raise CallNotFoundError(call_id)
            if call.state is not rule.source or (expected_round is not None and call.round != expected_round):
                if self._tokens.get((call_id, "transition")) == token:
                    return call
                raise InvalidTransitionError(call_id, call.state, rule.target, call)
            updated = call.moved(
                rule, now=now, last_sequence=last_sequence, failure_reason=failure_reason, result=result
            )
            self._calls[call_id] = self._noted(updated, recording, packet_stats)
            self._tokens[(call_id, "transition")] = token
            return self._calls[call_id]

    def start_attempt(self, call_id: str, round: int, *, now: str, token: str) -> Attempt | None:
        with self._lock:
            call = self._calls.get(call_id)
            if self._tokens.get((call_id, "attempt")) == token and call is not None:
                return Attempt(self._attempt_numbers[(call_id, token)], call)
            if call is None or call.state is not CallState.PROCESSING_AI or call.round != round:
                return None
            number = call.ai_attempts + 1
            record = AttemptRecord(round=round, number=number, started_at=now)
            self._calls[call_id] = dataclasses.replace(call, ai_attempts=number, attempts=[*call.attempts, record])
            self._tokens[(call_id, "attempt")] = token
            self._attempt_numbers[(call_id, token)] = number
            return Attempt(number, self._calls[call_id])

    def record_attempt_error(
        self,
        call_id: str,
        round: int,
        attempt: int,
        error: str,
        *,
        recording: Recording | None = None,
        packet_stats: PacketStats | None = None,
    ) -> None:
        with self._lock:
            call = self._calls.get(call_id)
            if call is None or call.round != round:
                return
            attempts = list(call.attempts)
            attempts[attempt - 1] = dataclasses.replace(attempts[attempt - 1], error=error)
            call = dataclasses.replace(call, attempts=attempts, ai_last_error=error)
            self._calls[call_id] = self._noted(call, recording, packet_stats)

    def note_packet_stats(self, call_id: str, stats: PacketStats) -> None:
        self._note(call_id, packet_stats=stats)

    def set_recording(self, call_id: str, recording: Recording, *, packet_stats: PacketStats | None = None) -> None:
        self._note(call_id, recording=recording, packet_stats=packet_stats)

    def _note(
        self, call_id: str, *, recording: Recording | None = None, packet_stats: PacketStats | None = None
    ) -> None:
        with self._lock:
            call = self._calls.get(call_id)
            if call is None:
                raise CallNotFoundError(call_id)
            self._calls[call_id] = self._noted(call, recording, packet_stats)

    @staticmethod
    def _noted(call: Call, recording: Recording | None, packet_stats: PacketStats | None) -> Call:
        if recording is not None:
            call = dataclasses.replace(call, recording=recording)
        if packet_stats is not None:
            # As the adapter keeps them: the duplicates are the call's own count.
            call = dataclasses.replace(call, packet_stats=dataclasses.replace(packet_stats, duplicates=call.duplicates))
        return call

    def mark_enqueued(self, call_id: str, round: int, *, now: str) -> None:
        with self._lock:
            call = self._calls.get(call_id)
            if call is not None and call.round == round:
                self._calls[call_id] = dataclasses.replace(call, enqueued_round=round, enqueued_at=now)

    def claim_send(self, call_id: str, round: int, *, now: str, unclaimed_since: str) -> bool:
        with self._lock:
            call = self._calls.get(call_id)
            if call is None or call.state is not CallState.PROCESSING_AI or call.round != round:
                return False
            claimed = self._claims.get((call_id, "send"))
            if claimed is not None and claimed >= unclaimed_since:
                return False
            self._claims[(call_id, "send")] = now
            return True

    def claim_stale_resend(self, call_id: str, round: int) -> bool:
        with self._lock:
            call = self._calls.get(call_id)
            if call is None or call.state is not CallState.PROCESSING_AI or call.round != round:
                return False
            if self._claims.get((call_id, "stale")) == str(round):
                return False
            self._claims[(call_id, "stale")] = str(round)
            return True

    def get_call(self, call_id: str) -> Call | None:
        with self._lock:
            return self._calls.get(call_id)

    def expire_packets(self, call_id: str, sequences: Iterable[int] | None = None) -> None:
        """What DynamoDB's TTL does to the call's packets (``sequences``, else all of them),
        PACKET_RETENTION_DAYS after they arrived: one by one, within days."""
        with self._lock:
            stored = self._packets.get(call_id, {})
            for sequence in list(stored) if sequences is None else sequences:
                stored.pop(sequence, None)

    def arrivals(self, call_id: str) -> list[Arrival]:
        """In arrival order, as the adapter's arrival index gives them."""
        with self._lock:
            stored = self._packets.get(call_id, {})
            arrivals = [Arrival(seq, p.received_at_ns) for seq, p in stored.items()]
        return sorted(arrivals, key=lambda a: (a.received_at_ns, a.sequence))

    def packets(self, call_id: str, *, max_bytes: int | None = None) -> list[Packet]:
        """Every stored packet of the call, in sequence order; CallTooLargeError past ``max_bytes``."""
        with self._lock:
            stored = self._packets.get(call_id, {})
            packets = [
                dataclasses.replace(stored[seq].packet, received_at_ns=stored[seq].received_at_ns)
                for seq in sorted(stored)
            ]
        total = 0
        for packet in packets:
            total += len(packet.data)
            if max_bytes is not None and total > max_bytes:
                raise CallTooLargeError(
                    f"call {call_id!r} has more than {max_bytes} bytes of packet data (at packet {packet.sequence})"
                )
        return packets

    def list_calls(
        self, state: CallState, *, limit: int, cursor: str | None, updated_before: str | None = None
    ) -> CallPage:
        """Calls in ``state``, most recently updated first (ties: call_id descending).

        The cursor is a position (updated_at, call_id), like DynamoDB's
        ExclusiveStartKey, so paging goes on correctly while calls change state.
        Calls carry only what the adapter's index projects.
        """
        if limit < 1:
            raise ValueError("limit must be >= 1")
        after = _decode_cursor(cursor, state) if cursor else None
        with self._lock:
            ordered = sorted(
                (
                    c
                    for c in self._calls.values()
                    if c.state is state and (updated_before is None or c.updated_at < updated_before)
                ),
                key=lambda c: (c.updated_at, c.call_id),
                reverse=True,
            )
        if after is not None:
            ordered = [c for c in ordered if (c.updated_at, c.call_id) < after]
        page = ordered[:limit]
        calls = [
            Call(
                call_id=c.call_id,
                state=c.state,
                created_at=c.created_at,
                updated_at=c.updated_at,
                failure_reason=c.failure_reason,
                round=c.round,
                enqueued_round=c.enqueued_round,
            )
            for c in page
        ]
        more = len(ordered) > limit
        return CallPage(calls=calls, next_cursor=_encode_cursor(state, page[-1]) if more else None)

    def count_calls(self, state: CallState, *, up_to: int) -> int:
        if up_to < 1:
            raise ValueError("up_to must be >= 1")
        with self._lock:
            return min(sum(c.state is state for c in self._calls.values()), up_to)


def _encode_cursor(state: CallState, last: Call) -> str:
    raw = json.dumps({"state": state.value, "updated_at": last.updated_at, "call_id": last.call_id})
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def _decode_cursor(cursor: str, state: CallState) -> tuple[str, str]:
    try:
        raw = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    except (binascii.Error, ValueError) as exc:
        raise ValueError("cursor is not one this API returned") from exc
    if (
        not isinstance(raw, dict)
        or raw.get("state") != state.value
        or not isinstance(raw.get("updated_at"), str)
        or not isinstance(raw.get("call_id"), str)
    ):
        raise ValueError("cursor is not one this API returned")
    return raw["updated_at"], raw["call_id"]


class FakeQueue:
    """A ``WorkQueue`` that records what was sent.

    ``fail_next`` makes the next send raise DependencyUnavailableError("SQS", ...)
    once, as in a brief outage; ``fail_with`` makes every send raise that error until
    it is cleared. A failed send sends nothing.

    ``change_visibility`` (what the worker calls to back off a failed message) records
    ``(receipt_handle, timeout_s)`` in ``visibility_changes``; ``visibility_fail_with``
    makes it raise instead, recording nothing.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.sent: list[WorkItem] = []
        self.delays: list[int] = []  # each sent item's delay_s, in order
        self.fail_next: bool = False
        self.fail_with: Exception | None = None
        self.visibility_changes: list[tuple[str, int]] = []
        self.visibility_fail_with: Exception | None = None

    def send(self, item: WorkItem, *, delay_s: int = 0) -> None:
        with self._lock:
            if self.fail_with is not None:
                raise self.fail_with
            if self.fail_next:
                self.fail_next = False
                raise DependencyUnavailableError("SQS", "simulated outage")
            self.sent.append(item)
            self.delays.append(delay_s)

    def change_visibility(self, receipt_handle: str, timeout_s: int) -> None:
        with self._lock:
            if self.visibility_fail_with is not None:
                raise self.visibility_fail_with
            self.visibility_changes.append((receipt_handle, timeout_s))


AIOutcome = str | AIError
"""One scripted answer of ``FakeAIProvider.transcribe``: a transcript, or an error to raise."""


class FakeAIProvider:
    """An ``AIProvider`` with no latency whose answers are scripted per call.

    ``script[call_id]`` lists the outcomes of that call's successive ``transcribe``
    calls, in order: a transcript string is returned, an ``AIError`` (RetryableAIError,
    PermanentAIError) is raised. Once a call's script is used up, or for a call with
    no script, ``transcribe`` returns ``default_transcript``. Every ``transcribe`` is
    recorded in ``calls`` as ``(call_id, packets)`` and in ``audios`` as given, every ``score_sentiment`` in
    ``scored``; ``score_sentiment`` returns ``sentiment``.
    """

    reads_recording = False  # as the mock and local providers

    def __init__(
        self,
        script: dict[str, list[AIOutcome]] | None = None,
        *,
        default_transcript: str = "hello, thanks for calling",
        sentiment: Sentiment | None = None,
    ) -> None:
        self._lock = threading.Lock()
        self._script = {call_id: list(outcomes) for call_id, outcomes in (script or {}).items()}
        self.default_transcript = default_transcript
        self.sentiment = sentiment or Sentiment(label="POSITIVE", score=0.5)
        self.calls: list[tuple[str, list[Packet]]] = []
        self.audios: list[CallAudio] = []
        self.scored: list[str] = []

    def calls_for(self, call_id: str) -> int:
        """How many times ``transcribe`` was called for ``call_id``."""
        with self._lock:
            return sum(1 for recorded, _ in self.calls if recorded == call_id)

    async def transcribe(self, audio: CallAudio) -> str:
        call_id = audio.call_id
        with self._lock:
            self.calls.append((call_id, list(audio.packets)))
            self.audios.append(audio)
            outcomes = self._script.get(call_id)
            outcome = outcomes.pop(0) if outcomes else self.default_transcript
        if isinstance(outcome, AIError):
            raise outcome
        return outcome

    async def score_sentiment(self, transcript: str) -> Sentiment:
        with self._lock:
            self.scored.append(transcript)
        return self.sentiment


class InMemoryCallArchive:
    """A ``CallArchive`` in a dict, records kept as the JSON the S3 adapter writes."""

    def __init__(self) -> None:
        self._records: dict[str, str] = {}

    def save(self, call_id: str, record: dict[str, Any]) -> None:
        self._records[call_id] = json.dumps(record)

    def find(self, call_id: str) -> dict[str, Any] | None:
        text = self._records.get(call_id)
        return json.loads(text) if text is not None else None


class InMemoryRecordingStore:
    """A ``RecordingStore`` in a dict, keyed as the S3 adapter keys its objects.

    ``saves`` counts the writes, so that a test sees a redelivery write nothing new.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.objects: dict[str, bytes] = {}
        self.durations: dict[str, float] = {}
        self.saves = 0

    def recording_for(self, call_id: str, wav: bytes, *, duration_s: float) -> Recording:
        return Recording(key=recording_key(call_id), duration_s=duration_s, bytes=len(wav))

    def save(self, call_id: str, wav: bytes, *, duration_s: float) -> Recording:
        recording = self.recording_for(call_id, wav, duration_s=duration_s)
        with self._lock:
            self.saves += 1
            self.objects[recording.key] = wav
            self.durations[recording.key] = duration_s
        return recording

    def read(self, recording: Recording) -> bytes:
        with self._lock:
            if recording.key not in self.objects:
                raise RecordingExpiredError(recording.key)
            return self.objects[recording.key]

    def download_url(self, recording: Recording, *, expires_s: int) -> str:
        return f"https://recordings.example/{recording.key}?expires={expires_s}"

    def download_origin(self) -> str:
        return "https://recordings.example"


def call_audio(call_id: str, packets: list[Packet], *, round: int = 1, attempt: int = 1) -> CallAudio:
    """What the worker hands a provider for ``packets``: a recording noted, no decoded PCM."""
    recording = Recording(key=recording_key(call_id), duration_s=0.0, bytes=0)
    return CallAudio(call_id=call_id, round=round, attempt=attempt, recording=recording, packets=packets)

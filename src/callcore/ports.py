"""The ports the services need: small interfaces named by role, with AWS adapters behind them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from callcore.domain.audio import CallAudio
    from callcore.domain.model import (
        AIResult,
        Arrival,
        Attempt,
        Call,
        CallState,
        Packet,
        PacketStats,
        Recording,
        Sentiment,
        TransitionRule,
        WorkItem,
    )


# The data of one packet of a batch (and of any packet of a call streamed in batches): ten
# of them fit one DynamoDB item (400 KB) with room to spare. A 20 ms packet is 160 to 640 bytes.
MAX_BATCHED_PACKET_BYTES = 32 * 1024


@dataclass(frozen=True)
class PacketWrite:
    """What happened to one attempt to store a packet.

    ``stored`` is true when the packet is now stored and part of its call. Otherwise
    ``existing`` holds the packet already stored under that sequence, if any, and
    ``call_state`` the call's state when the call no longer accepts packets.
    """

    stored: bool
    existing: Packet | None = None
    call_state: CallState | None = None


@dataclass(frozen=True)
class CallPage:
    calls: list[Call]
    next_cursor: str | None


class CallStore(Protocol):
    """Where calls and their packets live. Every method is one atomic step (one conditional write).

    The rules (which transitions exist, what they change) come from the domain: a store
    carries out a ``TransitionRule``, it does not decide one.
    """

    def add_packet(self, call_id: str, packet: Packet, *, now: str, received_at_ns: int) -> PacketWrite:
        """Store a packet atomically with its call (created by its first packet), only while IN_PROGRESS.

        CallTooLargeError if the call streams in batches and the data is over MAX_BATCHED_PACKET_BYTES.
        """
        ...

    def add_packets(self, call_id: str, packets: list[Packet], *, now: str, received_at_ns: int) -> list[PacketWrite]:
        """Store a batch of packets of distinct sequences, each as ``add_packet`` stores one; a result per packet.

        The packets arrive in list order: the i-th is received at ``received_at_ns + i``.
        Raises ValueError for a repeated sequence.
        """
        ...

    def count_duplicate(self, call_id: str, *, token: str, count: int = 1) -> None:
        """Count ``count`` duplicate packets; the same ``token`` again counts nothing. CallNotFoundError if no call."""
        ...

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
        """Carry out ``rule`` if the call is in its source state (and in ``expected_round``, if given).
        ``recording`` and ``packet_stats``, when given, are noted in the same write (as
        ``set_recording``): an attempt's outcome and what it learnt of the call, one request.

        ``token`` names this one request: the same token again (a write resent after its
        answer was lost) returns the call as moved, instead of a refusal.
        Raises CallNotFoundError, or InvalidTransitionError with the current state.
        """
        ...

    def start_attempt(self, call_id: str, round: int, *, now: str, token: str) -> Attempt | None:
        """Count one AI attempt, only while the call is PROCESSING_AI in ``round``.

        Returns the attempt (its number over all rounds, and the recording the call has
        noted), or None when the call is not PROCESSING_AI in that round: the work item is
        stale or a duplicate. The same ``token`` again counts nothing and returns the same
        number.
        """
        ...

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
        """Note an attempt's error, only while the call is still in ``round``; with the
        recording and packet statistics the attempt found, when given (as ``transition``)."""
        ...

    def packets(self, call_id: str, *, max_bytes: int | None = None) -> list[Packet]:
        """Every stored packet of the call, in sequence order. Raises CallTooLargeError past ``max_bytes``."""
        ...

    def note_packet_stats(self, call_id: str, stats: PacketStats) -> None:
        """Note the statistics of the call's packets, read once they can no longer change (the
        same again changes nothing; ``stats.duplicates`` is not kept: the call counts them).
        CallNotFoundError if no call."""
        ...

    def set_recording(self, call_id: str, recording: Recording, *, packet_stats: PacketStats | None = None) -> None:
        """Note the call's stored recording, and its packet statistics when given, in one write (as
        ``note_packet_stats``); the same again changes nothing. CallNotFoundError if no call."""
        ...

    def mark_enqueued(self, call_id: str, round: int, *, now: str) -> None:
        """Record that the work item of ``round`` was put on the queue at ``now``."""
        ...

    def claim_send(self, call_id: str, round: int, *, now: str, unclaimed_since: str) -> bool:
        """Claim the sending of ``round``'s unsent work item, while the call is PROCESSING_AI in it.

        False when another sweep claimed it after ``unclaimed_since``: only one sends.
        """
        ...

    def claim_stale_resend(self, call_id: str, round: int) -> bool:
        """Claim the one resend a round gets when its work item may have been lost. False if it had it."""
        ...

    def get_call(self, call_id: str) -> Call | None: ...

    def arrivals(self, call_id: str) -> list[Arrival]:
        """One per stored sequence, in arrival order."""
        ...

    def list_calls(
        self, state: CallState, *, limit: int, cursor: str | None, updated_before: str | None = None
    ) -> CallPage:
        """Calls in one state, most recently changed first, changed before ``updated_before`` if given.

        Raises ValueError for a bad cursor, or a limit below 1. A cursor may lead to an
        empty last page.
        """
        ...

    def count_calls(self, state: CallState, *, up_to: int) -> int:
        """How many calls are in ``state``, counting no further than ``up_to``: min(count, up_to).

        The bound keeps a count's cost fixed however many calls a state holds (ARCHIVED
        only grows). Raises ValueError for ``up_to`` below 1.
        """
        ...


class WorkQueue(Protocol):
    def send(self, item: WorkItem, *, delay_s: int = 0) -> None:
        """Put ``item`` on the queue, visible after ``delay_s`` (0 to 900 seconds)."""
        ...

    def change_visibility(self, receipt_handle: str, timeout_s: int) -> None:
        """When the queue may deliver a received message again: a failed attempt's backoff."""
        ...


class RecordingStore(Protocol):
    """Where each call's assembled audio is kept, one WAV file per call."""

    def recording_for(self, call_id: str, wav: bytes, *, duration_s: float) -> Recording:
        """The recording ``save`` makes of this WAV, without saving it."""
        ...

    def save(self, call_id: str, wav: bytes, *, duration_s: float) -> Recording:
        """Store the call's WAV. The packets of an ended call never change, so neither does its WAV:
        saving it again (a redelivered work item) writes the same object, never a second one."""
        ...

    def read(self, recording: Recording) -> bytes:
        """The WAV. RecordingExpiredError once the store no longer holds it."""
        ...

    def download_url(self, recording: Recording, *, expires_s: int) -> str:
        """A URL that fetches the WAV without credentials until it expires."""
        ...

    def download_origin(self) -> str:
        """The origin (scheme://host[:port]) of every download_url: what a page that plays
        recordings must allow (its Content-Security-Policy)."""
        ...


class CallArchive(Protocol):
    """Where an archived call's record lives (callcore.domain.archive), beside its recording."""

    def save(self, call_id: str, record: dict[str, Any]) -> None:
        """Store the record; saving again replaces it."""
        ...

    def find(self, call_id: str) -> dict[str, Any] | None:
        """The call's record, or None when none was saved."""
        ...


class AIProvider(Protocol):
    """Transcription and sentiment for one round of one call.

    Raises RetryableAIError (throttling, 5xx, timeouts) or PermanentAIError (undecodable,
    unsupported or empty audio), or TranscriptionPendingError while a job it started
    still runs: not a failure, the worker checks again later.
    """

    @property
    def reads_recording(self) -> bool:
        """Whether ``transcribe`` reads the call's stored recording (Transcribe's jobs do): the
        worker then saves it first; else it saves it while the provider transcribes."""
        ...

    async def transcribe(self, audio: CallAudio) -> str: ...

    async def score_sentiment(self, transcript: str) -> Sentiment: ...

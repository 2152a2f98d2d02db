"""The worker's audio path with fakes: the call's format, undecodable packets, the recording
stored once, and a transcription job that is still running (a delayed check, no receive spent)."""

from __future__ import annotations

import asyncio
import base64
import io
import threading
import wave
from typing import Any

import pytest

from ai_worker.handler import audio_limits
from callcore import services
from callcore.domain.audio import CallAudio, DecodedAudio, to_wav
from callcore.domain.errors import (
    AIError,
    DependencyUnavailableError,
    PermanentAIError,
    RetryableAIError,
    TranscriptionPendingError,
)
from callcore.domain.model import Call, CallState, Packet, PacketStats, Recording, TransitionRule, WorkItem
from callcore.services import ProcessOutcome
from callcore.settings import Settings
from tests.fakes import FakeAIProvider, FakeQueue, InMemoryCallArchive, InMemoryCallStore, InMemoryRecordingStore

SETTINGS = Settings()
SILENCE_20MS = base64.b64encode(b"\xff" * 160).decode()  # mu-law silence: 160 samples


def stream(store: InMemoryCallStore, call_id: str, *packets: Packet) -> None:
    for packet in packets:
        services.record_packet(store, call_id, packet)


def end(store: InMemoryCallStore, queue: FakeQueue, call_id: str) -> WorkItem:
    services.end_call(store, queue, call_id)
    return queue.sent[-1]


def frame(sequence: int, data: str = SILENCE_20MS, audio_format: str | None = None) -> Packet:
    return Packet(sequence=sequence, data=data, timestamp=sequence * 0.02, audio_format=audio_format)


def process(
    store: InMemoryCallStore,
    ai: FakeAIProvider,
    recordings: InMemoryRecordingStore,
    queue: FakeQueue,
    item: WorkItem,
) -> ProcessOutcome:
    return asyncio.run(services.process_call(store, ai, recordings, queue, item, limits=audio_limits(SETTINGS)))


@pytest.fixture
def recordings() -> InMemoryRecordingStore:
    return InMemoryRecordingStore()


def test_the_recording_is_stored_with_gaps_as_silence_and_shown_on_the_call(
    store: InMemoryCallStore, queue: FakeQueue, recordings: InMemoryRecordingStore
) -> None:
    stream(store, "c1", frame(0), frame(1), frame(3))  # sequence 2 is missing
    item = end(store, queue, "c1")

    assert process(store, FakeAIProvider(), recordings, queue, item) is ProcessOutcome.COMPLETED

    call = store.get_call("c1")
    assert call is not None and call.recording is not None
    wav = recordings.objects[call.recording.key]
    with wave.open(io.BytesIO(wav)) as reader:
        assert (reader.getframerate(), reader.getnframes()) == (8000, 4 * 160)
    assert call.recording.duration_s == pytest.approx(0.08)
    assert call.recording.bytes == len(wav)


def test_a_redelivered_work_item_does_not_store_the_recording_again(
    store: InMemoryCallStore, queue: FakeQueue, recordings: InMemoryRecordingStore
) -> None:
    stream(store, "c1", frame(0), frame(1))
    item = end(store, queue, "c1")
    ai = FakeAIProvider({"c1": [RetryableAIError("503", status=503)]})

    with pytest.raises(RetryableAIError):
        process(store, ai, recordings, queue, item)
    assert process(store, ai, recordings, queue, item) is ProcessOutcome.COMPLETED

    assert recordings.saves == 1
    assert ai.calls_for("c1") == 2


class CompletingFailsOnce(InMemoryCallStore):
    """DynamoDB refuses the attempt's last write, which notes the recording (throttled), after
    S3 stored it."""

    def __init__(self) -> None:
        super().__init__()
        self.failed = False

    def transition(self, call_id: str, rule: TransitionRule, **kwargs: Any) -> Call:
        if kwargs.get("recording") is not None and not self.failed:
            self.failed = True
            raise DependencyUnavailableError("DynamoDB", "throttled")
        return super().transition(call_id, rule, **kwargs)


def test_an_attempt_after_a_recording_saved_but_not_noted_saves_it_again_and_notes_it(
    queue: FakeQueue, recordings: InMemoryRecordingStore
) -> None:
    store = CompletingFailsOnce()
    stream(store, "c1", frame(0), frame(1))
    item = end(store, queue, "c1")
    ai = FakeAIProvider()

    with pytest.raises(DependencyUnavailableError):
        process(store, ai, recordings, queue, item)
    first = dict(recordings.objects)
    assert store.get_call("c1").recording is None  # type: ignore[union-attr]
    assert process(store, ai, recordings, queue, item) is ProcessOutcome.COMPLETED

    # The worker does not ask S3 whether it is there: the call item's note is the record of
    # it. The second save wrote the same object under the same key, and the call notes it.
    call = store.get_call("c1")
    assert call is not None and call.recording is not None
    assert recordings.saves == 2 and recordings.objects == first
    assert call.recording.key in first and call.recording.bytes == len(first[call.recording.key])
    assert ai.calls_for("c1") == 2


def _noted(recording: Recording | None, packet_stats: PacketStats | None) -> str | None:
    named = [name for name, value in (("recording", recording), ("stats", packet_stats)) if value is not None]
    return " and ".join(named) or None


class CountsNotes(InMemoryCallStore):
    """Records each write that notes the recording or the statistics, and which."""

    def __init__(self) -> None:
        super().__init__()
        self.notes: list[str] = []

    def _count(self, write: str, recording: Recording | None, packet_stats: PacketStats | None) -> None:
        if noted := _noted(recording, packet_stats):
            self.notes.append(f"{write}: {noted}")

    def note_packet_stats(self, call_id: str, stats: PacketStats) -> None:
        self._count("note", None, stats)
        super().note_packet_stats(call_id, stats)

    def set_recording(self, call_id: str, recording: Recording, *, packet_stats: PacketStats | None = None) -> None:
        self._count("note", recording, packet_stats)
        super().set_recording(call_id, recording, packet_stats=packet_stats)

    def record_attempt_error(self, call_id: str, round: int, attempt: int, error: str, **kwargs: Any) -> None:
        self._count("attempt error", kwargs.get("recording"), kwargs.get("packet_stats"))
        super().record_attempt_error(call_id, round, attempt, error, **kwargs)

    def transition(self, call_id: str, rule: TransitionRule, **kwargs: Any) -> Call:
        self._count(rule.target.value, kwargs.get("recording"), kwargs.get("packet_stats"))
        return super().transition(call_id, rule, **kwargs)


def test_an_attempt_notes_its_recording_and_statistics_in_the_write_that_completes_the_call(
    queue: FakeQueue, recordings: InMemoryRecordingStore
) -> None:
    store = CountsNotes()
    stream(store, "c1", frame(0), frame(1))
    item = end(store, queue, "c1")

    assert process(store, FakeAIProvider(), recordings, queue, item) is ProcessOutcome.COMPLETED

    assert store.notes == ["COMPLETED: recording and stats"]  # no write of their own
    call = store.get_call("c1")
    assert call is not None and call.recording is not None and call.packet_stats is not None
    assert call.packet_stats.received == 2


def test_the_first_attempt_notes_the_packet_statistics_once_and_get_shows_them_after_the_packets_expire(
    queue: FakeQueue, recordings: InMemoryRecordingStore
) -> None:
    store = CountsNotes()
    stream(store, "c1", frame(0), frame(3), frame(1), frame(1))  # 1 late, 2 missing, 1 twice
    item = end(store, queue, "c1")
    ai = FakeAIProvider({"c1": [RetryableAIError("503", status=503)]})
    expected = PacketStats(received=3, duplicates=1, out_of_order=1, highest_sequence=3, missing=[2], missing_count=1)
    before = services.get_call(store, InMemoryCallArchive(), "c1").packets
    assert before == expected  # from the packets' arrivals, as before the worker ran

    with pytest.raises(RetryableAIError):
        process(store, ai, recordings, queue, item)
    assert process(store, ai, recordings, queue, item) is ProcessOutcome.COMPLETED

    # Noted by the first attempt, in the write that notes its error; the second found both on
    # its call and noted nothing.
    assert store.notes == ["attempt error: recording and stats"]
    assert recordings.saves == 1
    store.expire_packets("c1")
    assert store.arrivals("c1") == []
    assert services.get_call(store, InMemoryCallArchive(), "c1").packets == expected


def test_a_call_whose_audio_cannot_be_decoded_keeps_its_packet_statistics_too(
    queue: FakeQueue, recordings: InMemoryRecordingStore
) -> None:
    store = CountsNotes()
    stream(store, "c1", frame(1), frame(0, "not audio"))
    item = end(store, queue, "c1")

    assert process(store, FakeAIProvider(), recordings, queue, item) is ProcessOutcome.FAILED

    assert store.notes == ["note: stats"]  # no recording to note them with

    store.expire_packets("c1")
    stats = services.get_call(store, InMemoryCallArchive(), "c1").packets
    assert (stats.received, stats.out_of_order, stats.highest_sequence) == (2, 1, 1)


def failed_once_for_the_ai(
    store: InMemoryCallStore, queue: FakeQueue, recordings: InMemoryRecordingStore, ai: FakeAIProvider
) -> None:
    """Call c1 (packets 0, 1 and 3) FAILED by the AI after its recording was stored."""
    stream(store, "c1", frame(0), frame(1, base64.b64encode(bytes(range(160))).decode()), frame(3))
    item = end(store, queue, "c1")
    assert process(store, ai, recordings, queue, item) is ProcessOutcome.FAILED


@pytest.mark.parametrize("expired", [None, [1]], ids=["all", "some"])
def test_a_retry_after_the_packets_expired_transcribes_the_recording(
    store: InMemoryCallStore, queue: FakeQueue, recordings: InMemoryRecordingStore, expired: list[int] | None
) -> None:
    ai = FakeAIProvider({"c1": [PermanentAIError("the AI service refused the audio")]})
    failed_once_for_the_ai(store, queue, recordings, ai)
    # PACKET_RETENTION_DAYS later, DynamoDB deleting them one by one, an operator retries it.
    store.expire_packets("c1", expired)

    services.retry_call(store, queue, "c1")

    assert process(store, ai, recordings, queue, queue.sent[-1]) is ProcessOutcome.COMPLETED
    first, retried = ai.audios
    assert retried.packets == [] and retried.recording == first.recording
    assert retried.audio is not None and first.audio is not None
    assert (retried.audio.pcm16, retried.audio.sample_rate) == (first.audio.pcm16, first.audio.sample_rate)
    assert recordings.saves == 1


def test_a_retry_after_the_packets_and_the_recording_expired_fails_saying_so(
    store: InMemoryCallStore, queue: FakeQueue, recordings: InMemoryRecordingStore
) -> None:
    ai = FakeAIProvider({"c1": [PermanentAIError("the AI service refused the audio")]})
    failed_once_for_the_ai(store, queue, recordings, ai)
    stats = store.get_call("c1").packet_stats  # type: ignore[union-attr]
    store.expire_packets("c1")
    recordings.objects.clear()  # RecordingRetentionDays later

    services.retry_call(store, queue, "c1")

    assert process(store, ai, recordings, queue, queue.sent[-1]) is ProcessOutcome.FAILED
    call = store.get_call("c1")
    assert call is not None and call.failure_reason is not None
    assert "packets have expired" in call.failure_reason and "RecordingRetentionDays" in call.failure_reason
    assert call.packet_stats == stats and len(ai.audios) == 1


def test_a_call_whose_packets_expired_before_any_attempt_fails_saying_so_and_notes_no_statistics(
    store: InMemoryCallStore, queue: FakeQueue, recordings: InMemoryRecordingStore
) -> None:
    stream(store, "c1", frame(0), frame(1))
    item = end(store, queue, "c1")
    store.expire_packets("c1")

    assert process(store, FakeAIProvider(), recordings, queue, item) is ProcessOutcome.FAILED

    call = store.get_call("c1")
    assert call is not None and call.failure_reason is not None
    assert "none of the call's packets are left" in call.failure_reason
    assert "no recording to transcribe" in call.failure_reason
    assert call.packet_stats is None  # not zeros: nothing was read


def test_a_call_noted_with_a_recording_but_no_statistics_uses_the_recording_once_its_packets_are_gone(
    store: InMemoryCallStore, queue: FakeQueue, recordings: InMemoryRecordingStore
) -> None:
    # A call whose recording was noted before the worker noted statistics (an older version).
    stream(store, "c1", frame(0), frame(1))
    item = end(store, queue, "c1")
    wav = to_wav(DecodedAudio(pcm16=b"\x01\x00" * 320, sample_rate=8000, duration_s=0.04))
    store.set_recording("c1", recordings.save("c1", wav, duration_s=0.04))
    store.expire_packets("c1")
    ai = FakeAIProvider()

    assert process(store, ai, recordings, queue, item) is ProcessOutcome.COMPLETED

    [given] = ai.audios
    assert given.audio is not None and given.audio.pcm16 == b"\x01\x00" * 320
    assert store.get_call("c1").packet_stats is None  # type: ignore[union-attr]


def test_a_call_failed_after_its_packets_expired_notes_no_zero_statistics(
    store: InMemoryCallStore, queue: FakeQueue
) -> None:
    stream(store, "c1", frame(0), frame(1))
    item = end(store, queue, "c1")
    store.expire_packets("c1")

    assert services.fail_exhausted(store, item)

    assert store.get_call("c1").packet_stats is None  # type: ignore[union-attr]


def test_a_call_too_large_to_read_keeps_its_packet_statistics(
    store: InMemoryCallStore, queue: FakeQueue, recordings: InMemoryRecordingStore
) -> None:
    stream(store, "c1", frame(0), frame(2), frame(1))
    item = end(store, queue, "c1")
    limits = services.AudioLimits(default_format=SETTINGS.audio_format, max_call_bytes=300, max_pcm_bytes=10_000)

    outcome = asyncio.run(services.process_call(store, FakeAIProvider(), recordings, queue, item, limits=limits))

    assert outcome is ProcessOutcome.FAILED
    store.expire_packets("c1")
    stats = services.get_call(store, InMemoryCallArchive(), "c1").packets
    assert (stats.received, stats.out_of_order, stats.highest_sequence) == (3, 1, 2)


def test_a_dead_lettered_call_no_attempt_read_keeps_its_packet_statistics(
    store: InMemoryCallStore, queue: FakeQueue
) -> None:
    stream(store, "c1", frame(0), frame(2), frame(1))
    item = end(store, queue, "c1")

    assert services.fail_exhausted(store, item)  # every attempt cut short before it read them

    store.expire_packets("c1")
    stats = services.get_call(store, InMemoryCallArchive(), "c1").packets
    assert (stats.received, stats.out_of_order, stats.highest_sequence) == (3, 1, 2)


def test_the_provider_gets_the_decoded_audio_and_the_recording(
    store: InMemoryCallStore, queue: FakeQueue, recordings: InMemoryRecordingStore
) -> None:
    stream(store, "c1", frame(1), frame(0))
    item = end(store, queue, "c1")
    ai = FakeAIProvider()

    process(store, ai, recordings, queue, item)

    [given] = ai.audios
    assert given.audio is not None and given.audio.sample_rate == 8000
    assert len(given.audio.pcm16) == 2 * 320
    assert given.recording == store.get_call("c1").recording  # type: ignore[union-attr]
    assert (given.round, given.attempt, given.check) == (1, 1, 0)


def test_undecodable_packets_fail_the_call_at_once_naming_them_without_asking_the_ai(
    store: InMemoryCallStore, queue: FakeQueue, recordings: InMemoryRecordingStore
) -> None:
    stream(store, "c1", frame(0), frame(1, "sample_audio_chunk"), frame(2), frame(3, "also not base64!"))
    item = end(store, queue, "c1")
    ai = FakeAIProvider()

    assert process(store, ai, recordings, queue, item) is ProcessOutcome.FAILED

    call = store.get_call("c1")
    assert call is not None and call.state is CallState.FAILED
    assert call.failure_reason is not None and "packets 1, 3 are not base64 mulaw audio" in call.failure_reason
    assert ai.calls == [] and recordings.saves == 0 and queue.sent == [item]


def test_a_call_is_decoded_in_the_format_its_packets_declare(
    store: InMemoryCallStore, queue: FakeQueue, recordings: InMemoryRecordingStore
) -> None:
    pcm = base64.b64encode(b"\x00\x10" * 320).decode()  # 20 ms of 16 kHz PCM16
    stream(store, "c1", frame(0, pcm, "pcm16/16000"), frame(1, pcm))
    item = end(store, queue, "c1")
    ai = FakeAIProvider()

    process(store, ai, recordings, queue, item)

    [given] = ai.audios
    assert given.audio is not None
    assert (given.audio.sample_rate, given.audio.pcm16) == (16000, b"\x00\x10" * 640)


def test_packets_declaring_different_formats_fail_the_call_naming_them(
    store: InMemoryCallStore, queue: FakeQueue, recordings: InMemoryRecordingStore
) -> None:
    pcm = base64.b64encode(b"\x00\x10" * 160).decode()
    stream(store, "c1", frame(0, pcm, "pcm16/8000"), frame(1, pcm, "pcm16/16000"), frame(2, pcm, "pcm16/8000"))
    item = end(store, queue, "c1")

    assert process(store, FakeAIProvider(), recordings, queue, item) is ProcessOutcome.FAILED

    call = store.get_call("c1")
    assert call is not None and call.failure_reason is not None
    assert "packet 1 is declared as other audio than the pcm16/8000 of packet 0" in call.failure_reason


class PendingThenDone(FakeAIProvider):
    """A job-based provider: pending on the attempt and on the first check, done on the second."""

    reads_recording = True

    async def transcribe(self, audio: CallAudio) -> str:
        self.audios.append(audio)
        if audio.check < 2:
            raise TranscriptionPendingError("job still IN_PROGRESS", check_after_s=30 + audio.check)
        return "the words"


def test_a_running_job_is_checked_by_delayed_messages_without_counting_attempts_or_receives(
    store: InMemoryCallStore, queue: FakeQueue, recordings: InMemoryRecordingStore
) -> None:
    stream(store, "c1", frame(0))
    item = end(store, queue, "c1")
    ai = PendingThenDone()

    assert process(store, ai, recordings, queue, item) is ProcessOutcome.PENDING
    first_check = queue.sent[-1]
    assert first_check == WorkItem(call_id="c1", round=1, check=1, attempt=1)
    assert queue.delays[-1] == 30
    assert process(store, ai, recordings, queue, first_check) is ProcessOutcome.PENDING
    second_check = queue.sent[-1]
    assert (second_check.check, queue.delays[-1]) == (2, 31)
    assert process(store, ai, recordings, queue, second_check) is ProcessOutcome.COMPLETED

    call = store.get_call("c1")
    assert call is not None and call.state is CallState.COMPLETED and call.transcript == "the words"
    # One attempt, however long the job ran; the checks saw no audio, only the recording.
    assert call.ai_attempts == 1
    assert [a.audio is None for a in ai.audios] == [False, True, True]
    assert recordings.saves == 1


def test_a_check_for_a_round_that_is_over_does_nothing(
    store: InMemoryCallStore, queue: FakeQueue, recordings: InMemoryRecordingStore
) -> None:
    stream(store, "c1", frame(0))
    item = end(store, queue, "c1")
    ai = PendingThenDone()
    process(store, ai, recordings, queue, item)
    check = queue.sent[-1]
    process(store, FakeAIProvider(), recordings, queue, item)  # a redelivery finished the round
    before = store.get_call("c1")

    assert process(store, ai, recordings, queue, check) is ProcessOutcome.SKIPPED
    assert store.get_call("c1") == before


def test_a_check_message_survives_the_queue_as_json() -> None:
    item = WorkItem(call_id="c1", round=2).next_check(attempt=3).next_check(attempt=3)

    assert WorkItem.from_json('{"call_id": "c1", "round": 2, "check": 2, "attempt": 3}') == item
    assert item.to_dict() == {"call_id": "c1", "round": 2, "check": 2, "attempt": 3}
    with pytest.raises(ValueError, match="check or attempt"):
        WorkItem.from_json('{"call_id": "c1", "round": 2, "check": 1}')


# --- the recording saved while the AI works ------------------------------------------------

OVERLAP_TIMEOUT_S = 10


class SaveWaitsForTheAI(InMemoryRecordingStore):
    """A save that returns only once the AI has begun: it can finish only if the worker runs
    the two at the same time (a worker that saved first would wait out the timeout)."""

    def __init__(self) -> None:
        super().__init__()
        self.ai_started = threading.Event()
        self.saw_the_ai = False

    def save(self, call_id: str, wav: bytes, *, duration_s: float) -> Recording:
        self.saw_the_ai = self.ai_started.wait(OVERLAP_TIMEOUT_S)
        return super().save(call_id, wav, duration_s=duration_s)


class SeesTheStore(FakeAIProvider):
    """Notes whether the recording was in ``recordings``, and noted on the call in ``calls``
    (when given), when asked; sets ``started``."""

    def __init__(
        self,
        recordings: InMemoryRecordingStore,
        *script: str | AIError,
        started: threading.Event | None = None,
        calls: InMemoryCallStore | None = None,
    ) -> None:
        super().__init__({"c1": list(script)})
        self._recordings = recordings
        self._calls = calls
        self._started = started or threading.Event()
        self.saved_when_asked: list[bool] = []
        self.noted_when_asked: list[bool] = []

    async def transcribe(self, audio: CallAudio) -> str:
        self.saved_when_asked.append(audio.recording.key in self._recordings.objects)
        if self._calls is not None:
            call = self._calls.get_call(audio.call_id)
            self.noted_when_asked.append(call is not None and call.recording == audio.recording)
        self._started.set()
        return await super().transcribe(audio)


@pytest.mark.parametrize("answer", ["the words", RetryableAIError("503", status=503)], ids=["done", "failed"])
def test_a_provider_that_does_not_read_the_recording_transcribes_while_it_is_saved(
    store: InMemoryCallStore, queue: FakeQueue, answer: str | AIError
) -> None:
    recordings = SaveWaitsForTheAI()
    ai = SeesTheStore(recordings, answer, started=recordings.ai_started)
    stream(store, "c1", frame(0), frame(1))
    item = end(store, queue, "c1")

    if isinstance(answer, AIError):
        with pytest.raises(RetryableAIError):
            process(store, ai, recordings, queue, item)
    else:
        assert process(store, ai, recordings, queue, item) is ProcessOutcome.COMPLETED

    assert recordings.saw_the_ai and ai.saved_when_asked == [False]
    # Saved before the attempt's last write, which notes it whatever the AI answered.
    call = store.get_call("c1")
    assert call is not None and call.recording is not None and call.recording.key in recordings.objects


class ReadsTheRecording(SeesTheStore):
    reads_recording = True


def test_a_provider_that_reads_the_recording_is_asked_only_once_it_is_saved_and_noted(
    store: InMemoryCallStore, queue: FakeQueue, recordings: InMemoryRecordingStore
) -> None:
    # A Transcribe job is paid for once started: its recording is on the call before it is.
    ai = ReadsTheRecording(recordings, calls=store)
    stream(store, "c1", frame(0))
    item = end(store, queue, "c1")

    assert process(store, ai, recordings, queue, item) is ProcessOutcome.COMPLETED

    assert ai.saved_when_asked == [True] and ai.noted_when_asked == [True]


class Died(Exception):
    """What ends an invocation with no answer: the Lambda's timeout, or its memory."""


def test_after_an_attempt_that_died_in_the_ai_the_next_notes_the_recording_before_asking(
    store: InMemoryCallStore, queue: FakeQueue, recordings: InMemoryRecordingStore
) -> None:
    ai = SeesTheStore(recordings, calls=store)
    ai.transcribe = _dies(ai.transcribe)  # type: ignore[method-assign]
    stream(store, "c1", frame(0), frame(1))
    item = end(store, queue, "c1")

    with pytest.raises(Died):
        process(store, ai, recordings, queue, item)
    assert store.get_call("c1").recording is None  # type: ignore[union-attr]  # its last write never came
    with pytest.raises(Died):
        process(store, ai, recordings, queue, item)

    # The second attempt noted the recording before asking: a call whose every attempt
    # dies shows it, and a retry once its packets have expired can transcribe it.
    call = store.get_call("c1")
    assert call is not None and call.recording is not None and call.recording.key in recordings.objects
    assert ai.noted_when_asked == [False, True]


def _dies(transcribe: Any) -> Any:
    async def dies(audio: CallAudio) -> str:
        await transcribe(audio)
        raise Died()

    return dies


class AnswersAfterTheSave(FakeAIProvider):
    """Answers (``script``) only once the save has failed, and notes that it finished: a
    worker that cancelled it would leave ``finished`` empty."""

    def __init__(self, save_failed: threading.Event, answer: str | AIError) -> None:
        super().__init__({"c1": [answer]})
        self._save_failed = save_failed
        self.finished: list[bool] = []

    async def transcribe(self, audio: CallAudio) -> str:
        await asyncio.to_thread(self._save_failed.wait, OVERLAP_TIMEOUT_S)
        try:
            transcript = await super().transcribe(audio)
        except AIError:
            self.finished.append(self._save_failed.is_set())
            raise
        self.finished.append(self._save_failed.is_set())
        return transcript


class SaveFailsAndSays(InMemoryRecordingStore):
    def __init__(self) -> None:
        super().__init__()
        self.failed = threading.Event()

    def save(self, call_id: str, wav: bytes, *, duration_s: float) -> Recording:
        self.failed.set()
        raise DependencyUnavailableError("S3", "SlowDown")


@pytest.mark.parametrize("answer", ["the words", RetryableAIError("503", status=503)], ids=["done", "failed"])
def test_a_failed_save_fails_the_attempt_for_a_retry_and_notes_no_recording_whatever_the_ai_answered(
    store: InMemoryCallStore, queue: FakeQueue, answer: str | AIError
) -> None:
    stream(store, "c1", frame(0))
    item = end(store, queue, "c1")
    failing = SaveFailsAndSays()
    ai = AnswersAfterTheSave(failing.failed, answer)

    with pytest.raises(DependencyUnavailableError):
        process(store, ai, failing, queue, item)
    # The AI was waited out, not cancelled (a transcription's thread cannot be stopped).
    assert ai.finished == [True]

    call = store.get_call("c1")
    assert call is not None and (call.state, call.recording) == (CallState.PROCESSING_AI, None)
    recordings = InMemoryRecordingStore()
    assert process(store, ai, recordings, queue, item) is ProcessOutcome.COMPLETED
    call = store.get_call("c1")
    assert call is not None and call.recording is not None and call.recording.key in recordings.objects

"""The mock AI provider (the packets' text behind UnreliableAI): failures, latency, seeding, transcripts, sentiment."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Coroutine
from typing import Any, TypeVar

import pytest

from callcore.adapters.ai import unreliable
from callcore.adapters.ai.mock import MockAIProvider, score_text, transcribe_packets
from callcore.domain.errors import AIError, PermanentAIError, RetryableAIError
from callcore.domain.model import Packet, Sentiment
from tests.fakes import call_audio


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def packet(sequence: int, data: str) -> Packet:
    return Packet(sequence=sequence, data=data, timestamp=float(sequence))


PACKETS = [packet(1, b64("hello, thanks for calling")), packet(2, b64("how can I help"))]


T = TypeVar("T")


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


async def outcomes(provider: MockAIProvider, n: int) -> list[str]:
    """``n`` transcriptions one after another: the transcript, or the error's class name."""
    seen: list[str] = []
    for i in range(n):
        try:
            seen.append(await provider.transcribe(call_audio(f"c{i}", PACKETS)))
        except AIError as exc:
            seen.append(type(exc).__name__)
    return seen


@pytest.fixture
def sleeps(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """Every delay the provider awaits, recorded instead of slept."""
    recorded: list[float] = []

    async def fake_sleep(delay: float) -> None:
        recorded.append(delay)

    monkeypatch.setattr(unreliable.asyncio, "sleep", fake_sleep)
    return recorded


# --- failures ---------------------------------------------------------------------------


def test_failure_rate_zero_never_fails() -> None:
    provider = MockAIProvider(failure_rate=0.0, min_latency_s=0, max_latency_s=0, seed=1)

    seen = run(outcomes(provider, 200))

    assert seen == [transcribe_packets(PACKETS)] * 200


def test_failure_rate_one_always_fails_with_a_retryable_http_503() -> None:
    provider = MockAIProvider(failure_rate=1.0, min_latency_s=0, max_latency_s=0, seed=1)

    async def errors() -> list[RetryableAIError]:
        found = []
        for i in range(100):
            with pytest.raises(RetryableAIError) as excinfo:
                await provider.transcribe(call_audio(f"c{i}", PACKETS))
            found.append(excinfo.value)
        return found

    found = run(errors())

    assert len(found) == 100
    assert all(e.status == 503 for e in found)
    assert all("503" in str(e) for e in found)


def test_same_seed_gives_the_same_sequence_of_outcomes() -> None:
    first = MockAIProvider(failure_rate=0.5, min_latency_s=0, max_latency_s=0, seed=42)
    second = MockAIProvider(failure_rate=0.5, min_latency_s=0, max_latency_s=0, seed=42)

    a, b = run(outcomes(first, 50)), run(outcomes(second, 50))

    assert a == b
    assert "RetryableAIError" in a
    assert transcribe_packets(PACKETS) in a


def test_different_seeds_give_different_sequences_of_outcomes() -> None:
    first = MockAIProvider(failure_rate=0.5, min_latency_s=0, max_latency_s=0, seed=42)
    second = MockAIProvider(failure_rate=0.5, min_latency_s=0, max_latency_s=0, seed=43)

    assert run(outcomes(first, 50)) != run(outcomes(second, 50))


def test_a_call_without_packets_is_a_permanent_error() -> None:
    provider = MockAIProvider(failure_rate=0.0, min_latency_s=0, max_latency_s=0, seed=1)

    with pytest.raises(PermanentAIError, match="no audio"):
        run(provider.transcribe(call_audio("c1", [])))


def test_permanent_and_retryable_errors_are_distinct_ai_errors() -> None:
    assert issubclass(RetryableAIError, AIError)
    assert issubclass(PermanentAIError, AIError)
    assert not issubclass(PermanentAIError, RetryableAIError)
    assert not issubclass(RetryableAIError, PermanentAIError)


# --- latency ----------------------------------------------------------------------------


def test_zero_latency_awaits_nothing(sleeps: list[float]) -> None:
    provider = MockAIProvider(failure_rate=0.0, min_latency_s=0, max_latency_s=0, seed=1)

    run(outcomes(provider, 20))

    assert sleeps == []


def test_latency_is_drawn_between_min_and_max_and_awaited_without_blocking(sleeps: list[float]) -> None:
    provider = MockAIProvider(failure_rate=0.0, min_latency_s=1.0, max_latency_s=3.0, seed=7)

    run(outcomes(provider, 100))

    assert len(sleeps) == 100
    assert all(1.0 <= s <= 3.0 for s in sleeps)
    assert len(set(sleeps)) > 50


# --- transcripts ------------------------------------------------------------------------


def test_transcript_follows_sequence_order_not_arrival_order() -> None:
    packets = [packet(3, b64("three")), packet(1, b64("one")), packet(2, b64("two"))]

    assert transcribe_packets(packets) == "one two three"


def test_transcript_decodes_base64_text() -> None:
    assert transcribe_packets([packet(1, b64("I want a refund"))]) == "I want a refund"


def test_transcript_keeps_opaque_text_that_is_not_base64() -> None:
    assert transcribe_packets([packet(1, "audio-1 chunk"), packet(2, "hello!")]) == "audio-1 chunk hello!"


def test_transcript_notes_binary_audio_by_its_size() -> None:
    binary = base64.b64encode(bytes([0, 255, 16, 128, 7, 9])).decode()

    assert transcribe_packets([packet(1, binary)]) == "[6 bytes of audio]"


def test_transcript_mixes_text_opaque_and_binary_packets_in_order() -> None:
    binary = base64.b64encode(b"\x00\x01\x02\x03").decode()
    packets = [packet(2, binary), packet(3, "opaque-text"), packet(1, b64("hi"))]

    assert transcribe_packets(packets) == "hi [4 bytes of audio] opaque-text"


def test_provider_transcript_is_derived_from_the_packets_and_differs_for_different_packets() -> None:
    provider = MockAIProvider(failure_rate=0.0, min_latency_s=0, max_latency_s=0, seed=1)

    one = run(provider.transcribe(call_audio("c1", [packet(1, b64("my order is late"))])))
    other = run(provider.transcribe(call_audio("c2", [packet(1, b64("thanks, all good"))])))

    assert one == "my order is late"
    assert other == "thanks, all good"


# --- sentiment --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Thanks, that was great and I am happy", Sentiment("POSITIVE", 1.0)),
        ("This is terrible, my phone is broken and I want a refund", Sentiment("NEGATIVE", -1.0)),
        ("I am calling about my account number", Sentiment("NEUTRAL", 0.0)),
        ("good service but the parcel was late", Sentiment("NEUTRAL", 0.0)),
        ("great, excellent, but one problem", Sentiment("POSITIVE", 0.33)),
        ("", Sentiment("NEUTRAL", 0.0)),
    ],
)
def test_sentiment_label_and_score(text: str, expected: Sentiment) -> None:
    assert score_text(text) == expected


def test_sentiment_scores_stay_between_minus_one_and_one() -> None:
    for text in ("good " * 50, "bad " * 50, "good bad " * 10):
        assert -1.0 <= score_text(text).score <= 1.0


def test_provider_scores_sentiment_of_its_transcript() -> None:
    provider = MockAIProvider(failure_rate=1.0, min_latency_s=0, max_latency_s=0, seed=1)

    # Scoring never fails: the simulated outage is on transcription.
    assert run(provider.score_sentiment("awful, the worst")) == Sentiment("NEGATIVE", -1.0)


def test_a_run_of_audio_packets_is_noted_once_by_its_size() -> None:
    audio = base64.b64encode(bytes([0xFF, 0x7F, 0x80])).decode()
    packets = [packet(s, audio) for s in (1, 2, 3)] + [packet(4, base64.b64encode(b"hello").decode()), packet(5, audio)]

    assert transcribe_packets(packets) == "[9 bytes of audio] hello [3 bytes of audio]"

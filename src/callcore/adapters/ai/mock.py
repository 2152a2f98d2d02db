"""The simulated external AI service of the original brief: slow, and often down.

It fails ``failure_rate`` of its calls with what a remote API's HTTP 503 looks like,
takes ``min_latency_s`` to ``max_latency_s`` per call without blocking the event loop,
and derives its transcript from the call's actual packets. Audio whose data starts
with ``corrupt:`` cannot be decoded: that error is permanent.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import random
import re
import threading

from callcore.domain.errors import PermanentAIError, RetryableAIError
from callcore.domain.model import Packet, Sentiment

CORRUPT_AUDIO_PREFIX = "corrupt:"

_POSITIVE = frozenset(
    ("good", "great", "thanks", "thank", "happy", "excellent", "love", "pleased", "wonderful", "resolved", "perfect")
)
_NEGATIVE = frozenset(
    ("bad", "angry", "terrible", "cancel", "refund", "hate", "problem", "broken", "awful", "complaint", "worst", "late")
)
_WORD = re.compile(r"[a-z']+")


def _chunk_text(packet: Packet) -> str:
    """Text a packet says: base64 that decodes to UTF-8 text, the text itself, or a note of its size."""
    try:
        raw = base64.b64decode(packet.data, validate=True)
    except (binascii.Error, ValueError):
        return packet.data
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return f"[{len(raw)} bytes of audio]"
    return text if text.isprintable() else f"[{len(raw)} bytes of audio]"


def transcribe_packets(packets: list[Packet]) -> str:
    return " ".join(_chunk_text(p) for p in sorted(packets, key=lambda p: p.sequence)).strip()


def score_text(text: str) -> Sentiment:
    words = _WORD.findall(text.lower())
    positive = sum(w in _POSITIVE for w in words)
    negative = sum(w in _NEGATIVE for w in words)
    total = positive + negative
    score = 0.0 if total == 0 else round((positive - negative) / total, 2)
    label = "POSITIVE" if score > 0.2 else "NEGATIVE" if score < -0.2 else "NEUTRAL"
    return Sentiment(label=label, score=score)


class MockAIProvider:
    def __init__(
        self, failure_rate: float, min_latency_s: float, max_latency_s: float, seed: int | None = None
    ) -> None:
        self._failure_rate = failure_rate
        self._latency = (min_latency_s, max_latency_s)
        self._rng = random.Random(seed)
        self._lock = threading.Lock()  # one provider serves concurrent batches

    def _draw(self) -> tuple[float, bool]:
        with self._lock:
            return self._rng.uniform(*self._latency), self._rng.random() < self._failure_rate

    async def transcribe(self, call_id: str, packets: list[Packet]) -> str:
        latency, fails = self._draw()
        await asyncio.sleep(latency)
        corrupt = [p.sequence for p in packets if p.data.startswith(CORRUPT_AUDIO_PREFIX)]
        if corrupt:
            raise PermanentAIError(f"audio of packet {corrupt[0]} cannot be decoded")
        if fails:
            raise RetryableAIError("mock AI service answered HTTP 503 Service Unavailable", status=503)
        if not packets:
            raise PermanentAIError("the call has no audio")
        return transcribe_packets(packets)

    async def score_sentiment(self, transcript: str) -> Sentiment:
        return score_text(transcript)

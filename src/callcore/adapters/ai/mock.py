"""The simulated external AI service of the original brief: slow, and often down.

It derives its transcript from the call's actual packets (base64 text reads as that
text), behind ``UnreliableAI``: it fails ``failure_rate`` of its calls with what a remote
API's HTTP 503 looks like, and takes ``min_latency_s`` to ``max_latency_s`` per call.
"""

from __future__ import annotations

import base64
import binascii
import re

from callcore.adapters.ai.unreliable import UnreliableAI
from callcore.domain.audio import CallAudio
from callcore.domain.errors import PermanentAIError
from callcore.domain.model import Packet, Sentiment

_POSITIVE = frozenset(
    ("good", "great", "thanks", "thank", "happy", "excellent", "love", "pleased", "wonderful", "resolved", "perfect")
)
_NEGATIVE = frozenset(
    ("bad", "angry", "terrible", "cancel", "refund", "hate", "problem", "broken", "awful", "complaint", "worst", "late")
)
_WORD = re.compile(r"[a-z']+")


def _chunk_text(packet: Packet) -> str | int:
    """Text a packet says (base64 that decodes to UTF-8 text, or the text itself), else its audio's size."""
    try:
        raw = base64.b64decode(packet.data, validate=True)
    except (binascii.Error, ValueError):
        return packet.data
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return len(raw)
    return text if text.isprintable() else len(raw)


def transcribe_packets(packets: list[Packet]) -> str:
    """The packets' text in sequence order; each run of audio packets noted once, by its size, so
    that a speech call's transcript is a line, not a note per 20 ms packet."""
    words: list[str] = []
    audio = 0
    for packet in sorted(packets, key=lambda p: p.sequence):
        chunk = _chunk_text(packet)
        if isinstance(chunk, int):
            audio += chunk
            continue
        if audio:
            words.append(f"[{audio} bytes of audio]")
            audio = 0
        words.append(chunk)
    if audio:
        words.append(f"[{audio} bytes of audio]")
    return " ".join(words).strip()


def score_text(text: str) -> Sentiment:
    words = _WORD.findall(text.lower())
    positive = sum(w in _POSITIVE for w in words)
    negative = sum(w in _NEGATIVE for w in words)
    total = positive + negative
    score = 0.0 if total == 0 else round((positive - negative) / total, 2)
    label = "POSITIVE" if score > 0.2 else "NEGATIVE" if score < -0.2 else "NEUTRAL"
    return Sentiment(label=label, score=score)


class PacketText:
    """The seed's simulated transcription: no speech recognition, the packets' own text."""

    reads_recording = False

    async def transcribe(self, audio: CallAudio) -> str:
        if not audio.packets:
            raise PermanentAIError("the call has no audio")
        return transcribe_packets(audio.packets)

    async def score_sentiment(self, transcript: str) -> Sentiment:
        return score_text(transcript)


class MockAIProvider(UnreliableAI):
    """AI_PROVIDER=mock: the packets' text, behind the seed's slow and often failing service."""

    def __init__(
        self, failure_rate: float, min_latency_s: float, max_latency_s: float, seed: int | None = None
    ) -> None:
        super().__init__(PacketText(), failure_rate, min_latency_s, max_latency_s, seed)

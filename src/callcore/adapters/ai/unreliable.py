"""The seed's unreliable AI service, as a wrapper around any provider.

``AI_FAILURE_RATE`` of the attempts fail with what a remote API's HTTP 503 looks like,
after ``AI_MIN_LATENCY_S`` to ``AI_MAX_LATENCY_S`` of waiting (without blocking the event
loop); the others go on to the real provider. So the retry path is exercised with real
speech too, and with a rate of 0 and no latency the wrapper is nothing.
"""

from __future__ import annotations

import asyncio
import random
import threading

from callcore.domain.audio import CallAudio
from callcore.domain.errors import RetryableAIError
from callcore.domain.model import Sentiment
from callcore.ports import AIProvider


class UnreliableAI:
    def __init__(
        self,
        inner: AIProvider,
        failure_rate: float,
        min_latency_s: float,
        max_latency_s: float,
        seed: int | None = None,
    ) -> None:
        self.inner = inner
        self._failure_rate = failure_rate
        self._latency = (min_latency_s, max_latency_s)
        self._rng = random.Random(seed)
        self._lock = threading.Lock()  # one provider serves concurrent batches

    @property
    def reads_recording(self) -> bool:
        return self.inner.reads_recording

    def _draw(self) -> tuple[float, bool]:
        with self._lock:
            return self._rng.uniform(*self._latency), self._rng.random() < self._failure_rate

    async def transcribe(self, audio: CallAudio) -> str:
        # One draw per attempt, before the real work: a failed call to a remote service
        # costs its latency, not a transcription.
        latency, fails = self._draw()
        if latency:
            await asyncio.sleep(latency)
        if fails:
            raise RetryableAIError("the AI service answered HTTP 503 Service Unavailable (simulated)", status=503)
        return await self.inner.transcribe(audio)

    async def score_sentiment(self, transcript: str) -> Sentiment:
        return await self.inner.score_sentiment(transcript)

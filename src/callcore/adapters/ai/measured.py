"""An AIProvider that counts and times the one it wraps: attempts and their outcomes, and latency."""

from __future__ import annotations

import time
from collections.abc import Awaitable
from typing import TypeVar

from callcore.domain.audio import CallAudio
from callcore.domain.errors import PermanentAIError, TranscriptionPendingError
from callcore.domain.model import Sentiment
from callcore.metrics import FunctionMetrics, Metric
from callcore.ports import AIProvider

_T = TypeVar("_T")


class MeasuredAI:
    """An attempt is a transcription then its sentiment: it counts once, when it succeeds or fails.

    ``AiLatency`` is each call to the provider (a transcription, or a sentiment), in ms. A
    transcription job still running (TranscriptionPendingError) is no outcome yet: the
    check that finds it done or failed counts it.
    """

    def __init__(self, inner: AIProvider, metrics: FunctionMetrics) -> None:
        self._inner = inner
        self._metrics = metrics

    @property
    def reads_recording(self) -> bool:
        return self._inner.reads_recording

    async def transcribe(self, audio: CallAudio) -> str:
        return await self._timed(self._inner.transcribe(audio), last_step=False)

    async def score_sentiment(self, transcript: str) -> Sentiment:
        return await self._timed(self._inner.score_sentiment(transcript), last_step=True)

    async def _timed(self, call: Awaitable[_T], *, last_step: bool) -> _T:
        started = time.perf_counter()
        try:
            result = await call
        except TranscriptionPendingError:
            raise
        except Exception as exc:
            self._metrics.milliseconds(Metric.AI_LATENCY, (time.perf_counter() - started) * 1000)
            permanent = isinstance(exc, PermanentAIError)
            self._metrics.count(Metric.AI_ATTEMPTS)
            self._metrics.count(Metric.AI_PERMANENT_FAILURES if permanent else Metric.AI_RETRYABLE_FAILURES)
            raise
        self._metrics.milliseconds(Metric.AI_LATENCY, (time.perf_counter() - started) * 1000)
        if last_step:
            self._metrics.count(Metric.AI_ATTEMPTS)
            self._metrics.count(Metric.AI_SUCCESSES)
        return result

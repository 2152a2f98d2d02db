"""The offline AI of AI_PROVIDER=local: pocketsphinx transcribes, VADER scores sentiment.

Both run in-process with the models their wheels ship (``pip install -r
requirements-asr.txt``): no network, no account. Neither is imported until first used,
so importing this module costs nothing at a cold start, and works where they are not
installed.

Everything here is synchronous and CPU-bound; the async AIProvider methods call it
through ``asyncio.to_thread``. Every error is a PermanentAIError: the same audio gives
the same failure on every attempt.
"""

from __future__ import annotations

import asyncio
import importlib
import sys
import threading
from array import array
from collections.abc import Iterator
from itertools import pairwise
from types import ModuleType
from typing import Any

from callcore.domain.audio import CallAudio
from callcore.domain.errors import PermanentAIError
from callcore.domain.model import Sentiment

DECODER_RATE = 16_000  # the en-us acoustic model of the pocketsphinx wheel is 16 kHz
SUPPORTED_RATES = (8_000, 16_000)
CHUNK_SECONDS = 1  # audio is converted and fed to the endpointer one second at a time
# An utterance is what the decoder searches as one: pocketsphinx's memory grows with
# its length (measured: +190 MB for one 343 s utterance, nothing for the same audio cut
# at its pauses). The endpointer cuts at pauses; audio with none is cut here.
MAX_UTTERANCE_SECONDS = 30
# The decoder's search keeps at most this many HMMs active per frame (pocketsphinx's
# default is 30,000). Measured with pocketsphinx 5.1.1 on 8 kHz mu-law speech: 19% less
# CPU per audio second, with the same transcript of every human reading in
# tests/fixtures/speech/human (a test holds it to no loss there); of the six synthetic
# fixtures four read the same and two changed (mean word error rate 0.935 -> 0.885).
# Narrower beams were faster still (-50%) but heard the human readings worse (0.44 -> 0.48).
MAX_HMMS_PER_FRAME = 4_000

# VADER's own thresholds for its compound score (vaderSentiment's README).
POSITIVE_THRESHOLD = 0.05
NEGATIVE_THRESHOLD = -0.05


def upsample_8k_to_16k(pcm16: bytes) -> bytes:
    """Linear interpolation by 2: every input sample, then the midpoint to the next one.

    The output has exactly twice the samples (the last one is repeated, having no next).
    16-bit little-endian signed PCM in and out.
    """
    samples = _samples(pcm16)
    return _to_bytes(_upsample(samples, None)) if samples else b""


def to_decoder_rate(pcm16: bytes, sample_rate: int) -> bytes:
    """The audio at 16 kHz: 8 kHz is upsampled, 16 kHz passes through, other rates are refused."""
    return b"".join(_chunks_16k(pcm16, sample_rate))


class LocalSpeech:
    """Transcription and sentiment, offline. One instance can serve many threads.

    pocketsphinx's Decoder holds the state of one utterance and is not thread-safe. The
    process keeps ONE (loading it takes ~0.25 s and ~90 MB) behind a lock, so one
    transcription uses it at a time: decoding is CPU-bound, and a Lambda function of
    512 MB has a third of a vCPU, so parallel decoders would not finish sooner, only
    use more memory. VADER's analyzer only reads its lexicon: it is shared without a lock.
    """

    _decoder: Any = None
    _analyzer: Any = None
    _decoder_lock = threading.Lock()
    _analyzer_lock = threading.Lock()

    def transcribe_pcm16(self, pcm16: bytes, sample_rate: int) -> str:
        """The words heard in 16-bit little-endian mono PCM; "" when nobody speaks."""
        if not pcm16:
            raise PermanentAIError("no audio to transcribe")
        chunks = _chunks_16k(pcm16, sample_rate)  # validates before the decoder is touched
        with LocalSpeech._decoder_lock:
            decoder = self._get_decoder()
            try:
                words = _decode(decoder, chunks)
            except PermanentAIError:
                raise
            except Exception as exc:
                # The decoder may be left inside an utterance: the next call builds a new one.
                LocalSpeech._decoder = None
                raise PermanentAIError(f"pocketsphinx could not decode the audio: {exc}") from exc
        return " ".join(words)

    def score(self, text: str) -> Sentiment:
        """VADER's compound score (-1 to 1), labelled with VADER's thresholds."""
        compound = float(self._get_analyzer().polarity_scores(text)["compound"])
        if compound >= POSITIVE_THRESHOLD:
            label = "POSITIVE"
        elif compound <= NEGATIVE_THRESHOLD:
            label = "NEGATIVE"
        else:
            label = "NEUTRAL"
        return Sentiment(label=label, score=compound)

    @staticmethod
    def _get_decoder() -> Any:
        """The process's decoder, created on first use. Call with _decoder_lock held."""
        if LocalSpeech._decoder is None:
            pocketsphinx = _import("pocketsphinx")
            try:
                # The wheel's defaults: en-us acoustic model, language model and dictionary, 16 kHz.
                LocalSpeech._decoder = pocketsphinx.Decoder(loglevel="FATAL", maxhmmpf=MAX_HMMS_PER_FRAME)
            except Exception as exc:
                raise PermanentAIError(f"pocketsphinx could not load its en-us model: {exc}") from exc
        return LocalSpeech._decoder

    @staticmethod
    def _get_analyzer() -> Any:
        if LocalSpeech._analyzer is None:
            with LocalSpeech._analyzer_lock:
                if LocalSpeech._analyzer is None:
                    vader = _import("vaderSentiment.vaderSentiment")
                    LocalSpeech._analyzer = vader.SentimentIntensityAnalyzer()
        return LocalSpeech._analyzer


class LocalAIProvider:
    """AI_PROVIDER=local: the worker transcribes the call's decoded audio itself, offline.

    Calls longer than ``max_audio_s`` are refused (permanently: the same call is as long
    on every attempt): transcription takes about ``ASR_RTF_BOUND`` seconds per audio
    second on a Lambda vCPU, and must end inside the worker's timeout. Longer calls
    need AI_PROVIDER=aws, whose jobs run outside the Lambda.
    """

    reads_recording = False  # it transcribes the decoded audio it is given

    def __init__(self, max_audio_s: float, speech: LocalSpeech | None = None) -> None:
        self._max_audio_s = max_audio_s
        self._speech = speech or LocalSpeech()

    async def transcribe(self, audio: CallAudio) -> str:
        decoded = audio.audio
        if decoded is None:
            # Only a job-based provider resumes a check; this one never asks for one.
            raise PermanentAIError("the local provider was given no decoded audio to transcribe")
        if decoded.duration_s > self._max_audio_s:
            raise PermanentAIError(
                f"the call's {decoded.duration_s / 60:.1f} minutes of audio are over the local provider's "
                f"{self._max_audio_s / 60:.1f}-minute limit (the worker's timeout); use AI_PROVIDER=aws"
            )
        return await asyncio.to_thread(self._speech.transcribe_pcm16, decoded.pcm16, decoded.sample_rate)

    async def score_sentiment(self, transcript: str) -> Sentiment:
        # VADER takes microseconds per sentence: no thread needed.
        return self._speech.score(transcript)


def _decode(decoder: Any, chunks: Iterator[bytes]) -> list[str]:
    """Decode 16 kHz audio as utterances cut at its pauses; the words of each, in order."""
    # A fresh feature front end for every call: its noise and cepstral-mean estimates
    # adapt across utterances, which would make a transcript depend on whichever audio
    # this process decoded before. It costs microseconds.
    decoder.reinit_feat()
    endpointer = _import("pocketsphinx").Endpointer(sample_rate=DECODER_RATE)
    frame_bytes: int = endpointer.frame_bytes
    max_utterance_bytes = MAX_UTTERANCE_SECONDS * DECODER_RATE * 2
    words: list[str] = []
    in_utterance = False
    utterance_bytes = 0

    def feed(speech: bytes | None, *, last: bool) -> None:
        nonlocal in_utterance, utterance_bytes
        if speech:
            if not in_utterance:
                decoder.start_utt()
                in_utterance, utterance_bytes = True, 0
            decoder.process_raw(speech, no_search=False, full_utt=False)
            utterance_bytes += len(speech)
        if in_utterance and (last or not endpointer.in_speech or utterance_bytes >= max_utterance_bytes):
            decoder.end_utt()
            in_utterance = False
            hyp = decoder.hyp()
            if hyp is not None:
                words.extend(str(hyp.hypstr).split())

    # The last frame (1 to frame_bytes bytes: the input is not empty) is held back for
    # end_stream, which refuses an empty frame.
    pending = b""
    for chunk in chunks:
        pending += chunk
        ready = (len(pending) - 1) // frame_bytes * frame_bytes
        for start in range(0, ready, frame_bytes):
            feed(endpointer.process(pending[start : start + frame_bytes]), last=False)
        pending = pending[ready:]
    if endpointer.in_speech:  # the speech the endpointer still holds, with the last frame
        feed(endpointer.end_stream(pending), last=True)
    elif len(pending) == frame_bytes:
        feed(endpointer.process(pending), last=True)
    return words


def _import(name: str) -> ModuleType:
    """Import an optional dependency when first needed (neither ships type information)."""
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        raise PermanentAIError(
            f"the local AI provider needs {name.partition('.')[0]} (pip install -r requirements-asr.txt): {exc}"
        ) from exc


def _chunks_16k(pcm16: bytes, sample_rate: int) -> Iterator[bytes]:
    """The audio at 16 kHz, one CHUNK_SECONDS at a time. Raises PermanentAIError at once on bad input."""
    if len(pcm16) % 2:
        raise PermanentAIError(f"{len(pcm16)} bytes of audio is not 16-bit PCM (odd length)")
    if sample_rate not in SUPPORTED_RATES:
        raise PermanentAIError(
            f"unsupported sample rate {sample_rate} Hz: the local provider takes 8000 or 16000 (mono, 16-bit PCM)"
        )
    return _iter_chunks_16k(pcm16, sample_rate)


def _iter_chunks_16k(pcm16: bytes, sample_rate: int) -> Iterator[bytes]:
    step = sample_rate * CHUNK_SECONDS * 2
    if sample_rate == DECODER_RATE:
        for start in range(0, len(pcm16), step):
            yield pcm16[start : start + step]
        return
    for start in range(0, len(pcm16), step):
        end = start + step
        after = _samples(pcm16[end : end + 2])  # the next chunk's first sample, for the last midpoint
        yield _to_bytes(_upsample(_samples(pcm16[start:end]), after[0] if after else None))


def _upsample(samples: array[int], following: int | None) -> array[int]:
    """Twice the samples: each one, then the midpoint to the next (``following`` after the last)."""
    out = array("h", bytes(4 * len(samples)))
    out[0::2] = samples
    mids = array("h", ((a + b) // 2 for a, b in pairwise(samples)))
    mids.append(samples[-1] if following is None else (samples[-1] + following) // 2)
    out[1::2] = mids
    return out


def _samples(pcm16: bytes) -> array[int]:
    samples = array("h", pcm16)
    if sys.byteorder == "big":
        samples.byteswap()
    return samples


def _to_bytes(samples: array[int]) -> bytes:
    if sys.byteorder == "big":
        samples.byteswap()
    return samples.tobytes()

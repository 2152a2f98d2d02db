"""Real speech for the simulator (`python -m pbxsim --speech`), and how well it came back.

A speech call streams audio as a PBX does by default: G.711 mu-law, 8 kHz mono, one
20 ms frame (160 bytes, base64) per packet. The audio is either the committed fixtures
(tests/fixtures/speech: 8 kHz 16-bit mono WAV, each with the text it speaks and the
sentiment label of that text), or any text spoken by the ``espeak-ng`` binary, with the
voice and rate the fixtures were made with.

Standard library only, plus the service's own G.711 codec (``callcore.domain.audio``,
itself standard library only). ``audioop`` is not used (removed in Python 3.13): the
resampler is a windowed-sinc polyphase filter.

After the run, each transcript is compared with the text spoken: the word error rate
(word-level Levenshtein distance over the reference's word count, after lowercasing
and stripping punctuation) and, where the text has an expected sentiment label, whether
the stack's label agrees.
"""

from __future__ import annotations

import base64
import json
import math
import operator
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import wave
from array import array
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from callcore.domain.audio import pcm16_to_mulaw

SAMPLE_RATE = 8000  # G.711 is 8 kHz
FRAME_S = 0.02
FRAME_BYTES = int(SAMPLE_RATE * FRAME_S)  # 160 mu-law bytes, one per sample
MULAW_SILENCE = 0xFF  # the code of a zero sample: pads the last frame
FIXTURES_DIR = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "speech"
HUMAN_FIXTURES_DIR = FIXTURES_DIR / "human"  # a human reader (LibriVox), same layout
# What tests/fixtures/speech/README.md made the fixtures with: `espeak-ng -v en-us+klatt -s 140`.
ESPEAK = "espeak-ng"
DEFAULT_VOICE = "en-us+klatt"
DEFAULT_WPM = 140


class SpeechError(Exception):
    """Speech cannot be produced: a missing binary, a bad WAV, an empty text. The message says which."""


# ---------------------------------------------------------------- G.711 mu-law


def mulaw_frames(mulaw: bytes, frame_bytes: int = FRAME_BYTES) -> list[bytes]:
    """The audio cut into packets of ``frame_bytes`` (20 ms); the last is padded with silence."""
    frames = [mulaw[i : i + frame_bytes] for i in range(0, len(mulaw), frame_bytes)]
    if frames and len(frames[-1]) < frame_bytes:
        frames[-1] = frames[-1].ljust(frame_bytes, bytes([MULAW_SILENCE]))
    return frames


# ---------------------------------------------------------------- PCM


def _samples(pcm16: bytes) -> array[int]:
    samples = array("h", pcm16)
    if sys.byteorder == "big":  # pragma: no cover
        samples.byteswap()
    return samples


def _to_bytes(samples: array[int]) -> bytes:
    if sys.byteorder == "big":  # pragma: no cover
        samples = array("h", samples)
        samples.byteswap()
    return samples.tobytes()


_ZERO_CROSSINGS = 8  # of the sinc, each side: the filter's length
_ROLLOFF = 0.9  # the cutoff, as a share of the lower Nyquist frequency


def resample_pcm16(pcm16: bytes, from_rate: int, to_rate: int) -> bytes:
    """16-bit little-endian mono PCM from one sample rate to another (16 kHz or espeak's 22,050 Hz to 8 kHz).

    A windowed-sinc (Blackman) polyphase filter: output sample n is the input around
    position n * from_rate / to_rate, low-passed below the lower of the two Nyquist
    frequencies, so nothing above 4 kHz folds back into the telephone band.
    """
    if from_rate <= 0 or to_rate <= 0:
        raise ValueError(f"sample rates must be positive, not {from_rate} and {to_rate}")
    if from_rate == to_rate or not pcm16:
        return pcm16
    g = math.gcd(from_rate, to_rate)
    up, down = to_rate // g, from_rate // g  # output n sits at input position n * down / up
    cutoff = 0.5 * min(1.0, to_rate / from_rate) * _ROLLOFF  # cycles per input sample
    half = math.ceil(_ZERO_CROSSINGS / (2 * cutoff))
    phases = [_taps(p / up, half, cutoff) for p in range(up)]
    x = _samples(pcm16)
    padded = array("h", bytes(2 * half)) + x + array("h", bytes(2 * half))
    count = (len(x) * up + down - 1) // down
    out = array("h", bytes(2 * count))
    mul = operator.mul
    for n in range(count):
        base, phase = divmod(n * down, up)
        # Input samples base-half+1 .. base+half sit at padded[base+1 : base+2*half+1].
        value = round(sum(map(mul, padded[base + 1 : base + 2 * half + 1], phases[phase])))
        out[n] = -32768 if value < -32768 else min(value, 32767)
    return _to_bytes(out)


def _taps(fraction: float, half: int, cutoff: float) -> list[float]:
    """Filter weights for input offsets -half+1..half around a point ``fraction`` past a sample, summing to 1."""
    weights = []
    for k in range(-half + 1, half + 1):
        d = k - fraction
        x = 2 * cutoff * d
        sinc = 1.0 if x == 0 else math.sin(math.pi * x) / (math.pi * x)
        w = d / (half + 1)  # within (-1, 1)
        blackman = 0.42 + 0.5 * math.cos(math.pi * w) + 0.08 * math.cos(2 * math.pi * w)
        weights.append(sinc * blackman)
    total = sum(weights)
    return [w / total for w in weights]


def read_wav(path: Path) -> tuple[bytes, int]:
    """A 16-bit PCM WAV as mono 16-bit little-endian PCM (channels averaged) and its sample rate."""
    try:
        with wave.open(str(path)) as w:
            width, channels, rate = w.getsampwidth(), w.getnchannels(), w.getframerate()
            frames = w.readframes(w.getnframes())
    except (OSError, EOFError, wave.Error) as exc:
        raise SpeechError(f"cannot read {path}: {exc}") from exc
    if width != 2:
        raise SpeechError(f"{path} is {8 * width}-bit audio; 16-bit PCM is needed")
    if channels == 1:
        return frames, rate
    samples = _samples(frames)
    mono = array("h", (sum(samples[i : i + channels]) // channels for i in range(0, len(samples), channels)))
    return _to_bytes(mono), rate


# ---------------------------------------------------------------- speeches


@dataclass(frozen=True)
class Speech:
    """One utterance, ready to stream: its text, its 8 kHz audio, and its packets' data."""

    name: str  # a fixture's file, or "text 1", "text 2"...
    text: str  # what is said: the reference of the word error rate
    expected_sentiment: str | None  # the label of the text, when known
    pcm16: bytes  # 8 kHz mono 16-bit little-endian PCM
    frames: tuple[str, ...]  # base64 of each 20 ms mu-law frame, one per packet

    @property
    def duration_s(self) -> float:
        return len(self.pcm16) / 2 / SAMPLE_RATE

    @classmethod
    def from_pcm16(
        cls, name: str, text: str, pcm16: bytes, sample_rate: int, expected_sentiment: str | None = None
    ) -> Speech:
        telephone = resample_pcm16(pcm16, sample_rate, SAMPLE_RATE)
        frames = tuple(base64.b64encode(f).decode("ascii") for f in mulaw_frames(pcm16_to_mulaw(telephone)))
        return cls(name, text, expected_sentiment, telephone, frames)


def fixture_rows(directory: Path = FIXTURES_DIR) -> list[dict[str, Any]]:
    """The rows of fixtures.json: file, text, sentiment, ..."""
    try:
        rows: list[dict[str, Any]] = json.loads((directory / "fixtures.json").read_text())["fixtures"]
    except (OSError, ValueError, KeyError) as exc:
        raise SpeechError(f"cannot read the speech fixtures in {directory}: {exc}") from exc
    return rows


def load_fixtures(directory: Path = FIXTURES_DIR) -> list[Speech]:
    """The committed fixtures, in fixtures.json's order, each with its text and expected label."""
    speeches = []
    for row in fixture_rows(directory):
        pcm16, rate = read_wav(directory / row["file"])
        speeches.append(Speech.from_pcm16(row["file"], row["text"], pcm16, rate, row.get("sentiment")))
    return speeches


def synthesize(
    text: str, name: str, voice: str = DEFAULT_VOICE, wpm: int = DEFAULT_WPM, binary: str = ESPEAK
) -> Speech:
    """``text`` spoken by espeak-ng (which speaks at 22,050 Hz), brought to 8 kHz.

    The expected sentiment is the local provider's label of the text (VADER, as
    fixtures.json was made), when vaderSentiment is installed; None otherwise.
    """
    if not text.strip():
        raise SpeechError("a text to speak is empty")
    exe = shutil.which(binary)
    if exe is None:
        raise SpeechError(
            f"--text needs the {binary} binary, which is not on PATH "
            "(Debian/Ubuntu: apt-get install espeak-ng; macOS: brew install espeak-ng); "
            "or run --speech without --text to stream the committed fixtures"
        )
    with tempfile.TemporaryDirectory(prefix="pbxsim-") as tmp:
        wav = Path(tmp) / "speech.wav"
        # The text on stdin: a text starting with "-" is not read as an option.
        done = subprocess.run(  # noqa: S603 - a fixed binary, found on PATH; the text is on stdin
            [exe, "-v", voice, "-s", str(wpm), "-w", str(wav), "--stdin"],
            input=text.encode(),
            capture_output=True,
            check=False,
        )
        if done.returncode != 0 or not wav.exists():
            raise SpeechError(f"{binary} failed ({done.returncode}): {done.stderr.decode(errors='replace').strip()}")
        pcm16, rate = read_wav(wav)
    return Speech.from_pcm16(name, text, pcm16, rate, reference_sentiment(text))


def reference_sentiment(text: str) -> str | None:
    """The local provider's label of a text (as fixtures.json's were made), or None without VADER."""
    try:
        from callcore.adapters.ai.local import LocalSpeech
        from callcore.domain.errors import PermanentAIError
    except ImportError:
        return None
    try:
        return LocalSpeech().score(text).label
    except PermanentAIError:
        return None


def concatenate(speeches: Sequence[Speech], name: str) -> Speech:
    """One speech saying each of ``speeches`` in turn (their texts joined, no expected label)."""
    if not speeches:
        raise ValueError("nothing to concatenate")
    pcm16 = b"".join(s.pcm16 for s in speeches)
    return Speech.from_pcm16(name, " ".join(s.text for s in speeches), pcm16, SAMPLE_RATE)


def at_least(speeches: Sequence[Speech], seconds: float, name: str) -> Speech:
    """``speeches`` cycled in order until the audio lasts ``seconds`` or more, as one speech."""
    if not speeches:
        raise ValueError("no speech to repeat")
    chosen: list[Speech] = []
    total = 0.0
    while total < seconds:
        chosen.append(speeches[len(chosen) % len(speeches)])
        total += chosen[-1].duration_s
    return concatenate(chosen, name)


@dataclass(frozen=True)
class SpeechRequest:
    """What the command line asked for; ``load`` produces the audio."""

    texts: tuple[str, ...] = ()  # empty: the committed fixtures
    voice: str = DEFAULT_VOICE

    def load(self) -> list[Speech]:
        if not self.texts:
            return load_fixtures()
        return [synthesize(t, f"text {i + 1}", self.voice) for i, t in enumerate(self.texts)]


# ---------------------------------------------------------------- word error rate


_APOSTROPHES = re.compile(r"['\u2019]")
_SEPARATORS = re.compile(r"[\W_]+")


def normalise_words(text: str) -> list[str]:
    """Lowercased words without punctuation: apostrophes vanish ("o'clock" is "oclock"), other punctuation separates."""
    return [w for w in _SEPARATORS.split(_APOSTROPHES.sub("", text.lower())) if w]


def edit_distance(reference: Sequence[str], hypothesis: Sequence[str]) -> int:
    """Levenshtein distance between word lists: the fewest substitutions, deletions and insertions."""
    previous = list(range(len(hypothesis) + 1))  # from an empty reference: insert every word
    for i, ref_word in enumerate(reference, start=1):
        current = [i]  # to an empty hypothesis: delete every word
        for j, hyp_word in enumerate(hypothesis, start=1):
            current.append(
                min(
                    previous[j] + 1,  # deletion
                    current[j - 1] + 1,  # insertion
                    previous[j - 1] + (ref_word != hyp_word),  # substitution, or a match
                )
            )
        previous = current
    return previous[-1]


def word_error_rate(reference: str, hypothesis: str) -> float:
    """(substitutions + deletions + insertions) / reference words, after normalise_words.

    0.0 for a perfect transcript, 1.0 for an empty one; above 1 when words are inserted.
    Raises ValueError for a reference without words (the rate is undefined).
    """
    ref = normalise_words(reference)
    if not ref:
        raise ValueError("the reference has no words: the word error rate is undefined")
    return edit_distance(ref, normalise_words(hypothesis)) / len(ref)


# ---------------------------------------------------------------- the report


@dataclass(frozen=True)
class Heard:
    """What the stack made of one speech call (from its final GET)."""

    call_id: str
    speech: Speech
    state: str | None
    transcript: str | None
    sentiment: str | None  # ai.sentiment.label


def summarise(heard: Iterable[Heard]) -> dict[str, Any]:
    """Per-call word error rate and sentiment agreement, the mean WER, and the pooled WER.

    A call without a transcript (not COMPLETED) has no WER and counts in neither mean.
    ``mean_wer`` averages the per-call rates; ``pooled_wer`` is total edits over total
    reference words (longer calls weigh more). ``sentiment_agreement`` is the share of
    calls with a transcript, and an expected label, whose label is the expected one.
    """
    by_call: list[dict[str, Any]] = []
    rates: list[float] = []
    edits = words = 0
    compared = agreed = 0
    for h in heard:
        ref = normalise_words(h.speech.text)
        wer: float | None = None
        agrees: bool | None = None
        if h.transcript is not None and ref:
            distance = edit_distance(ref, normalise_words(h.transcript))
            wer = distance / len(ref)
            rates.append(wer)
            edits, words = edits + distance, words + len(ref)
            if h.speech.expected_sentiment is not None:
                agrees = h.sentiment == h.speech.expected_sentiment
                compared += 1
                agreed += agrees
        by_call.append(
            {
                "call_id": h.call_id,
                "source": h.speech.name,
                "audio_s": round(h.speech.duration_s, 3),
                "state": h.state,
                "wer": wer,
                "reference": h.speech.text,
                "transcript": h.transcript,
                "expected_sentiment": h.speech.expected_sentiment,
                "sentiment": h.sentiment,
                "sentiment_agrees": agrees,
            }
        )
    return {
        "calls": len(by_call),
        "calls_with_transcript": len(rates),
        "mean_wer": statistics.fmean(rates) if rates else None,
        "pooled_wer": edits / words if words else None,
        "sentiment_compared": compared,
        "sentiment_agreement": agreed / compared if compared else None,
        "by_call": by_call,
    }

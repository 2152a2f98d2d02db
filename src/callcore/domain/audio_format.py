"""The audio formats packets may be in, by name: what configuration and the ingest API need,
without the decoders (``callcore.domain.audio``), which only the worker runs."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class AudioEncoding(StrEnum):
    MULAW = "mulaw"  # G.711 mu-law, one byte per sample
    PCM16 = "pcm16"  # signed 16-bit little-endian linear PCM, two bytes per sample


# The sample rates each encoding is accepted at. G.711 is defined at 8 kHz only; linear
# PCM comes from narrowband (8 kHz) or wideband (16 kHz) trunks.
SUPPORTED_RATES: dict[AudioEncoding, tuple[int, ...]] = {
    AudioEncoding.MULAW: (8000,),
    AudioEncoding.PCM16: (8000, 16000),
}


@dataclass(frozen=True)
class AudioFormat:
    """How a call's packets are encoded. Only mono: a PBX streams one leg per call."""

    encoding: AudioEncoding
    sample_rate: int

    def __post_init__(self) -> None:
        encoding = _encoding(self.encoding)
        object.__setattr__(self, "encoding", encoding)
        rates = SUPPORTED_RATES[encoding]
        # bool is an int subclass; True is not a sample rate.
        if isinstance(self.sample_rate, bool) or not isinstance(self.sample_rate, int) or self.sample_rate not in rates:
            allowed = " or ".join(f"{r} Hz" for r in rates)
            raise ValueError(f"{encoding.value} audio must be {allowed} mono, not {self.sample_rate!r} Hz")

    @classmethod
    def parse(cls, encoding: str, sample_rate: int) -> AudioFormat:
        """The format named in configuration; case and surrounding spaces in the encoding do not matter.

        Raises ValueError naming what is wrong, so a misconfiguration fails at start-up.
        """
        return cls(_encoding(encoding.strip().lower()), sample_rate)

    @classmethod
    def from_str(cls, text: str) -> AudioFormat:
        """The format as ``str()`` writes it ("mulaw/8000"), as packets carry it. Raises ValueError."""
        encoding, _, rate = text.partition("/")
        if not rate.isdigit():
            raise ValueError(f"audio format {text!r} is not <encoding>/<sample rate>, such as mulaw/8000")
        return cls.parse(encoding, int(rate))

    def __str__(self) -> str:
        return f"{self.encoding.value}/{self.sample_rate}"


def _encoding(name: str) -> AudioEncoding:
    try:
        return AudioEncoding(name)
    except ValueError:
        valid = ", ".join(e.value for e in AudioEncoding)
        raise ValueError(f"unknown audio encoding {name!r}; expected one of: {valid}") from None


DEFAULT_FORMAT = AudioFormat(AudioEncoding.MULAW, 8000)

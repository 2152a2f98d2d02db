"""A call's packets as audio: decoded, put in sequence order, gaps filled, written as WAV.

A packet's ``data`` is base64 audio in one of the formats a PBX streams:

- G.711 mu-law, 8 kHz mono: what PBXs and Twilio Media Streams send (160 bytes per
  20 ms packet), hence the default;
- 16-bit little-endian linear PCM, 8 or 16 kHz mono.

Everything here is pure and deterministic (standard library only, no I/O), so the same
packets always give the same bytes: a redelivered work item produces an identical WAV.
``audioop`` is not used: it is deprecated and removed in Python 3.13, and G.711 mu-law
decoding is a 256-entry table.
"""

from __future__ import annotations

import base64
import binascii
import functools
import io
import sys
from array import array
from collections.abc import Iterable
from dataclasses import dataclass, field

from callcore.domain.audio_format import DEFAULT_FORMAT, SUPPORTED_RATES, AudioEncoding, AudioFormat
from callcore.domain.errors import CallTooLargeError, PermanentAIError
from callcore.domain.model import Packet, Recording

__all__ = [
    "DEFAULT_FORMAT",
    "SUPPORTED_RATES",
    "AudioEncoding",
    "AudioFormat",
    "CallAudio",
    "DecodedAudio",
    "UndecodableAudioError",
    "call_format",
    "decode_call",
    "decode_packet",
    "mulaw_encode_sample",
    "mulaw_to_pcm16",
    "pcm16_to_mulaw",
    "to_wav",
]


class UndecodableAudioError(PermanentAIError):
    """Packets whose data is not audio in the call's format. The same bytes never decode, so it is permanent.

    ``sequences`` lists every such packet (empty when the call holds no audio at all),
    so the failure reason shows all of them at once rather than one per attempt.
    """

    def __init__(self, message: str, sequences: Iterable[int] = ()) -> None:
        super().__init__(message)
        self.sequences: list[int] = sorted(set(sequences))


def _mulaw_decode(code: int) -> int:
    """ITU-T G.711 mu-law: one code to its linear value (-32124 to 32124).

    Codes are stored complemented; the low nibble is the mantissa, the next three bits
    the segment (exponent), the top bit the sign. The result is the middle of the
    quantisation interval the encoder mapped to that code.
    """
    u = ~code & 0xFF
    magnitude = (((u & 0x0F) << 3) + 0x84) << ((u & 0x70) >> 4)
    return 0x84 - magnitude if u & 0x80 else magnitude - 0x84


# Built once: the low and the high byte of every code's 16-bit little-endian sample, as
# ``bytes.translate`` tables, so decoding runs at C speed and its byte order is the
# same on every host.
_MULAW_LOW = bytes(_mulaw_decode(c) & 0xFF for c in range(256))
_MULAW_HIGH = bytes((_mulaw_decode(c) >> 8) & 0xFF for c in range(256))


def mulaw_to_pcm16(raw: bytes) -> bytes:
    """G.711 mu-law bytes to 16-bit little-endian PCM, one sample per byte."""
    out = bytearray(2 * len(raw))
    out[0::2] = raw.translate(_MULAW_LOW)
    out[1::2] = raw.translate(_MULAW_HIGH)
    return bytes(out)


_BIAS = 0x84  # 132: added to the magnitude so every segment starts at a power of two
_CLIP = 32635  # the largest magnitude that still fits in 15 bits with the bias added


def mulaw_encode_sample(sample: int) -> int:
    """ITU-T G.711 mu-law: one 16-bit linear sample to its code (the inverse of the decoder).

    The biased magnitude's highest set bit (bits 7 to 14) is the segment, the four bits
    under it the mantissa; the code is stored complemented, with the sign as its top bit.
    Decoding gives the middle of the interval, so the error is at most half a step.
    """
    sign = 0x80 if sample < 0 else 0
    magnitude = min(-sample if sample < 0 else sample, _CLIP) + _BIAS
    segment = magnitude.bit_length() - 8  # 0..7
    mantissa = (magnitude >> (segment + 3)) & 0x0F
    return ~(sign | segment << 4 | mantissa) & 0xFF


@functools.cache
def _mulaw_table() -> bytes:
    """Every sample's code, indexed by the sample read as unsigned 16-bit: built on first use (64 KB)."""
    return bytes(mulaw_encode_sample(u - 0x10000 if u & 0x8000 else u) for u in range(0x10000))


def pcm16_to_mulaw(pcm16: bytes) -> bytes:
    """16-bit little-endian PCM to G.711 mu-law bytes, one per sample: what a PBX sends."""
    if len(pcm16) % 2:
        raise ValueError(f"{len(pcm16)} bytes is not 16-bit PCM (odd length)")
    samples = array("H", pcm16)
    if sys.byteorder == "big":  # pragma: no cover - little-endian hosts
        samples.byteswap()
    return bytes(map(_mulaw_table().__getitem__, samples))


def _decode(data: str, fmt: AudioFormat) -> bytes | str:
    """16-bit LE PCM, or why ``data`` is not audio in ``fmt`` (phrased to follow "packet N is"/"packets M, N are")."""
    try:
        # validate=True: text such as "sample_audio_chunk" is refused rather than being
        # silently stripped of its non-alphabet characters and decoded as noise.
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):  # ValueError: non-ASCII text
        return f"not base64 {fmt.encoding.value} audio"
    if fmt.encoding is AudioEncoding.MULAW:
        return mulaw_to_pcm16(raw)
    if len(raw) % 2:
        return "pcm16 of an odd number of bytes, not whole 16-bit samples"
    return raw


def call_format(packets: Iterable[Packet], default: AudioFormat = DEFAULT_FORMAT) -> AudioFormat:
    """The format a call's packets declare, or ``default`` when none declares one.

    A call has one format. Packets that declare none take it; packets that declare
    another than the lowest declaring sequence's are named in an UndecodableAudioError,
    since no single reading of the call's audio would be right.
    """
    declared = sorted((p.sequence, p.audio_format) for p in packets if p.audio_format is not None)
    if not declared:
        return default
    first_sequence, first = declared[0]
    others = [seq for seq, fmt in declared if fmt != first]
    if others:
        raise UndecodableAudioError(
            f"{_naming(others)} declared as other audio than the {first} of packet {first_sequence}", others
        )
    try:
        return AudioFormat.from_str(first)
    except ValueError as exc:
        seqs = [seq for seq, _ in declared]
        raise UndecodableAudioError(f"{_naming(seqs)} declared as unsupported audio: {exc}", seqs) from None


def _naming(sequences: list[int], limit: int = 20) -> str:
    """``packet 3 is`` / ``packets 3, 7 are``, cut after ``limit``: a call keeps 500 characters of an error."""
    shown = ", ".join(str(s) for s in sequences[:limit])
    more = f" (and {len(sequences) - limit} more)" if len(sequences) > limit else ""
    return f"packet {shown} is" if len(sequences) == 1 else f"packets {shown}{more} are"


def decode_packet(data: str, fmt: AudioFormat = DEFAULT_FORMAT, *, sequence: int | None = None) -> bytes:
    """One packet's ``data`` as 16-bit little-endian PCM.

    Raises UndecodableAudioError when it is not base64, or is PCM16 of an odd length;
    ``sequence``, when given, is named in the error.
    """
    decoded = _decode(data, fmt)
    if isinstance(decoded, bytes):
        return decoded
    if sequence is None:
        raise UndecodableAudioError(f"packet data is {decoded}")
    raise UndecodableAudioError(f"{_naming([sequence])} {decoded}", [sequence])


@dataclass(frozen=True)
class DecodedAudio:
    """A call's audio, ready for a speech-to-text service: mono 16-bit LE PCM in sequence order."""

    pcm16: bytes
    sample_rate: int
    duration_s: float
    gaps: list[int] = field(default_factory=list)  # missing sequences, filled with silence

    @property
    def sample_count(self) -> int:
        return len(self.pcm16) // 2


def decode_call(
    packets: list[Packet], fmt: AudioFormat = DEFAULT_FORMAT, *, max_pcm_bytes: int | None = None
) -> DecodedAudio:
    """Every packet of a call decoded and assembled in sequence order, whatever order they came in.

    A missing sequence between the lowest and the highest present becomes silence as
    long as one packet (the median decoded length, in samples), so the audio after a
    lost packet stays in time with the call. Packets with empty data carry no audio and
    do not count towards that length.

    Raises UndecodableAudioError naming every packet that does not decode (all of them,
    so one failure reason shows the whole damage), or when the call has no audio.
    ``max_pcm_bytes`` bounds the PCM produced, checked before it is built: silence for
    gaps is not limited by the size of the packets read, so a few packets with very
    distant sequences could otherwise ask for gigabytes (CallTooLargeError).
    """
    if not packets:
        raise UndecodableAudioError("no audio: the call has no packets")
    by_sequence: dict[int, Packet] = {}
    for packet in packets:
        seen = by_sequence.setdefault(packet.sequence, packet)
        if not seen.same_content(packet):
            # Stores refuse a second packet with the same sequence and other data; two
            # here means the caller broke that contract, and no choice would be right.
            raise ValueError(f"packet {packet.sequence} appears twice with different data")

    decoded: dict[int, bytes] = {}
    bad: dict[str, list[int]] = {}
    for sequence in sorted(by_sequence):
        result = _decode(by_sequence[sequence].data, fmt)
        if isinstance(result, bytes):
            decoded[sequence] = result
        else:
            bad.setdefault(result, []).append(sequence)
    if bad:
        message = "; ".join(f"{_naming(seqs)} {reason}" for reason, seqs in bad.items())
        raise UndecodableAudioError(message, [s for seqs in bad.values() for s in seqs])

    import statistics  # here, not at the top: the ingest function imports this module and never decodes

    lengths = [len(pcm) // 2 for pcm in decoded.values() if pcm]
    if not lengths:
        raise UndecodableAudioError(f"no audio: {_count(len(decoded), 'packet')}, none with a sample")
    # median_low: an actual packet's length, an integer, the same for the same packets.
    packet_samples = statistics.median_low(lengths)
    first, last = min(decoded), max(decoded)
    gap_count = last - first + 1 - len(decoded)

    total_bytes = sum(len(pcm) for pcm in decoded.values()) + gap_count * packet_samples * 2
    if max_pcm_bytes is not None and total_bytes > max_pcm_bytes:
        raise CallTooLargeError(
            f"the call's audio would be {total_bytes} bytes of PCM ({_count(gap_count, 'missing packet')} "
            f"filled with silence), over the limit of {max_pcm_bytes}"
        )
    gaps = [s for s in range(first, last + 1) if s not in decoded]

    silence = bytes(packet_samples * 2)
    pcm16 = b"".join(decoded.get(s, silence) for s in range(first, last + 1))
    return DecodedAudio(
        pcm16=pcm16,
        sample_rate=fmt.sample_rate,
        duration_s=len(pcm16) // 2 / fmt.sample_rate,
        gaps=gaps,
    )


@dataclass(frozen=True)
class CallAudio:
    """What an AI provider transcribes: one round of one call, its recording stored.

    ``audio`` is the decoded PCM, built by the attempt that reads the packets; it is None
    on a delayed check (``check`` > 0) of a transcription job that an earlier attempt,
    number ``attempt``, started on the stored recording.
    """

    call_id: str
    round: int
    attempt: int
    recording: Recording
    packets: list[Packet] = field(default_factory=list)
    audio: DecodedAudio | None = None
    check: int = 0


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def from_wav(wav: bytes) -> DecodedAudio:
    """A recording ``to_wav`` wrote, decoded again: what a call's audio is once its packets expired.

    Raises UndecodableAudioError for anything but mono 16-bit PCM (a recording is never that).
    """
    import wave

    try:
        with wave.open(io.BytesIO(wav), "rb") as reader:
            shape = (reader.getnchannels(), reader.getsampwidth())
            rate, frames = reader.getframerate(), reader.readframes(reader.getnframes())
    except (wave.Error, EOFError) as exc:
        raise UndecodableAudioError(f"the recording is not a WAV file: {exc}") from exc
    if shape != (1, 2):
        raise UndecodableAudioError(f"the recording is not mono 16-bit PCM ({shape[0]} channels, {shape[1]} bytes)")
    frames = _swap_on_big_endian_host(frames)  # ``wave`` reads samples in the host's order
    return DecodedAudio(pcm16=frames, sample_rate=rate, duration_s=len(frames) / 2 / rate)


def _swap_on_big_endian_host(frames: bytes) -> bytes:
    """16-bit samples between little-endian and the host's order: the same swap either way,
    and none on a little-endian host."""
    if sys.byteorder == "big":  # pragma: no cover - Lambda and CI hosts are little-endian
        samples = array("h", frames)
        samples.byteswap()
        return samples.tobytes()
    return frames


def to_wav(audio: DecodedAudio) -> bytes:
    """The audio as a mono 16-bit PCM WAV file.

    Byte-identical for the same audio (a WAV header holds no timestamp), so the file of
    a redelivered work item is recognisably the one already produced.
    """
    import wave  # here, not at the top: 1 ms of every ingest cold start otherwise

    # ``wave`` takes samples in the host's order and writes them little-endian.
    frames = _swap_on_big_endian_host(audio.pcm16)
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(audio.sample_rate)
        out.writeframes(frames)
    return buffer.getvalue()

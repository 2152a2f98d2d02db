"""The audio core: codecs, assembly in sequence order, gaps, undecodable packets, WAV."""

from __future__ import annotations

import base64
import io
import math
import struct
import wave

import pytest

from callcore.domain.audio import (
    DEFAULT_FORMAT,
    SUPPORTED_RATES,
    AudioEncoding,
    AudioFormat,
    DecodedAudio,
    UndecodableAudioError,
    call_format,
    decode_call,
    decode_packet,
    from_wav,
    mulaw_to_pcm16,
    to_wav,
)
from callcore.domain.errors import CallTooLargeError, PermanentAIError
from callcore.domain.model import Packet

MULAW_8K = AudioFormat(AudioEncoding.MULAW, 8000)
PCM16_8K = AudioFormat(AudioEncoding.PCM16, 8000)
PCM16_16K = AudioFormat(AudioEncoding.PCM16, 16000)


# --- a reference G.711 mu-law encoder, independent of the module under test ----------

BIAS = 0x84
CLIP = 32635


def mulaw_encode(sample: int) -> int:
    """ITU-T G.711 mu-law encoding of one 16-bit sample (the classic Sun/CCITT reference)."""
    sign = 0x80 if sample < 0 else 0
    magnitude = min(-sample if sign else sample, CLIP) + BIAS
    exponent = 7
    mask = 0x4000
    while exponent > 0 and not magnitude & mask:  # segment search: the highest set bit
        exponent -= 1
        mask >>= 1
    mantissa = (magnitude >> (exponent + 3)) & 0x0F
    return ~(sign | (exponent << 4) | mantissa) & 0xFF


def quantisation_error(code: int) -> int:
    """The largest error mu-law allows for a code: half its segment's step (the decoder returns the middle)."""
    exponent = ((~code) >> 4) & 0x07
    return 4 << exponent


def sine(freq_hz: float, rate: int, count: int, amplitude: float) -> list[int]:
    return [round(amplitude * math.sin(2 * math.pi * freq_hz * n / rate)) for n in range(count)]


def samples_of(pcm16: bytes) -> list[int]:
    return list(struct.unpack(f"<{len(pcm16) // 2}h", pcm16))


def le16(samples: list[int]) -> bytes:
    return struct.pack(f"<{len(samples)}h", *samples)


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def packet(sequence: int, raw: bytes) -> Packet:
    return Packet(sequence=sequence, data=b64(raw), timestamp=1732650000.0 + sequence * 0.02)


def tone_mulaw(count: int = 160, offset: int = 0) -> bytes:
    """``count`` mu-law bytes of a 1 kHz tone at 8 kHz, starting ``offset`` samples in."""
    return bytes(mulaw_encode(s) for s in sine(1000, 8000, offset + count, 20000)[offset:])


# --- codecs ---------------------------------------------------------------------------


def test_mulaw_decodes_a_1khz_tone_within_quantisation_error() -> None:
    original = sine(1000, 8000, 800, 30000)  # 100 ms, 8 samples per cycle
    codes = bytes(mulaw_encode(s) for s in original)

    decoded = samples_of(decode_packet(b64(codes), MULAW_8K))

    assert len(decoded) == len(original)
    for n, (want, got, code) in enumerate(zip(original, decoded, codes, strict=True)):
        assert abs(want - got) <= quantisation_error(code), (n, want, got, hex(code))
    assert max(decoded) > 29000  # the tone's peaks survive
    assert min(decoded) < -29000


def test_mulaw_decodes_every_16bit_sample_within_quantisation_error() -> None:
    for sample in range(-CLIP, CLIP + 1):
        code = mulaw_encode(sample)
        (got,) = samples_of(mulaw_to_pcm16(bytes([code])))
        assert abs(sample - got) <= quantisation_error(code), (sample, got, hex(code))


def test_mulaw_every_code_reencodes_to_itself() -> None:
    # 0x7F is "negative zero": it decodes to 0, which the encoder writes as 0xFF.
    decoded = samples_of(mulaw_to_pcm16(bytes(range(256))))
    for code, value in enumerate(decoded):
        assert mulaw_encode(value) == (0xFF if code == 0x7F else code), (hex(code), value)


@pytest.mark.parametrize(("code", "value"), [(0xFF, 0), (0x7F, 0), (0x00, -32124), (0x80, 32124)])
def test_mulaw_known_codes(code: int, value: int) -> None:
    assert samples_of(decode_packet(b64(bytes([code])), MULAW_8K)) == [value]


def test_mulaw_output_is_little_endian_16bit() -> None:
    assert decode_packet(b64(bytes([0x80, 0x00])), MULAW_8K) == struct.pack("<hh", 32124, -32124)


@pytest.mark.parametrize("fmt", [PCM16_8K, PCM16_16K], ids=str)
def test_pcm16_round_trips_exactly(fmt: AudioFormat) -> None:
    samples = [*sine(1000, fmt.sample_rate, fmt.sample_rate // 50, 32767), -32768, 32767, 0, -1]
    raw = le16(samples)

    assert decode_packet(b64(raw), fmt) == raw


@pytest.mark.parametrize("fmt", [PCM16_8K, PCM16_16K], ids=str)
def test_pcm16_call_round_trips_exactly(fmt: AudioFormat) -> None:
    per_packet = fmt.sample_rate // 50  # 20 ms
    samples = sine(440, fmt.sample_rate, 3 * per_packet, 25000)
    packets = [packet(i, le16(samples[i * per_packet : (i + 1) * per_packet])) for i in range(3)]

    audio = decode_call(packets, fmt)

    assert audio.pcm16 == le16(samples)
    assert audio.sample_rate == fmt.sample_rate
    assert audio.duration_s == pytest.approx(0.06)
    assert audio.gaps == []


def test_mulaw_8k_is_the_default_format() -> None:
    assert DEFAULT_FORMAT == MULAW_8K
    assert decode_packet(b64(bytes([0x80]))) == struct.pack("<h", 32124)


# --- assembly -------------------------------------------------------------------------


def test_a_missing_packet_becomes_one_packet_of_silence_in_its_place() -> None:
    chunks = {seq: tone_mulaw(160, offset=seq * 160) for seq in (0, 1, 3)}

    audio = decode_call([packet(seq, raw) for seq, raw in chunks.items()], MULAW_8K)

    samples = samples_of(audio.pcm16)
    assert len(samples) == 4 * 160
    assert samples[0:160] == samples_of(mulaw_to_pcm16(chunks[0]))
    assert samples[160:320] == samples_of(mulaw_to_pcm16(chunks[1]))
    assert samples[320:480] == [0] * 160
    assert samples[480:640] == samples_of(mulaw_to_pcm16(chunks[3]))
    assert any(samples[480:640])  # packet 3 is a tone, not more silence
    assert audio.gaps == [2]
    assert audio.sample_count == 640
    assert audio.duration_s == pytest.approx(0.08)
    assert audio.sample_rate == 8000


def test_gaps_are_only_between_the_lowest_and_highest_sequence_present() -> None:
    audio = decode_call([packet(10, tone_mulaw()), packet(13, tone_mulaw())], MULAW_8K)

    assert audio.gaps == [11, 12]
    assert audio.sample_count == 4 * 160  # nothing before 10, nothing after 13


def test_a_gap_is_as_long_as_the_median_packet() -> None:
    # Lengths 160, 160, 80 (a short last packet): the gap is 160 samples, not 80 or 133.
    packets = [packet(0, tone_mulaw(160)), packet(1, tone_mulaw(160)), packet(3, tone_mulaw(80))]

    audio = decode_call(packets, MULAW_8K)

    samples = samples_of(audio.pcm16)
    assert audio.gaps == [2]
    assert len(samples) == 160 + 160 + 160 + 80
    assert samples[320:480] == [0] * 160
    assert samples[480:] == samples_of(mulaw_to_pcm16(tone_mulaw(80)))


def test_out_of_order_packets_are_assembled_in_sequence_order() -> None:
    # Each packet a different constant, so the order is visible in the samples.
    codes = {0: 0x80, 1: 0x90, 2: 0xA0, 3: 0xB0}
    arrival = [2, 0, 3, 1]

    audio = decode_call([packet(seq, bytes([codes[seq]]) * 160) for seq in arrival], MULAW_8K)

    samples = samples_of(audio.pcm16)
    for seq, code in codes.items():
        (value,) = samples_of(mulaw_to_pcm16(bytes([code])))
        assert samples[seq * 160 : (seq + 1) * 160] == [value] * 160, seq
    assert audio.gaps == []


def test_a_repeated_identical_packet_is_audio_once() -> None:
    audio = decode_call([packet(0, tone_mulaw()), packet(0, tone_mulaw()), packet(1, tone_mulaw())], MULAW_8K)

    assert audio.sample_count == 320


def test_one_sequence_with_two_different_payloads_is_refused() -> None:
    with pytest.raises(ValueError, match="packet 0 appears twice"):
        decode_call([packet(0, tone_mulaw()), packet(0, bytes(160))], MULAW_8K)


def test_the_pcm_size_limit_is_checked_before_building_the_audio() -> None:
    # Two packets 100,000 sequences apart would be 32 MB of silence.
    far_apart = [packet(0, tone_mulaw()), packet(100_000, tone_mulaw())]

    with pytest.raises(CallTooLargeError, match="99999 missing packets"):
        decode_call(far_apart, MULAW_8K, max_pcm_bytes=1_000_000)
    assert decode_call(far_apart[:1], MULAW_8K, max_pcm_bytes=320).sample_count == 160


# --- undecodable audio ----------------------------------------------------------------


def test_undecodable_audio_is_a_permanent_ai_error() -> None:
    assert issubclass(UndecodableAudioError, PermanentAIError)
    with pytest.raises(PermanentAIError):
        decode_packet("sample_audio_chunk", MULAW_8K)


def test_text_that_is_not_base64_is_undecodable() -> None:
    with pytest.raises(UndecodableAudioError, match="packet 4 is not base64 mulaw audio") as caught:
        decode_packet("sample_audio_chunk", MULAW_8K, sequence=4)
    assert caught.value.sequences == [4]


@pytest.mark.parametrize("data", ["sample_audio_chunk", "AAAA!", "AAA", "ünïcödé", "AA AA"])
def test_malformed_base64_is_undecodable(data: str) -> None:
    with pytest.raises(UndecodableAudioError, match="not base64"):
        decode_packet(data, MULAW_8K)


def test_a_call_names_all_its_undecodable_packets() -> None:
    packets = [packet(seq, tone_mulaw()) for seq in range(10) if seq not in (3, 7)]
    packets += [
        Packet(sequence=7, data="sample_audio_chunk", timestamp=1.0),
        Packet(sequence=3, data="not base64!", timestamp=2.0),
    ]

    with pytest.raises(UndecodableAudioError) as caught:
        decode_call(packets, MULAW_8K)

    assert caught.value.sequences == [3, 7]
    assert str(caught.value) == "packets 3, 7 are not base64 mulaw audio"


def test_odd_length_pcm16_is_undecodable() -> None:
    with pytest.raises(UndecodableAudioError, match="odd number of bytes"):
        decode_packet(b64(b"\x01\x02\x03"), PCM16_8K)


def test_a_call_names_each_kind_of_undecodable_packet() -> None:
    packets = [
        packet(0, le16([1, 2])),
        packet(1, b"\x01\x02\x03"),
        Packet(sequence=2, data="sample_audio_chunk", timestamp=1.0),
        packet(3, b"\x01"),
    ]

    with pytest.raises(UndecodableAudioError) as caught:
        decode_call(packets, PCM16_16K)

    assert caught.value.sequences == [1, 2, 3]
    message = str(caught.value)
    assert "packets 1, 3 are pcm16 of an odd number of bytes" in message
    assert "packet 2 is not base64 pcm16 audio" in message


def test_a_long_list_of_bad_packets_is_cut_in_the_message_but_kept_whole() -> None:
    packets = [Packet(sequence=seq, data="sample_audio_chunk", timestamp=1.0) for seq in range(100)]

    with pytest.raises(UndecodableAudioError) as caught:
        decode_call(packets, MULAW_8K)

    assert caught.value.sequences == list(range(100))
    assert "(and 80 more)" in str(caught.value)
    assert len(str(caught.value)) < 500


def test_a_call_without_packets_is_undecodable() -> None:
    with pytest.raises(UndecodableAudioError, match="no audio") as caught:
        decode_call([], MULAW_8K)
    assert caught.value.sequences == []


def test_a_call_of_empty_packets_is_undecodable() -> None:
    with pytest.raises(UndecodableAudioError, match="no audio"):
        decode_call([Packet(sequence=0, data="", timestamp=1.0), Packet(sequence=1, data="", timestamp=1.0)])


# --- WAV ------------------------------------------------------------------------------


def three_tones(fmt: AudioFormat) -> list[Packet]:
    """Packets 0, 1 and 3 of a tone in ``fmt``: 2 is missing."""
    if fmt.encoding is AudioEncoding.MULAW:
        return [packet(seq, tone_mulaw()) for seq in (0, 1, 3)]
    return [packet(seq, le16(sine(1000, 16000, 320, 12000))) for seq in (0, 1, 3)]


@pytest.mark.parametrize("fmt", [MULAW_8K, PCM16_16K], ids=str)
def test_to_wav_is_a_mono_16bit_wav_of_the_audio(fmt: AudioFormat) -> None:
    audio = decode_call(three_tones(fmt), fmt)

    wav = to_wav(audio)

    with wave.open(io.BytesIO(wav), "rb") as read:
        assert read.getnchannels() == 1
        assert read.getsampwidth() == 2
        assert read.getframerate() == fmt.sample_rate
        assert read.getnframes() == audio.sample_count
        assert read.readframes(read.getnframes()) == audio.pcm16
    assert wav[:4] == b"RIFF"
    assert wav[8:12] == b"WAVE"


def test_to_wav_is_byte_identical_for_the_same_packets() -> None:
    packets = [packet(seq, tone_mulaw(160, offset=seq * 160)) for seq in (0, 2, 1, 5)]

    first = to_wav(decode_call(packets, MULAW_8K))
    again = to_wav(decode_call(list(reversed(packets)), MULAW_8K))

    assert first == again


@pytest.mark.parametrize("fmt", [MULAW_8K, PCM16_16K], ids=str)
def test_from_wav_gives_back_the_audio_to_wav_wrote(fmt: AudioFormat) -> None:
    audio = decode_call(three_tones(fmt), fmt)

    again = from_wav(to_wav(audio))

    assert (again.pcm16, again.sample_rate) == (audio.pcm16, audio.sample_rate)
    assert again.duration_s == pytest.approx(audio.duration_s)


def test_from_wav_refuses_what_is_not_a_mono_16bit_wav() -> None:
    with pytest.raises(UndecodableAudioError, match="not a WAV file"):
        from_wav(b"not a wav")
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(2)
        out.setsampwidth(2)
        out.setframerate(8000)
        out.writeframes(b"\0" * 8)
    with pytest.raises(UndecodableAudioError, match="2 channels"):
        from_wav(buffer.getvalue())


def test_decoded_audio_can_be_written_directly() -> None:
    wav = to_wav(DecodedAudio(pcm16=le16([0, 1, -1]), sample_rate=8000, duration_s=3 / 8000))

    with wave.open(io.BytesIO(wav), "rb") as read:
        assert read.readframes(3) == le16([0, 1, -1])


# --- formats --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("encoding", "rate", "expected"),
    [
        ("mulaw", 8000, MULAW_8K),
        ("pcm16", 8000, PCM16_8K),
        ("pcm16", 16000, PCM16_16K),
        (" MULAW ", 8000, MULAW_8K),
    ],
)
def test_audio_format_parses_the_supported_formats(encoding: str, rate: int, expected: AudioFormat) -> None:
    fmt = AudioFormat.parse(encoding, rate)

    assert fmt == expected
    assert isinstance(fmt.encoding, AudioEncoding)


@pytest.mark.parametrize(
    ("encoding", "rate", "message"),
    [
        ("mulaw", 16000, "mulaw audio must be 8000 Hz mono, not 16000 Hz"),
        ("mulaw", 44100, "mulaw audio must be 8000 Hz mono"),
        ("pcm16", 44100, "pcm16 audio must be 8000 Hz or 16000 Hz mono, not 44100 Hz"),
        ("pcm16", 0, "pcm16 audio must be 8000 Hz or 16000 Hz mono, not 0 Hz"),
        ("alaw", 8000, "unknown audio encoding 'alaw'; expected one of: mulaw, pcm16"),
        ("", 8000, "unknown audio encoding ''"),
    ],
)
def test_audio_format_refuses_what_it_cannot_decode(encoding: str, rate: int, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        AudioFormat.parse(encoding, rate)


def test_audio_format_validates_when_built_directly() -> None:
    with pytest.raises(ValueError, match="mulaw audio must be 8000 Hz"):
        AudioFormat(AudioEncoding.MULAW, 16000)
    with pytest.raises(ValueError, match="not True Hz"):
        AudioFormat(AudioEncoding.MULAW, True)


def test_the_api_offers_exactly_the_formats_the_decoder_supports() -> None:
    from typing import get_args

    from ingest.schemas import AudioFormatName

    supported = {str(AudioFormat(encoding, rate)) for encoding, rates in SUPPORTED_RATES.items() for rate in rates}
    assert set(get_args(AudioFormatName)) == supported


def _declaring(sequence: int, audio_format: str | None) -> Packet:
    return Packet(sequence=sequence, data="AAAA", timestamp=0.0, audio_format=audio_format)


def test_a_call_that_declares_nothing_is_in_the_default_format() -> None:
    default = AudioFormat.parse("pcm16", 16000)
    assert call_format([_declaring(0, None), _declaring(1, None)], default) is default


def test_one_packets_declaration_is_the_whole_calls_format() -> None:
    packets = [_declaring(0, None), _declaring(1, "pcm16/8000"), _declaring(2, None)]
    assert call_format(packets) == AudioFormat.parse("pcm16", 8000)


def test_packets_declaring_another_format_than_the_first_declaring_one_are_named() -> None:
    packets = [_declaring(5, "pcm16/16000"), _declaring(2, "pcm16/8000"), _declaring(9, "mulaw/8000")]

    with pytest.raises(UndecodableAudioError) as excinfo:
        call_format(packets)

    assert excinfo.value.sequences == [5, 9]
    assert str(excinfo.value) == "packets 5, 9 are declared as other audio than the pcm16/8000 of packet 2"

"""The simulator's speech mode: mu-law encoding, resampling, framing, word error rate, the CLI,
and a speech run against an in-memory API. Nothing here sleeps, needs a server or espeak-ng."""

from __future__ import annotations

import asyncio
import base64
import json
import math
import wave
from array import array
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import pytest

from callcore.domain.audio import mulaw_encode_sample, mulaw_to_pcm16, pcm16_to_mulaw
from pbxsim.__main__ import parse_args, parse_cli
from pbxsim.http import Answer
from pbxsim.plan import Rates
from pbxsim.runner import Options, run
from pbxsim.speech import (
    FIXTURES_DIR,
    FRAME_BYTES,
    MULAW_SILENCE,
    Speech,
    SpeechError,
    SpeechRequest,
    at_least,
    edit_distance,
    load_fixtures,
    mulaw_frames,
    normalise_words,
    resample_pcm16,
    synthesize,
    word_error_rate,
)

NO_NOISE = Rates(duplicate=0, reorder=0, late=0, skip=0)


def tone(freq_hz: float, rate: int, seconds: float, amplitude: float) -> list[int]:
    return [round(amplitude * math.sin(2 * math.pi * freq_hz * n / rate)) for n in range(int(rate * seconds))]


def to_pcm16(samples: list[int]) -> bytes:
    return array("h", samples).tobytes()  # little-endian hosts (as callcore.domain.audio's tests)


def from_pcm16(pcm16: bytes) -> list[int]:
    return list(array("h", pcm16))


def rms(samples: list[int]) -> float:
    return math.sqrt(sum(s * s for s in samples) / len(samples))


# ---------------------------------------------------------------- mu-law


def half_step(sample: int) -> int:
    """Half of G.711's quantisation step at this sample's segment: the most a round trip may move it."""
    segment = (min(abs(sample), 32635) + 0x84).bit_length() - 8
    return 1 << (segment + 2)


def test_mulaw_round_trips_a_tone_within_g711_quantisation_error() -> None:
    samples = tone(1000, 8000, 0.1, amplitude=20000)  # 1 kHz, -4 dBFS: every segment is crossed
    decoded = from_pcm16(mulaw_to_pcm16(pcm16_to_mulaw(to_pcm16(samples))))
    assert len(decoded) == len(samples)
    errors = [abs(d - s) for d, s in zip(decoded, samples, strict=True)]
    assert all(e <= half_step(s) for e, s in zip(errors, samples, strict=True))
    snr_db = 20 * math.log10(rms(samples) / rms(errors))
    assert snr_db > 35  # G.711's signal-to-quantisation-noise ratio is about 38 dB for a loud tone


def test_every_mulaw_code_survives_decode_then_encode() -> None:
    # 0x7F is negative zero: it decodes to 0, which encodes as positive zero, 0xFF.
    for code in range(256):
        decoded = from_pcm16(mulaw_to_pcm16(bytes([code])))[0]
        assert mulaw_encode_sample(decoded) == (0xFF if code == 0x7F else code)
    assert mulaw_encode_sample(32767) == mulaw_encode_sample(32635)  # clipped
    assert mulaw_encode_sample(-32768) == mulaw_encode_sample(-32635)


def test_the_encoder_refuses_a_half_sample() -> None:
    with pytest.raises(ValueError, match="odd length"):
        pcm16_to_mulaw(b"\x00\x00\x00")


# ---------------------------------------------------------------- resampling


def test_16k_resamples_to_8k_keeping_the_telephone_band() -> None:
    voice = resample_pcm16(to_pcm16(tone(1000, 16000, 0.5, 10000)), 16000, 8000)
    assert len(voice) == 2 * 4000
    expected = tone(1000, 8000, 0.5, 10000)
    middle = slice(100, 3900)  # away from the zero padding at the ends
    errors = [a - b for a, b in zip(from_pcm16(voice)[middle], expected[middle], strict=True)]
    assert rms(errors) < 0.01 * 10000 / math.sqrt(2)  # within 1% of the tone's RMS


def test_16k_resampling_removes_what_8k_cannot_carry() -> None:
    above_nyquist = resample_pcm16(to_pcm16(tone(6000, 16000, 0.5, 10000)), 16000, 8000)
    assert rms(from_pcm16(above_nyquist)[100:3900]) < 0.01 * 10000 / math.sqrt(2)  # else it folds to 2 kHz


def test_espeak_rate_resamples_to_8k() -> None:
    pcm = resample_pcm16(to_pcm16(tone(500, 22050, 0.2, 8000)), 22050, 8000)
    assert len(pcm) // 2 == math.ceil(22050 * 0.2 * 8000 / 22050)
    assert rms(from_pcm16(pcm)[50:-50]) == pytest.approx(8000 / math.sqrt(2), rel=0.02)


# ---------------------------------------------------------------- framing


def test_a_fixture_becomes_160_byte_frames_covering_its_duration() -> None:
    row = json.loads((FIXTURES_DIR / "fixtures.json").read_text())["fixtures"][0]
    with wave.open(str(FIXTURES_DIR / row["file"])) as w:
        samples = w.getnframes()
    speech = next(s for s in load_fixtures() if s.name == row["file"])
    frames = [base64.b64decode(f) for f in speech.frames]
    assert {len(f) for f in frames} == {FRAME_BYTES}
    assert len(frames) == math.ceil(samples / FRAME_BYTES)
    assert len(frames) * 0.02 == pytest.approx(row["duration_s"], abs=0.02)
    assert speech.text == row["text"]
    assert speech.expected_sentiment == row["sentiment"]


def test_the_last_frame_is_padded_with_silence() -> None:
    frames = mulaw_frames(bytes(range(170)))
    assert [len(f) for f in frames] == [160, 160]
    assert frames[1] == bytes(range(160, 170)) + bytes([MULAW_SILENCE]) * 150
    assert from_pcm16(mulaw_to_pcm16(bytes([MULAW_SILENCE]))) == [0]


def test_fixtures_cycle_into_a_long_call() -> None:
    fixtures = load_fixtures()
    long = at_least(fixtures, 30, "long")
    assert long.duration_s >= 30
    assert long.text.startswith(fixtures[0].text + " " + fixtures[1].text)
    assert len(long.frames) == math.ceil(len(long.pcm16) / 2 / FRAME_BYTES)


# ---------------------------------------------------------------- word error rate


@pytest.mark.parametrize(
    ("hypothesis", "expected"),
    [
        ("call me back tomorrow", 0.0),  # identical
        ("call me back today", 0.25),  # one substitution
        ("call me right back tomorrow", 0.25),  # one insertion
        ("call back tomorrow", 0.25),  # one deletion
        ("", 1.0),  # nothing heard: every word deleted
        ("Call me, back... TOMORROW!", 0.0),  # case and punctuation do not count
        ("tomorrow call me back", 0.5),  # a moved word: one deletion and one insertion
    ],
)
def test_word_error_rate(hypothesis: str, expected: float) -> None:
    assert word_error_rate("call me back tomorrow", hypothesis) == expected


def test_word_error_rate_counts_inserted_words_past_one() -> None:
    assert word_error_rate("yes", "yes yes yes") == 2.0


def test_word_error_rate_needs_a_reference() -> None:
    with pytest.raises(ValueError, match="no words"):
        word_error_rate(" ?! ", "anything")


def test_normalising_drops_apostrophes_and_splits_on_other_punctuation() -> None:
    assert normalise_words("Call me at ten o'clock. Four-five-six!") == [
        "call",
        "me",
        "at",
        "ten",
        "oclock",
        "four",
        "five",
        "six",
    ]
    assert edit_distance([], ["a", "b"]) == 2
    assert edit_distance(["a", "b", "c"], ["x", "b"]) == 2


# ---------------------------------------------------------------- the command line


def test_speech_streams_the_fixtures_in_real_time_one_call_each() -> None:
    cli = parse_cli(["--speech"])
    assert cli.speech == SpeechRequest()
    assert cli.options.calls == len(json.loads((FIXTURES_DIR / "fixtures.json").read_text())["fixtures"])
    assert cli.options.interval_s == 0.02
    assert cli.options.on_clock


def test_fast_and_speed_set_the_pace() -> None:
    assert parse_cli(["--speech", "--fast"]).options.interval_s == 0
    assert parse_cli(["--speech", "--speed", "4"]).options.interval_s == 0.005
    assert parse_cli(["--speech", "--calls", "50", "--connections", "10"]).options.calls == 50


def test_speech_batches_hold_20_ms_frames_whatever_the_pace() -> None:
    assert parse_cli(["--speech", "--batch-ms", "200"]).options.batch == 10
    fast = parse_cli(["--speech", "--fast", "--batch-ms", "1000"]).options
    assert (fast.batch, fast.interval_s) == (50, 0)
    quick = parse_cli(["--speech", "--speed", "4", "--batch-ms", "200"]).options
    assert (quick.batch, quick.interval_s, quick.on_clock) == (10, 0.005, True)


def test_text_implies_speech_one_call_per_text(tmp_path: Path) -> None:
    cli = parse_cli(["--text", "hello there", "--text=-goodbye", "--voice", "en-us"])
    assert cli.speech == SpeechRequest(texts=("hello there", "-goodbye"), voice="en-us")
    assert cli.options.calls == 2
    lines = tmp_path / "texts.txt"
    lines.write_text("first line\n\n  second line  \n")
    assert parse_cli(["--text-file", str(lines), "--fast"]).speech == SpeechRequest(texts=("first line", "second line"))


def test_without_speech_the_options_are_the_ones_before() -> None:
    cli = parse_cli([])
    assert cli.speech is None
    options, _ = parse_args([])
    assert (options.calls, options.packets, options.interval_s, options.on_clock, options.speech) == (
        100,
        20,
        0.02,
        False,
        (),
    )


@pytest.mark.parametrize(
    "argv",
    [
        ["--fast"],  # pace without speech
        ["--speed", "2"],
        ["--voice", "en-us"],
        ["--speech", "--voice", "en-us"],  # the fixtures are already spoken
        ["--speech", "--fast", "--speed", "2"],
        ["--speech", "--speed", "0"],
        ["--speech", "--packets", "10"],  # the audio sets the length
        ["--speech", "--interval-ms", "5"],
        ["--text", " "],
    ],
)
def test_cli_refuses_speech_options_that_do_not_fit(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as excinfo:
        parse_cli(argv)
    assert excinfo.value.code == 2


# ---------------------------------------------------------------- a run against an in-memory API


class TranscribingApi:
    """The API in memory: a call ends COMPLETED with ``transcripts[call_id]`` and its label."""

    def __init__(
        self, transcripts: dict[str, tuple[str, str]], latency_s: float = 0.0, clock: list[float] | None = None
    ) -> None:
        self.transcripts = transcripts
        self.data: dict[str, dict[int, str]] = {}
        self.ended: dict[str, int] = {}
        self.latency_s, self.clock = latency_s, clock

    async def post(self, path: str, body: Any = None) -> Answer:
        if self.clock is not None:
            self.clock[0] += self.latency_s
        parts = path.strip("/").split("/")
        if parts[2] == "stream" and parts[-1] == "batch":
            results = [{"sequence": p["sequence"], "status": self.store(parts[3], p)} for p in body["packets"]]
            return Answer(200, json.dumps({"call_id": parts[3], "results": results}).encode(), 1.0)
        if parts[2] == "stream":
            return Answer(202 if self.store(parts[3], body) == "accepted" else 200, b"{}", 1.0)
        self.ended[parts[2]] = body["last_sequence"]
        return Answer(202, b"{}", 1.0)

    def store(self, call_id: str, packet: dict[str, Any]) -> str:
        packets = self.data.setdefault(call_id, {})
        status = "duplicate" if packet["sequence"] in packets else "accepted"
        packets[packet["sequence"]] = packet["data"]
        return status

    async def get(self, path: str, params: dict[str, Any] | None = None) -> Answer:
        now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        if path == "/v1/calls":
            assert params is not None
            calls = [{"call_id": c, "updated_at": now} for c in self.ended if params["state"] == "COMPLETED"]
            return Answer(200, json.dumps({"calls": calls, "next_cursor": None}).encode(), 1.0)
        if path == "/v1/calls/counts":
            counts = [{"state": "COMPLETED", "count": len(self.ended), "more": False}]
            return Answer(200, json.dumps({"counts": counts}).encode(), 1.0)
        call_id = unquote(path.rsplit("/", 1)[1])
        stored = sorted(self.data[call_id])
        text, label = self.transcripts[call_id]
        body = {
            "call_id": call_id,
            "state": "COMPLETED" if call_id in self.ended else "IN_PROGRESS",
            "updated_at": now,
            "last_sequence": self.ended.get(call_id),
            "packets": {"received": len(stored), "highest_sequence": stored[-1], "missing": [], "missing_count": 0},
            "ai": {
                "attempts": 1,
                "history": [{"round": 1, "number": 1, "started_at": now, "error": None}],
                "transcript": text,
                "sentiment": {"label": label, "score": 0.0},
            },
            "failure_reason": None,
        }
        return Answer(200, json.dumps(body).encode(), 1.0)


def _speech(name: str, text: str, label: str | None, seconds: float = 0.1) -> Speech:
    return Speech.from_pcm16(name, text, to_pcm16(tone(440, 8000, seconds, 5000)), 8000, label)


def test_a_speech_run_streams_each_calls_frames_and_reports_its_word_error_rate() -> None:
    speeches = (_speech("a", "call me back tomorrow", "NEUTRAL"), _speech("b", "thank you so much", "POSITIVE", 0.05))
    api = TranscribingApi(
        {"t-0": ("call me back tomorrow", "NEUTRAL"), "t-1": ("thank you so", "NEUTRAL"), "t-2": ("", "NEUTRAL")}
    )

    async def no_sleep(seconds: float) -> None:
        return None

    options = Options(calls=3, interval_s=0, rates=NO_NOISE, prefix="t", progress=False, speech=speeches)
    report = asyncio.run(run(options, transport=api, sleep=no_sleep))
    assert report.ok, report.failures()
    for call_id, speech in (("t-0", speeches[0]), ("t-1", speeches[1]), ("t-2", speeches[0])):  # cycled
        assert [api.data[call_id][s] for s in sorted(api.data[call_id])] == list(speech.frames)
        assert api.ended[call_id] == len(speech.frames) - 1
    summary = report.to_dict()["speech"]
    assert [(c["call_id"], c["source"], c["wer"]) for c in summary["by_call"]] == [
        ("t-0", "a", 0.0),
        ("t-1", "b", 0.25),
        ("t-2", "a", 1.0),
    ]
    assert summary["mean_wer"] == pytest.approx((0 + 0.25 + 1) / 3)
    assert summary["pooled_wer"] == (0 + 1 + 4) / 12
    assert summary["sentiment_agreement"] == pytest.approx(2 / 3)  # t-1 said POSITIVE, heard NEUTRAL


def test_real_time_pacing_does_not_add_up_the_requests_latency() -> None:
    clock = [0.0]
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)
        clock[0] += seconds

    speech = _speech("a", "hello", None, seconds=0.1)  # 5 frames
    api = TranscribingApi({"t-0": ("hello", "NEUTRAL")}, latency_s=0.005, clock=clock)
    options = Options(
        calls=1, interval_s=0.02, on_clock=True, rates=NO_NOISE, prefix="t", progress=False, speech=(speech,)
    )
    asyncio.run(run(options, transport=api, sleep=sleep, clock=lambda: clock[0]))
    # Frame i goes at i * 20 ms: after each 5 ms request, 15 ms is left to wait.
    assert slept[:4] == pytest.approx([0.015] * 4)


def test_a_speech_run_in_batches_streams_every_frame_in_requests_of_the_batch() -> None:
    speech = _speech("a", "call me back", "NEUTRAL", seconds=0.5)  # 25 frames
    api = TranscribingApi({"t-0": ("call me back", "NEUTRAL"), "t-1": ("call me", "NEUTRAL")})

    async def no_sleep(seconds: float) -> None:
        return None

    options = Options(calls=2, interval_s=0, rates=NO_NOISE, prefix="t", progress=False, speech=(speech,), batch=10)
    report = asyncio.run(run(options, transport=api, sleep=no_sleep))
    assert report.ok, report.failures()
    for call_id in ("t-0", "t-1"):
        assert [api.data[call_id][s] for s in sorted(api.data[call_id])] == list(speech.frames)
        assert report.calls[call_id].acknowledged == set(range(25))
    d = report.to_dict()
    assert (d["requests"], d["packets_sent"], d["responses"]["202"]) == (6, 50, 50)  # 10 + 10 + 5 a call
    assert [c["wer"] for c in d["speech"]["by_call"]] == [0.0, pytest.approx(1 / 3)]


def test_real_time_pacing_sends_a_batch_once_its_audio_has_passed() -> None:
    clock = [0.0]
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)
        clock[0] += seconds

    speech = _speech("a", "hello", None, seconds=0.5)  # 25 frames
    api = TranscribingApi({"t-0": ("hello", "NEUTRAL")}, latency_s=0.005, clock=clock)
    options = Options(
        calls=1, interval_s=0.02, on_clock=True, rates=NO_NOISE, prefix="t", progress=False, speech=(speech,), batch=10
    )
    asyncio.run(run(options, transport=api, sleep=sleep, clock=lambda: clock[0]))
    # Batches end at frames 10, 20 and 25: sent at 200, 400 and 500 ms, each 5 ms request not adding up.
    assert slept[:3] == pytest.approx([0.2, 0.195, 0.095])


def test_text_without_espeak_ng_says_what_to_install() -> None:
    with pytest.raises(SpeechError, match="needs the no-such-espeak binary"):
        synthesize("hello", "text 1", binary="no-such-espeak")


def test_the_report_prints_what_each_call_said_and_what_was_heard() -> None:
    from rich.console import Console

    from pbxsim.__main__ import render_speech

    row = {
        "call_id": "sim-1-0",
        "source": "negative_cancel.wav",
        "audio_s": 4.66,
        "state": "COMPLETED",
        "wer": 0.5,
        "reference": "Cancel my account.",
        "transcript": "cancel my cow",
        "expected_sentiment": "NEGATIVE",
        "sentiment": "NEGATIVE",
        "sentiment_agrees": True,
    }
    summary = {
        "by_call": [row],
        "calls": 1,
        "calls_with_transcript": 1,
        "mean_wer": 0.5,
        "pooled_wer": 0.5,
        "sentiment_compared": 1,
        "sentiment_agreement": 1.0,
    }
    console = Console(record=True, width=120)

    render_speech(summary, console)

    text = console.export_text()
    assert "0  said:  Cancel my account.\n   heard: 'cancel my cow'" in text
    assert "sentiment as expected in 1 of 1" in text

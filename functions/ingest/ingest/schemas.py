"""Request and response bodies, one model per role."""

from __future__ import annotations

import math
from typing import Annotated, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictInt,
    StrictStr,
    field_validator,
)
from pydantic_core import PydanticCustomError

from callcore.domain.model import MAX_SEQUENCE, Call, CallState
from callcore.services import CallDetails

# Year 5138 as epoch seconds: any real timestamp, and far inside DynamoDB's number range.
MAX_TIMESTAMP_S = 1e11


def integral_number(value: object) -> object:
    """An integral JSON number written with a fraction or exponent (12282.0, 1.2282e4) is that integer.

    JSON has one number type, and JSON Schema's ``integer`` admits any number whose
    fraction is zero; an encoder that holds the value as a float writes it so. Only
    floats change here: bools and strings still meet a strict int, and a fraction
    (12282.5), a non-finite number, or one out of range is refused.
    """
    if isinstance(value, float):
        if value.is_integer():
            return int(value)
        if math.isfinite(value):
            raise PydanticCustomError(
                "int_from_float", "Input should be a valid integer, got a number with a fractional part"
            )
    return value


# An integer (12282.0 included, see integral_number) in 0..MAX_SEQUENCE; the OpenAPI says `integer`.
Sequence = Annotated[
    StrictInt,
    Field(
        ge=0,
        le=MAX_SEQUENCE,
        description=f"Packet number, 0 to {MAX_SEQUENCE}: a call holds at most {MAX_SEQUENCE + 1} packets.",
    ),
    BeforeValidator(integral_number),
]


# Every format callcore.domain.audio decodes, by the name packets carry (str(AudioFormat));
# a unit test holds the two equal.
AudioFormatName = Literal["mulaw/8000", "pcm16/8000", "pcm16/16000"]


class PacketIn(BaseModel):
    sequence: Sequence
    data: StrictStr = Field(
        description=(
            "The audio chunk, base64, in the call's format (a 20 ms G.711 packet is 160 bytes, 216 characters "
            "of base64). It is stored as sent; data that is not audio in the call's format fails the call when "
            "its AI processing starts, with a reason naming the packets."
        )
    )
    timestamp: Annotated[
        float,
        Field(
            allow_inf_nan=False,
            strict=True,
            ge=0,
            le=MAX_TIMESTAMP_S,
            description="Seconds (epoch or since the call began), a finite number >= 0; stored to the microsecond.",
        ),
    ]

    audio_format: AudioFormatName | None = Field(
        default=None,
        description=(
            "The call's audio, declared on any of its packets (usually the first): `mulaw/8000` (G.711 "
            "mu-law, 8 kHz), `pcm16/8000` or `pcm16/16000` (16-bit little-endian linear PCM), all mono. "
            "Every packet of a call that declares a format must declare the same one. A call that declares "
            "none is read in the service's default (AUDIO_ENCODING/AUDIO_SAMPLE_RATE: mulaw/8000 unless "
            "configured otherwise)."
        ),
    )

    @field_validator("data")
    @classmethod
    def data_is_unicode_text(cls, value: str) -> str:
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError("data must be valid Unicode text (it holds an unpaired surrogate)") from None
        return value

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {"sequence": 1, "data": "/v7+/n5+fn7+/v7+fn5+fg==", "timestamp": 1732650000.02},
                {
                    "sequence": 0,
                    "data": "AAAQABAAAAA=",
                    "timestamp": 1732650000.0,
                    "audio_format": "pcm16/16000",
                },
            ]
        }
    )


class PacketAck(BaseModel):
    call_id: str
    sequence: int
    status: Literal["accepted", "duplicate"]


# A batch: 200 ms of 20 ms packets is 10; 50 is a second of them. Its data is bounded by
# MAX_BATCH_BYTES as a single packet's is by MAX_PACKET_BYTES.
MAX_BATCH_PACKETS = 50


class BatchIn(BaseModel):
    packets: list[PacketIn] = Field(
        min_length=1,
        description=(
            f"1 to {MAX_BATCH_PACKETS} packets of the call, in any order (more is a 413). Each is stored as "
            "`POST /v1/call/stream/{call_id}` would store it."
        ),
    )


class BatchResult(BaseModel):
    sequence: int
    status: Literal["accepted", "duplicate", "conflict", "ended"] = Field(
        description=(
            "accepted: stored now, and part of the call's AI work. duplicate: this sequence was already stored "
            "with the same data. conflict: it is stored with other data; nothing stored. ended: the call is no "
            "longer IN_PROGRESS; nothing stored."
        )
    )


class BatchAck(BaseModel):
    call_id: str
    results: list[BatchResult] = Field(description="One per packet, in the order of the request.")


class EndIn(BaseModel):
    last_sequence: Sequence | None = Field(
        default=None, description="The call's last packet; a missing tail is then reported in `missing`."
    )


class EndOut(BaseModel):
    call_id: str
    state: CallState


class PacketsOut(BaseModel):
    received: int = Field(description="Distinct sequences stored.")
    duplicates: int
    out_of_order: int = Field(description="Packets stored after a packet with a higher sequence.")
    highest_sequence: int | None
    missing: list[int] = Field(description="Absent sequences (at most 1000 listed; see missing_count).")
    missing_count: int


class SentimentOut(BaseModel):
    label: str
    score: float


class AttemptOut(BaseModel):
    round: int
    number: int
    started_at: str
    error: str | None


class AIOut(BaseModel):
    attempts: int
    last_error: str | None
    transcript: str | None
    transcript_truncated: bool = Field(
        description="True when the transcript was cut to the 100,000 bytes a call keeps (see README, Limits)."
    )
    sentiment: SentimentOut | None
    history: list[AttemptOut]


class RecordingOut(BaseModel):
    duration_s: float = Field(description="Seconds of audio, gaps (missing packets) included as silence.")
    bytes: int = Field(description="Size of the WAV file; fetch it from GET /v1/call/{call_id}/recording.")


class CallOut(BaseModel):
    call_id: str
    state: CallState
    created_at: str
    updated_at: str
    last_sequence: int | None
    packets: PacketsOut
    ai: AIOut
    failure_reason: str | None
    recording: RecordingOut | None = Field(
        description="The call's assembled audio, stored when its AI processing starts; null before."
    )

    @classmethod
    def from_details(cls, details: CallDetails) -> CallOut:
        call, stats = details.call, details.packets
        return cls(
            call_id=call.call_id,
            state=call.state,
            created_at=call.created_at,
            updated_at=call.updated_at,
            last_sequence=call.last_sequence,
            packets=PacketsOut(
                received=stats.received,
                duplicates=stats.duplicates,
                out_of_order=stats.out_of_order,
                highest_sequence=stats.highest_sequence,
                missing=stats.missing,
                missing_count=stats.missing_count,
            ),
            ai=AIOut(
                attempts=call.ai_attempts,
                last_error=call.ai_last_error,
                transcript=call.transcript,
                transcript_truncated=call.transcript_truncated,
                sentiment=SentimentOut(label=call.sentiment.label, score=call.sentiment.score)
                if call.sentiment
                else None,
                history=[
                    AttemptOut(round=a.round, number=a.number, started_at=a.started_at, error=a.error)
                    for a in call.attempts
                ],
            ),
            failure_reason=call.reason_for_failure,
            recording=RecordingOut(duration_s=call.recording.duration_s, bytes=call.recording.bytes)
            if call.recording
            else None,
        )


class CallSummaryOut(BaseModel):
    call_id: str
    state: CallState
    created_at: str
    updated_at: str
    failure_reason: str | None

    @classmethod
    def from_call(cls, call: Call) -> CallSummaryOut:
        return cls(
            call_id=call.call_id,
            state=call.state,
            created_at=call.created_at,
            updated_at=call.updated_at,
            failure_reason=call.reason_for_failure,
        )


class CallListOut(BaseModel):
    calls: list[CallSummaryOut]
    next_cursor: str | None = Field(description="Pass as `cursor` for the next page; null on the last page.")


class ErrorOut(BaseModel):
    error: str = Field(description="A stable machine-readable code.")
    message: str = Field(description="What went wrong, for a person.")
    details: list[dict[str, object]] | None = None


class HealthOut(BaseModel):
    status: Literal["ok"]

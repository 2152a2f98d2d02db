"""The v1 call routes: each validates, calls one service, and shapes the answer."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Coroutine
from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, Header, HTTPException, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, RedirectResponse
from fastapi.routing import APIRoute
from pydantic import BaseModel, Field

from callcore import services
from callcore.domain.model import CallState, Packet
from callcore.metrics import Metric
from callcore.ports import MAX_BATCHED_PACKET_BYTES
from ingest.deps import CallId, MetricsDep, PortsDep, require_api_key
from ingest.errors import (
    ERROR_MODEL_ANCHOR,
    INTERNAL,
    INVALID,
    NOT_FOUND,
    UNAUTHORIZED,
    UNAVAILABLE,
    error_responses,
)
from ingest.schemas import (
    MAX_BATCH_PACKETS,
    BatchAck,
    BatchIn,
    BatchResult,
    CallListOut,
    CallOut,
    CallSummaryOut,
    EndIn,
    EndOut,
    PacketAck,
    PacketIn,
)

logger = logging.getLogger(__name__)

# A packet stored and part of its call's work: accepted now, or a duplicate of one.
_STORED = (services.PacketOutcome.ACCEPTED, services.PacketOutcome.DUPLICATE)


class Utf8JsonRequest(Request):
    """A request whose body, read as JSON, must be UTF-8 JSON (RFC 8259, section 8.1).

    Starlette hands the bytes to ``json.loads``, which also guesses UTF-16 and UTF-32,
    and raises UnicodeDecodeError for bytes that are none of them, RecursionError for
    absurd nesting, ValueError for an integer of over 4300 digits: FastAPI answers those
    with an undocumented 400. Raised here as JSONDecodeError, every malformed body is
    FastAPI's 422 ``json_invalid`` instead, on uvicorn and through Mangum alike. A UTF-8
    byte order mark is still skipped.
    """

    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            body = await self.body()
            try:
                text = body.decode("utf-8-sig")
            except UnicodeDecodeError as exc:
                raise json.JSONDecodeError(f"the bytes are not UTF-8 ({exc.reason})", "", exc.start) from None
            try:
                self._json = json.loads(text)
            except json.JSONDecodeError:
                raise
            except RecursionError:
                raise json.JSONDecodeError("nested too deeply", text, 0) from None
            except ValueError:  # an integer of more digits than Python converts (sys.get_int_max_str_digits)
                raise json.JSONDecodeError("an integer has too many digits", text, 0) from None
        return self._json


class Utf8JsonRoute(APIRoute):
    """The routes' class: each reads its body through Utf8JsonRequest."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def with_utf8_json(request: Request) -> Response:
            return await handler(Utf8JsonRequest(request.scope, request.receive))

        return with_utf8_json


router = APIRouter(
    prefix="/v1",
    route_class=Utf8JsonRoute,
    dependencies=[Depends(require_api_key)],
    responses={**UNAUTHORIZED, **INVALID, **UNAVAILABLE, **INTERNAL},
)


@router.post(
    "/call/stream/{call_id}",
    status_code=202,
    response_model=PacketAck,
    summary="Store one audio packet of a call",
    responses={
        200: {
            "model": PacketAck,
            "description": "Duplicate: this sequence is stored with the same data. Nothing changed.",
        },
        202: {"description": "Stored durably. The first packet creates the call (IN_PROGRESS)."},
        **error_responses(
            (409, "This sequence is stored with different data, or the call is no longer IN_PROGRESS. Nothing stored."),
            (413, "`data` is larger than MAX_PACKET_BYTES. Nothing stored."),
        ),
    },
)
def stream_packet(call_id: CallId, packet: PacketIn, ports: PortsDep, metrics: MetricsDep) -> JSONResponse:
    size = len(packet.data.encode("utf-8"))
    if size > ports.settings.max_packet_bytes:
        raise HTTPException(
            status_code=413, detail=f"data is {size} bytes; the limit is {ports.settings.max_packet_bytes} bytes"
        )
    outcome = services.record_packet(
        ports.store,
        call_id,
        Packet(
            sequence=packet.sequence,
            data=packet.data,
            timestamp=packet.timestamp,
            audio_format=packet.audio_format,
        ),
    )
    # record_packet raises for a conflict or an ended call (409): only these two come back.
    accepted = outcome is services.PacketOutcome.ACCEPTED
    metrics.count(Metric.PACKETS_ACCEPTED if accepted else Metric.PACKETS_DUPLICATE)
    ack = PacketAck(call_id=call_id, sequence=packet.sequence, status="accepted" if accepted else "duplicate")
    return JSONResponse(status_code=202 if accepted else 200, content=ack.model_dump())


@router.post(
    "/call/stream/{call_id}/batch",
    status_code=200,
    response_model=BatchAck,
    summary="Store a batch of audio packets of a call",
    responses={
        200: {"description": "Each packet's outcome, in request order. Sending the same batch again is safe."},
        **error_responses(
            (
                413,
                f"More than {MAX_BATCH_PACKETS} packets, a packet's `data` over {MAX_BATCHED_PACKET_BYTES} bytes "
                "(or MAX_PACKET_BYTES if lower), or all of them over MAX_BATCH_BYTES. Nothing stored.",
            ),
        ),
    },
)
def stream_batch(call_id: CallId, batch: BatchIn, ports: PortsDep, metrics: MetricsDep) -> BatchAck:
    sizes = [len(p.data.encode("utf-8")) for p in batch.packets]
    limits = ports.settings
    if len(batch.packets) > MAX_BATCH_PACKETS:
        raise HTTPException(
            status_code=413, detail=f"{len(batch.packets)} packets; a batch holds at most {MAX_BATCH_PACKETS}"
        )
    packet_limit = min(limits.max_packet_bytes, MAX_BATCHED_PACKET_BYTES)
    if max(sizes) > packet_limit:
        at = sizes.index(max(sizes))
        raise HTTPException(
            status_code=413,
            detail=f"packets[{at}].data is {sizes[at]} bytes; a batched packet's limit is {packet_limit} bytes",
        )
    if sum(sizes) > limits.max_batch_bytes:
        raise HTTPException(
            status_code=413, detail=f"the batch's data is {sum(sizes)} bytes; the limit is {limits.max_batch_bytes}"
        )
    packets = [
        Packet(sequence=p.sequence, data=p.data, timestamp=p.timestamp, audio_format=p.audio_format)
        for p in batch.packets
    ]
    outcomes = services.record_packets(ports.store, call_id, packets)
    metrics.count(Metric.PACKETS_ACCEPTED, outcomes.count(services.PacketOutcome.ACCEPTED))
    metrics.count(Metric.PACKETS_DUPLICATE, outcomes.count(services.PacketOutcome.DUPLICATE))
    metrics.count(Metric.PACKETS_REFUSED, len(outcomes) - sum(o in _STORED for o in outcomes))
    return BatchAck(
        call_id=call_id,
        results=[BatchResult(sequence=p.sequence, status=o.value) for p, o in zip(packets, outcomes, strict=True)],
    )


@router.post(
    "/call/{call_id}/end",
    status_code=202,
    response_model=EndOut,
    summary="End a call and queue its AI work",
    responses={
        200: {"model": EndOut, "description": "The call had already finished (COMPLETED, FAILED or ARCHIVED)."},
        202: {"description": "The call is PROCESSING_AI; its one work item is queued. Repeating the end is safe."},
        **NOT_FOUND,
    },
)
def end_call(
    call_id: CallId, ports: PortsDep, metrics: MetricsDep, body: Annotated[EndIn | None, Body()] = None
) -> JSONResponse:
    outcome = services.end_call(ports.store, ports.queue, call_id, body.last_sequence if body else None)
    metrics.count(Metric.CALLS_ENDED, int(outcome.moved))
    return JSONResponse(
        status_code=202 if outcome.processing else 200,
        content=EndOut(call_id=call_id, state=outcome.state).model_dump(),
    )


@router.post(
    "/call/{call_id}/retry",
    status_code=202,
    response_model=EndOut,
    summary="Retry a FAILED call's AI processing",
    responses={
        202: {"description": "FAILED -> PROCESSING_AI; a new work item is queued. The attempt history stays."},
        **NOT_FOUND,
        **error_responses((409, "The call is not FAILED.")),
    },
)
def retry_call(call_id: CallId, ports: PortsDep) -> EndOut:
    call = services.retry_call(ports.store, ports.queue, call_id)
    return EndOut(call_id=call_id, state=call.state)


@router.get(
    "/call/{call_id}",
    response_model=CallOut,
    summary="A call's state, packets and AI results",
    responses=ERROR_MODEL_ANCHOR,
)
def get_call(call_id: CallId, ports: PortsDep) -> CallOut:
    return CallOut.from_details(services.get_call(ports.store, ports.archive, call_id))


@router.post(
    "/call/{call_id}/archive",
    status_code=200,
    response_model=EndOut,
    summary="Archive a finished call now",
    responses={
        200: {
            "description": (
                "COMPLETED or FAILED -> ARCHIVED (or already ARCHIVED): the call's record is kept beside its "
                "recording, its packets leave with their TTL, and GET still shows it."
            )
        },
        **NOT_FOUND,
        **error_responses((409, "The call is IN_PROGRESS or PROCESSING_AI.")),
    },
)
def archive_call(call_id: CallId, ports: PortsDep, metrics: MetricsDep) -> EndOut:
    was = ports.store.get_call(call_id)
    call = services.archive_call(ports.store, ports.archive, call_id)
    metrics.count(Metric.CALLS_ARCHIVED, int(was is not None and was.state is not call.state))
    return EndOut(call_id=call_id, state=call.state)


# What a presigned recording URL is good for: long enough to start a download or a
# player, short enough that a leaked URL soon stops working.
RECORDING_URL_EXPIRES_S = 300


class RecordingLinkOut(BaseModel):
    url: str = Field(description="A presigned S3 URL of the WAV file: it needs no credentials until it expires.")
    expires_s: int = Field(description="Seconds the URL stays valid.")


def accepts_json(accept: str | None) -> bool:
    """Whether an Accept header names application/json with a weight above 0 (RFC 9110 12.5.1)."""
    for media_range in (accept or "").split(","):
        kind, _, params = media_range.partition(";")
        if kind.strip().lower() != "application/json":
            continue
        weight = 1.0
        for param in params.split(";"):
            name, _, value = param.partition("=")
            if name.strip().lower() == "q":
                try:
                    weight = float(value)
                except ValueError:
                    weight = 0.0  # unreadable: not asked for
        if weight > 0:
            return True
    return False


@router.get(
    "/call/{call_id}/recording",
    summary="The call's recording, as a WAV file",
    response_class=Response,
    responses={
        200: {
            "content": {
                "audio/wav": {"schema": {"type": "string", "format": "binary"}},
                "application/json": {"schema": RecordingLinkOut.model_json_schema()},
            },
            "description": (
                "Local stack: the WAV file (mono 16-bit PCM), served by the app. On AWS, when `Accept` names "
                "`application/json`: the presigned URL as JSON, for a client that cannot follow a redirect "
                "with its API key (a browser page: the console's player)."
            ),
        },
        307: {
            "description": (
                f"On AWS: a presigned S3 URL for the WAV file in `Location`, valid {RECORDING_URL_EXPIRES_S} s."
            ),
            "headers": {"Location": {"schema": {"type": "string"}, "description": "The presigned URL."}},
        },
        **error_responses((404, "No call with this call_id, the call has no recording yet, or it has expired.")),
    },
)
def get_recording(
    call_id: CallId,
    ports: PortsDep,
    accept: Annotated[str | None, Header(description="`application/json`: on AWS, the URL as JSON.")] = None,
) -> Response:
    recording = services.get_recording(ports.store, call_id)
    if ports.settings.recording_download == "inline":
        wav = ports.recordings.read(recording)
        return Response(content=wav, media_type="audio/wav")
    url = ports.recordings.download_url(recording, expires_s=RECORDING_URL_EXPIRES_S)
    if accepts_json(accept):
        # A browser's fetch follows a 307 itself, sending X-API-Key on to S3, whose CORS
        # preflight then fails: a page asks for the URL instead and plays it directly.
        return JSONResponse(RecordingLinkOut(url=url, expires_s=RECORDING_URL_EXPIRES_S).model_dump())
    return RedirectResponse(url, status_code=307)


@router.get("/calls", response_model=CallListOut, summary="Calls in one state, most recently changed first")
def list_calls(
    ports: PortsDep,
    state: Annotated[CallState, Query(description="Only calls in this state.")],
    limit: Annotated[int, Query(ge=1, le=100)] = 50,
    cursor: Annotated[str | None, Query(max_length=2048, description="next_cursor of the previous page.")] = None,
) -> CallListOut:
    try:
        page = services.list_calls(ports.store, state, limit=limit, cursor=cursor)
    except ValueError as exc:
        if not cursor:  # not the client's cursor: a fault of ours, the 500 handler's
            raise
        logger.info("refused a cursor for %s: %s", state.value, exc)
        raise _invalid_cursor() from exc
    return CallListOut(calls=[CallSummaryOut.from_call(c) for c in page.calls], next_cursor=page.next_cursor)


class StateCountOut(BaseModel):
    state: CallState
    count: int = Field(description=f"Calls in this state, counted up to {services.COUNT_UP_TO}.")
    more: bool = Field(description="True when the state holds more calls than `count`.")


class CallCountsOut(BaseModel):
    counts: list[StateCountOut] = Field(description="One per state.")


@router.get(
    "/calls/counts",
    response_model=CallCountsOut,
    summary=f"How many calls each state holds (each count stops at {services.COUNT_UP_TO})",
)
def count_calls(ports: PortsDep) -> CallCountsOut:
    return CallCountsOut(
        counts=[StateCountOut(state=c.state, count=c.count, more=c.more) for c in services.count_calls(ports.store)]
    )


def _invalid_cursor() -> Exception:
    # A fixed message: whatever refused the cursor (our decoding, or DynamoDB) is not the client's business.
    message = "cursor is not one this API returned for this state; list again without it"
    return RequestValidationError([{"loc": ("query", "cursor"), "msg": message, "type": "value_error"}])

"""A call's recording, over HTTP against the real app and moto's S3: stored once by the
worker, shown on GET, served as a WAV locally and by a presigned URL on AWS."""

from __future__ import annotations

import asyncio
import base64
import io
import wave
from collections.abc import Iterator
from dataclasses import replace

import httpx
import pytest

from ai_worker.handler import audio_limits
from callcore import services
from callcore.bootstrap import AwsClients, Ports
from callcore.domain.errors import RetryableAIError
from callcore.domain.model import WorkItem
from tests.conftest import LiveServer
from tests.fakes import FakeAIProvider

FRAME = base64.b64encode(bytes(range(96, 256))).decode()  # 160 mu-law samples: 20 ms


def stream_and_end(api: httpx.Client, call_id: str, sequences: list[int]) -> None:
    for seq in sequences:
        body = {"sequence": seq, "data": FRAME, "timestamp": seq * 0.02}
        assert api.post(f"/v1/call/stream/{call_id}", json=body).status_code == 202
    assert api.post(f"/v1/call/{call_id}/end").status_code == 202


def work(ports: Ports, call_id: str, ai: FakeAIProvider | None = None) -> services.ProcessOutcome:
    item = WorkItem(call_id=call_id, round=1)
    limits = audio_limits(ports.settings)
    return asyncio.run(
        services.process_call(ports.store, ai or FakeAIProvider(), ports.recordings, ports.queue, item, limits=limits)
    )


def test_get_shows_the_recording_once_the_worker_stored_it_and_serves_it_as_a_wav(
    api: httpx.Client, ports: Ports, aws_clients: AwsClients, call_id: str
) -> None:
    stream_and_end(api, call_id, [0, 1, 2, 4])  # 3 is missing: 20 ms of silence
    assert api.get(f"/v1/call/{call_id}").json()["recording"] is None
    before = api.get(f"/v1/call/{call_id}/recording")
    assert before.status_code == 404
    assert before.json()["error"] == "recording_not_found"

    assert work(ports, call_id) is services.ProcessOutcome.COMPLETED

    shown = api.get(f"/v1/call/{call_id}").json()["recording"]
    served = api.get(f"/v1/call/{call_id}/recording")
    assert served.status_code == 200
    assert served.headers["content-type"] == "audio/wav"
    with wave.open(io.BytesIO(served.content)) as wav:
        assert (wav.getframerate(), wav.getnchannels(), wav.getsampwidth(), wav.getnframes()) == (8000, 1, 2, 800)
    assert shown == {"duration_s": 0.1, "bytes": len(served.content)}
    # One object, under the call's own prefix.
    listed = aws_clients.s3.list_objects_v2(Bucket=ports.settings.recordings_bucket, Prefix=f"calls/{call_id}/")
    assert [o["Key"] for o in listed["Contents"]] == [f"calls/{call_id}/recording.wav"]


def test_a_redelivered_work_item_leaves_the_one_recording_unchanged(
    api: httpx.Client, ports: Ports, aws_clients: AwsClients, call_id: str
) -> None:
    stream_and_end(api, call_id, [0, 1])
    ai = FakeAIProvider({call_id: [RetryableAIError("HTTP 503", status=503)]})
    with pytest.raises(RetryableAIError):
        work(ports, call_id, ai)  # the first attempt stores the recording, then the AI fails
    bucket, key = ports.settings.recordings_bucket, f"calls/{call_id}/recording.wav"
    # Mark the stored object: a worker that wrote it again would drop the mark.
    first = aws_clients.s3.head_object(Bucket=bucket, Key=key)
    aws_clients.s3.copy_object(
        Bucket=bucket,
        Key=key,
        CopySource={"Bucket": bucket, "Key": key},
        Metadata={**first["Metadata"], "mark": "first-attempt"},
        MetadataDirective="REPLACE",
        ContentType="audio/wav",
    )

    assert work(ports, call_id, ai) is services.ProcessOutcome.COMPLETED  # the redelivery

    second = aws_clients.s3.head_object(Bucket=bucket, Key=key)
    assert second["Metadata"]["mark"] == "first-attempt"
    assert aws_clients.s3.list_objects_v2(Bucket=bucket, Prefix=f"calls/{call_id}/")["KeyCount"] == 1
    assert api.get(f"/v1/call/{call_id}").json()["recording"]["bytes"] == first["ContentLength"]


def test_the_recording_of_an_unknown_call_is_a_call_not_found(api: httpx.Client) -> None:
    response = api.get("/v1/call/no-such-call/recording")

    assert response.status_code == 404
    assert response.json()["error"] == "call_not_found"


@pytest.fixture
def redirecting_api(ports: Ports) -> Iterator[httpx.Client]:
    """The app as deployed on AWS (RECORDING_DOWNLOAD=redirect)."""
    from ingest.app import create_app

    app = create_app(replace(ports, settings=replace(ports.settings, recording_download="redirect")))
    with LiveServer(app) as server, httpx.Client(base_url=server.url, timeout=30) as client:
        yield client


def test_on_aws_the_recording_is_a_307_to_a_presigned_url_that_fetches_the_wav(
    api: httpx.Client, redirecting_api: httpx.Client, ports: Ports, call_id: str
) -> None:
    stream_and_end(api, call_id, [0, 1, 2])
    work(ports, call_id)

    response = redirecting_api.get(f"/v1/call/{call_id}/recording")

    assert response.status_code == 307
    location = response.headers["location"]
    assert f"calls/{call_id}/recording.wav" in location and "X-Amz-Signature=" in location
    fetched = httpx.get(location)  # no credentials: the signature is the permission
    assert fetched.status_code == 200
    assert fetched.content == api.get(f"/v1/call/{call_id}/recording").content


def test_on_aws_a_client_that_asks_for_json_gets_the_presigned_url_in_the_body(
    api: httpx.Client, redirecting_api: httpx.Client, ports: Ports, call_id: str
) -> None:
    stream_and_end(api, call_id, [0, 1, 2])
    work(ports, call_id)

    response = redirecting_api.get(
        f"/v1/call/{call_id}/recording", headers={"Accept": "application/json, audio/wav;q=0.9"}
    )

    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    link = response.json()
    assert link["expires_s"] == 300
    assert "X-Amz-Signature=" in link["url"]
    assert httpx.get(link["url"]).content == api.get(f"/v1/call/{call_id}/recording").content
    # JSON refused (q=0), or not named: the redirect, as before.
    for accept in ("application/json;q=0, */*", "*/*", "audio/wav"):
        assert redirecting_api.get(f"/v1/call/{call_id}/recording", headers={"Accept": accept}).status_code == 307


def test_locally_the_recording_is_the_wav_whatever_the_accept_header(
    api: httpx.Client, ports: Ports, call_id: str
) -> None:
    stream_and_end(api, call_id, [0, 1, 2])
    work(ports, call_id)

    response = api.get(f"/v1/call/{call_id}/recording", headers={"Accept": "application/json, audio/wav;q=0.9"})

    assert response.status_code == 200
    assert response.headers["content-type"] == "audio/wav"
    assert response.content.startswith(b"RIFF")


def test_a_recording_past_its_retention_is_a_404_saying_it_expired(
    api: httpx.Client, ports: Ports, aws_clients: AwsClients, call_id: str
) -> None:
    stream_and_end(api, call_id, [0, 1])
    work(ports, call_id)
    # S3's lifecycle rule removes it after RecordingRetentionDays; the call still notes it.
    key = f"calls/{call_id}/recording.wav"
    aws_clients.s3.delete_object(Bucket=ports.settings.recordings_bucket, Key=key)

    response = api.get(f"/v1/call/{call_id}/recording")

    assert response.status_code == 404
    assert response.json()["error"] == "recording_expired"
    assert "RecordingRetentionDays" in response.json()["message"]
    assert api.get(f"/v1/call/{call_id}").json()["recording"] is not None

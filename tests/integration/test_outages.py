"""Dependency faults: a 503 with Retry-After, never a bare 500, and nothing half-written."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace

import boto3
import httpx
import pytest

from ai_worker import sweeper
from callcore.adapters.sqs_queue import SQSWorkQueue
from callcore.bootstrap import CLIENT_CONFIG, AwsClients, Ports, build_ports
from callcore.domain.model import CallState
from devstack.moto_process import free_port
from tests.conftest import LiveServer, MotoStack, start_moto_stack
from tests.integration.helpers import audio_data, drain_queue, packet, stored_packets
from tests.integration.tcp_proxy import TcpProxy


@pytest.fixture
def own_stack() -> Iterator[MotoStack]:
    """A moto server of this test's own, so stopping it disturbs no other test."""
    ms = start_moto_stack()
    try:
        yield ms
    finally:
        ms.moto.stop()


def _assert_503(response: httpx.Response) -> None:
    assert response.status_code == 503
    assert int(response.headers["Retry-After"]) >= 1
    body = response.json()
    assert body["error"] == "dependency_unavailable"
    assert "Retry" in body["message"]


def test_stopping_moto_mid_test_gives_503_with_retry_after_on_every_route(
    own_stack: MotoStack, call_id: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", own_stack.moto.endpoint)
    ports = build_ports(own_stack.settings())
    from ingest.app import create_app

    with LiveServer(create_app(ports)) as server, httpx.Client(base_url=server.url, timeout=60) as api:
        assert api.post(f"/v1/call/stream/{call_id}", json=packet(0)).status_code == 202
        own_stack.moto.stop()
        _assert_503(api.post(f"/v1/call/stream/{call_id}", json=packet(1)))
        _assert_503(api.post(f"/v1/call/{call_id}/end"))
        _assert_503(api.get(f"/v1/call/{call_id}"))
        _assert_503(api.get("/v1/calls", params={"state": "IN_PROGRESS"}))
        assert api.get("/healthz").status_code == 200


def test_an_outage_mid_test_leaves_nothing_half_written(
    ports: Ports, api: httpx.Client, aws_clients: AwsClients, call_id: str
) -> None:
    # GIVEN the app reaching DynamoDB and SQS through a proxy in front of the moto server
    proxy = TcpProxy(target_port=_moto_port(ports)).start()
    through_proxy = build_ports(ports.settings, endpoint_url=proxy.endpoint)
    from ingest.app import create_app

    with LiveServer(create_app(through_proxy)) as server, httpx.Client(base_url=server.url, timeout=60) as cut_api:
        assert cut_api.post(f"/v1/call/stream/{call_id}", json=packet(0)).status_code == 202
        # WHEN both dependencies become unreachable
        proxy.cut()
        _assert_503(cut_api.post(f"/v1/call/stream/{call_id}", json=packet(1)))
        _assert_503(cut_api.post(f"/v1/call/{call_id}/end"))
    # THEN, seen directly on moto, the call is as the last success left it
    assert stored_packets(ports, call_id) == {0: audio_data(0)}
    assert api.get(f"/v1/call/{call_id}").json()["state"] == "IN_PROGRESS"
    assert [b for b in drain_queue(aws_clients, ports.settings.work_queue_url) if b["call_id"] == call_id] == []


def test_sqs_down_at_end_leaves_the_call_ended_and_the_sweeper_sends_its_work_item(
    ports: Ports, api: httpx.Client, aws_clients: AwsClients, call_id: str
) -> None:
    dead_sqs = boto3.session.Session(aws_access_key_id="t", aws_secret_access_key="t", region_name="us-east-1").client(
        "sqs", endpoint_url=f"http://127.0.0.1:{free_port()}", config=CLIENT_CONFIG
    )
    broken = replace(ports, queue=SQSWorkQueue(dead_sqs, ports.settings.work_queue_url))
    from ingest.app import create_app

    queue_url = ports.settings.work_queue_url
    assert api.post(f"/v1/call/stream/{call_id}", json=packet(0)).status_code == 202
    with LiveServer(create_app(broken)) as server, httpx.Client(base_url=server.url, timeout=60) as broken_api:
        # The end is accepted: the call has ended, and its work item is the sweeper's to send.
        assert broken_api.post(f"/v1/call/{call_id}/end").status_code == 202
    call = ports.store.get_call(call_id)
    assert call is not None
    assert (call.state, call.round, call.enqueued_round) == (CallState.PROCESSING_AI, 1, 0)
    assert [b for b in drain_queue(aws_clients, queue_url) if b["call_id"] == call_id] == []
    assert api.post(f"/v1/call/stream/{call_id}", json=packet(1)).status_code == 409
    # The sweeper, once no request can still be sending it, sends it: once.
    sweep = sweeper.build_handler(
        ports.store, ports.queue, replace(ports.settings, work_resend_after_s=0.0, processing_timeout_s=3600.0)
    )
    assert sweep({}, None)["resent"] >= 1
    assert [b for b in drain_queue(aws_clients, queue_url) if b["call_id"] == call_id] == [
        {"call_id": call_id, "round": 1}
    ]
    sweep({}, None)
    assert [b for b in drain_queue(aws_clients, queue_url) if b["call_id"] == call_id] == []
    assert stored_packets(ports, call_id) == {0: audio_data(0)}


def _moto_port(ports: Ports) -> int:
    return int(ports.settings.work_queue_url.split(":")[2].split("/")[0])

"""The ingest function's metrics, one EMF line a request, read back from what the app prints."""

from __future__ import annotations

import httpx
import pytest

from tests.integration.helpers import b64, packet
from tests.unit.test_metrics import emf_lines, totals


def test_each_request_writes_its_counts_of_packets_and_ends(
    api: httpx.Client, call_id: str, capsys: pytest.CaptureFixture[str]
) -> None:
    capsys.readouterr()

    api.post(f"/v1/call/stream/{call_id}", json=packet(0))  # accepted
    api.post(f"/v1/call/stream/{call_id}", json=packet(0))  # duplicate
    api.post(f"/v1/call/stream/{call_id}", json=packet(0, b64("other")))  # conflict: refused
    batch = {"packets": [packet(1), packet(0), packet(2, b64("x")), packet(2, b64("y"))]}
    api.post(f"/v1/call/stream/{call_id}/batch", json=batch)  # 2 accepted, 1 duplicate, 1 conflict
    api.post(f"/v1/call/{call_id}/end")
    api.post(f"/v1/call/{call_id}/end")  # a repeat: not another end
    api.post(f"/v1/call/stream/{call_id}", json=packet(9))  # after the end: refused
    api.get(f"/v1/call/{call_id}")  # counts nothing, writes nothing

    lines = emf_lines(capsys)
    assert len(lines) == 6  # one a request that counted something
    sums = totals(lines, "IngestFunction")
    assert {k: sums[k] for k in ("PacketsAccepted", "PacketsDuplicate", "PacketsRefused", "CallsEnded")} == {
        "PacketsAccepted": 3,
        "PacketsDuplicate": 2,
        "PacketsRefused": 3,
        "CallsEnded": 1,
    }

"""The HTTP API as DESIGN.md specifies it, over real HTTP against the app and a moto server."""

from __future__ import annotations

import httpx
import pytest

from callcore.bootstrap import Ports
from tests.integration.helpers import packet, stored_packets


def test_first_packet_creates_the_call_in_progress(api: httpx.Client, call_id: str) -> None:
    response = api.post(f"/v1/call/stream/{call_id}", json=packet(0))
    assert response.status_code == 202
    assert response.json() == {"call_id": call_id, "sequence": 0, "status": "accepted"}
    call = api.get(f"/v1/call/{call_id}").json()
    assert call["state"] == "IN_PROGRESS"
    assert call["packets"] == {
        "received": 1,
        "duplicates": 0,
        "out_of_order": 0,
        "highest_sequence": 0,
        "missing": [],
        "missing_count": 0,
    }


def test_same_packet_again_is_a_duplicate_that_changes_only_the_count(
    api: httpx.Client, ports: Ports, call_id: str
) -> None:
    assert api.post(f"/v1/call/stream/{call_id}", json=packet(1)).status_code == 202
    again = api.post(f"/v1/call/stream/{call_id}", json=packet(1, timestamp=9.0))
    assert again.status_code == 200
    assert again.json()["status"] == "duplicate"
    assert stored_packets(ports, call_id) == {1: "audio-1"}
    assert api.get(f"/v1/call/{call_id}").json()["packets"]["duplicates"] == 1


def test_same_sequence_with_other_data_is_409_and_the_stored_packet_is_unchanged(
    api: httpx.Client, ports: Ports, call_id: str
) -> None:
    api.post(f"/v1/call/stream/{call_id}", json=packet(1, data="original"))
    response = api.post(f"/v1/call/stream/{call_id}", json=packet(1, data="different"))
    assert response.status_code == 409
    assert response.json()["error"] == "sequence_conflict"
    assert "different data" in response.json()["message"]
    assert stored_packets(ports, call_id) == {1: "original"}


def test_gaps_are_reported_and_a_late_packet_removes_itself(api: httpx.Client, call_id: str) -> None:
    for seq in (1, 2, 5, 3):
        assert api.post(f"/v1/call/stream/{call_id}", json=packet(seq)).status_code == 202
    stats = api.get(f"/v1/call/{call_id}").json()["packets"]
    assert stats["missing"] == [4]
    assert stats["out_of_order"] == 1  # 3 arrived after 5
    assert stats["highest_sequence"] == 5
    assert api.post(f"/v1/call/stream/{call_id}", json=packet(4)).status_code == 202
    stats = api.get(f"/v1/call/{call_id}").json()["packets"]
    assert stats["missing"] == []
    assert stats["received"] == 5
    assert stats["out_of_order"] == 2


def test_end_with_last_sequence_reports_the_missing_tail(api: httpx.Client, call_id: str) -> None:
    api.post(f"/v1/call/stream/{call_id}", json=packet(0))
    api.post(f"/v1/call/stream/{call_id}", json=packet(1))
    response = api.post(f"/v1/call/{call_id}/end", json={"last_sequence": 3})
    assert response.status_code == 202
    call = api.get(f"/v1/call/{call_id}").json()
    assert call["packets"]["missing"] == [2, 3]
    assert call["last_sequence"] == 3


def test_end_moves_the_call_to_processing_and_repeating_it_is_202(api: httpx.Client, call_id: str) -> None:
    api.post(f"/v1/call/stream/{call_id}", json=packet(0))
    first = api.post(f"/v1/call/{call_id}/end")
    assert first.status_code == 202
    assert first.json() == {"call_id": call_id, "state": "PROCESSING_AI"}
    again = api.post(f"/v1/call/{call_id}/end")
    assert again.status_code == 202
    assert again.json()["state"] == "PROCESSING_AI"


def test_packet_after_end_is_409_and_not_stored(api: httpx.Client, ports: Ports, call_id: str) -> None:
    api.post(f"/v1/call/stream/{call_id}", json=packet(0))
    api.post(f"/v1/call/{call_id}/end")
    response = api.post(f"/v1/call/stream/{call_id}", json=packet(1))
    assert response.status_code == 409
    assert response.json()["error"] == "call_not_in_progress"
    assert "PROCESSING_AI" in response.json()["message"]
    assert stored_packets(ports, call_id) == {0: "audio-0"}


def test_end_of_a_finished_call_is_200_with_its_state(api: httpx.Client, ports: Ports, call_id: str) -> None:
    from callcore.clock import now_iso
    from callcore.domain.model import CallState

    api.post(f"/v1/call/stream/{call_id}", json=packet(0))
    api.post(f"/v1/call/{call_id}/end")
    ports.store.transition(call_id, source=CallState.PROCESSING_AI, target=CallState.COMPLETED, now=now_iso())
    response = api.post(f"/v1/call/{call_id}/end")
    assert response.status_code == 200
    assert response.json() == {"call_id": call_id, "state": "COMPLETED"}


@pytest.mark.parametrize(
    ("method", "path"),
    [("GET", "/v1/call/{id}"), ("POST", "/v1/call/{id}/end")],
)
def test_unknown_call_is_404(api: httpx.Client, call_id: str, method: str, path: str) -> None:
    response = api.request(method, path.format(id=call_id))
    assert response.status_code == 404
    assert response.json() == {"error": "call_not_found", "message": f"call {call_id!r} does not exist"}


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"sequence": -1, "data": "x", "timestamp": 1.0}, "sequence"),
        ({"sequence": "1", "data": "x", "timestamp": 1.0}, "sequence"),
        ({"sequence": 1.5, "data": "x", "timestamp": 1.0}, "sequence"),
        ({"sequence": True, "data": "x", "timestamp": 1.0}, "sequence"),
        ({"sequence": 1, "data": 5, "timestamp": 1.0}, "data"),
        ({"sequence": 1, "data": "x", "timestamp": "noon"}, "timestamp"),
        ({"sequence": 1, "data": "x"}, "timestamp"),
        ({"data": "x", "timestamp": 1.0}, "sequence"),
    ],
)
def test_invalid_packet_is_422_naming_the_field_and_nothing_is_stored(
    api: httpx.Client, ports: Ports, call_id: str, body: dict[str, object], field: str
) -> None:
    response = api.post(f"/v1/call/stream/{call_id}", json=body)
    assert response.status_code == 422
    assert response.json()["error"] == "invalid_request"
    assert f"body.{field}" in response.json()["message"]
    assert api.get(f"/v1/call/{call_id}").status_code == 404


@pytest.mark.parametrize("raw", ["NaN", "Infinity", "-Infinity", "1e999"])
def test_non_finite_timestamp_is_422(api: httpx.Client, call_id: str, raw: str) -> None:
    body = '{"sequence": 1, "data": "x", "timestamp": ' + raw + "}"
    response = api.post(f"/v1/call/stream/{call_id}", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 422
    assert "body.timestamp" in response.json()["message"]


def test_malformed_json_is_422(api: httpx.Client, call_id: str) -> None:
    response = api.post(
        f"/v1/call/stream/{call_id}", content=b'{"sequence": 1,', headers={"content-type": "application/json"}
    )
    assert response.status_code == 422
    assert "JSON" in response.json()["message"]


def test_json_sent_as_form_data_is_still_read_as_json(api: httpx.Client, call_id: str) -> None:
    body = b'{"sequence": 0, "data": "x", "timestamp": 1.0}'
    headers = {"content-type": "application/x-www-form-urlencoded"}
    assert api.post(f"/v1/call/stream/{call_id}", content=body, headers=headers).status_code == 202


@pytest.mark.parametrize("bad_id", ["has space", "a/b", "x" * 129, "caf\u00e9"])
def test_bad_call_id_is_422(api: httpx.Client, bad_id: str) -> None:
    response = api.post(f"/v1/call/stream/{httpx.URL(bad_id)}", json=packet(0))
    if response.status_code == 404:  # a slash makes it another path: still refused, never stored
        assert response.json()["error"] == "not_found"
        return
    assert response.status_code == 422
    assert "path.call_id" in response.json()["message"]


def test_oversized_data_is_413_and_not_stored(api: httpx.Client, ports: Ports, call_id: str) -> None:
    limit = ports.settings.max_packet_bytes
    response = api.post(f"/v1/call/stream/{call_id}", json=packet(0, data="a" * (limit + 1)))
    assert response.status_code == 413
    assert str(limit) in response.json()["message"]
    assert api.get(f"/v1/call/{call_id}").status_code == 404
    assert api.post(f"/v1/call/stream/{call_id}", json=packet(0, data="a" * limit)).status_code == 202


def test_list_calls_by_state_most_recent_first_with_pagination(api: httpx.Client, call_id: str) -> None:
    ids = [f"{call_id}-{i}" for i in range(3)]
    for cid in ids:
        api.post(f"/v1/call/stream/{cid}", json=packet(0))
        api.post(f"/v1/call/{cid}/end")
    seen: list[str] = []
    cursor = None
    while True:
        params: dict[str, str | int] = {"state": "PROCESSING_AI", "limit": 2, **({"cursor": cursor} if cursor else {})}
        page = api.get("/v1/calls", params=params).json()
        seen += [c["call_id"] for c in page["calls"]]
        assert all(c["state"] == "PROCESSING_AI" for c in page["calls"])
        cursor = page["next_cursor"]
        if cursor is None:
            break
    mine = [cid for cid in seen if cid in ids]
    assert mine == list(reversed(ids))
    assert len(seen) == len(set(seen))


@pytest.mark.parametrize(
    "params",
    [{"state": "SLEEPING"}, {}, {"state": "FAILED", "limit": 0}, {"state": "FAILED", "cursor": "not-a-cursor"}],
)
def test_bad_list_query_is_422(api: httpx.Client, params: dict[str, str | int]) -> None:
    response = api.get("/v1/calls", params=params)
    assert response.status_code == 422
    assert response.json()["message"]


def test_healthz(api: httpx.Client) -> None:
    assert api.get("/healthz").json() == {"status": "ok"}


def test_openapi_documents_every_status(api: httpx.Client) -> None:
    paths = api.get("/openapi.json").json()["paths"]
    stream = paths["/v1/call/stream/{call_id}"]["post"]["responses"]
    assert {"200", "202", "401", "409", "413", "422", "503"} <= set(stream)
    end = paths["/v1/call/{call_id}/end"]["post"]["responses"]
    assert {"200", "202", "404", "422", "503"} <= set(end)
    assert {"200", "404", "422", "503"} <= set(paths["/v1/call/{call_id}"]["get"]["responses"])
    assert {"200", "422", "503"} <= set(paths["/v1/calls"]["get"]["responses"])
    assert {"202", "404", "409", "422", "503"} <= set(paths["/v1/call/{call_id}/retry"]["post"]["responses"])
    assert api.get("/docs").status_code == 200


def test_unknown_route_is_a_json_404(api: httpx.Client) -> None:
    response = api.get("/v1/nothing-here")
    assert response.status_code == 404
    assert response.json()["error"] == "not_found"


def test_timestamp_beyond_the_supported_range_is_422(api: httpx.Client, call_id: str) -> None:
    for timestamp in (1e300, -1.0):
        response = api.post(f"/v1/call/stream/{call_id}", json=packet(0, timestamp=timestamp))
        assert response.status_code == 422
        assert "body.timestamp" in response.json()["message"]
    assert api.post(f"/v1/call/stream/{call_id}", json=packet(0, timestamp=1e-300)).status_code == 202


def test_data_with_an_unpaired_surrogate_is_422(api: httpx.Client, call_id: str) -> None:
    body = b'{"sequence": 0, "data": "\\ud800", "timestamp": 1.0}'
    response = api.post(f"/v1/call/stream/{call_id}", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 422
    assert "surrogate" in response.json()["message"]


@pytest.mark.parametrize(
    "key",
    [
        {"call_id": {"S": 5}},
        {},
        {"call_id": {"S": "a"}, "state": {"S": "FAILED"}, "updated_at": {"S": "x"}},
        {"call_id": {"S": "a b"}, "state": {"S": "COMPLETED"}, "updated_at": {"S": "x"}},
    ],
)
def test_a_forged_cursor_is_422_not_a_dependency_error(api: httpx.Client, key: dict[str, object]) -> None:
    import base64
    import json

    cursor = base64.urlsafe_b64encode(json.dumps(key).encode()).decode()
    response = api.get("/v1/calls", params={"state": "COMPLETED", "cursor": cursor})
    assert response.status_code == 422
    assert "cursor" in response.json()["message"]

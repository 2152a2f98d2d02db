"""The HTTP API as the README documents it, over real HTTP against the app and a moto server."""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from types import SimpleNamespace
from typing import Any

import boto3
import httpx
import pytest
from mangum import Mangum

from callcore.adapters.dynamodb_store import DynamoDBCallStore
from callcore.bootstrap import CLIENT_CONFIG, Ports
from callcore.domain.model import MAX_SEQUENCE
from tests.conftest import LiveServer
from tests.integration.helpers import audio_data, http_api_event, packet, stored_packets
from tests.integration.test_lambda_handler import LAMBDA_CONTEXT


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
    assert stored_packets(ports, call_id) == {1: audio_data(1)}
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
    assert stored_packets(ports, call_id) == {0: audio_data(0)}


def test_end_of_a_finished_call_is_200_with_its_state(api: httpx.Client, ports: Ports, call_id: str) -> None:
    from callcore.clock import now_iso
    from callcore.domain.model import CallState, transition_rule
    from callcore.services import new_token

    api.post(f"/v1/call/stream/{call_id}", json=packet(0))
    api.post(f"/v1/call/{call_id}/end")
    rule = transition_rule(call_id, CallState.PROCESSING_AI, CallState.COMPLETED)
    ports.store.transition(call_id, rule, now=now_iso(), token=new_token())
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
        ({"sequence": False, "data": "x", "timestamp": 1.0}, "sequence"),
        ({"sequence": 12282.5, "data": "x", "timestamp": 1.0}, "sequence"),
        ({"sequence": "12282", "data": "x", "timestamp": 1.0}, "sequence"),
        ({"sequence": -1.0, "data": "x", "timestamp": 1.0}, "sequence"),
        ({"sequence": MAX_SEQUENCE + 1, "data": "x", "timestamp": 1.0}, "sequence"),
        ({"sequence": float(2**53), "data": "x", "timestamp": 1.0}, "sequence"),
        ({"sequence": 1e300, "data": "x", "timestamp": 1.0}, "sequence"),
        ({"sequence": None, "data": "x", "timestamp": 1.0}, "sequence"),
        ({"sequence": 1, "data": 5, "timestamp": 1.0}, "data"),
        ({"sequence": 1, "data": "x", "timestamp": "noon"}, "timestamp"),
        ({"sequence": 1, "data": "x", "timestamp": "1700000000"}, "timestamp"),
        ({"sequence": 1, "data": "x", "timestamp": True}, "timestamp"),
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


MALFORMED_BODIES = {
    "truncated": b'{"sequence": 1,',
    "not JSON": b"sequence=1&data=x",
    "bytes that are no UTF-8": b'\xff\xfe{"sequence": 1}',
    "Latin-1 text": '{"sequence": 0, "data": "caf\u00e9", "timestamp": 1.0}'.encode("latin-1"),
    "UTF-16 JSON": '{"sequence": 0, "data": "x", "timestamp": 1.0}'.encode("utf-16"),
    "nested past any parser's depth": b"[" * 100_000 + b"]" * 100_000,
    "an integer of 5000 digits": b'{"sequence": ' + b"1" * 5000 + b', "data": "x", "timestamp": 1}',
}


def _assert_malformed_body_422(response: httpx.Response) -> None:
    assert response.status_code == 422, response.text
    body = response.json()
    assert body["error"] == "invalid_request"
    assert body["message"].startswith("body: not valid JSON")
    assert body["details"][0]["type"] == "json_invalid"


@pytest.mark.parametrize("raw", MALFORMED_BODIES.values(), ids=MALFORMED_BODIES.keys())
def test_malformed_json_is_422_and_nothing_is_stored(api: httpx.Client, call_id: str, raw: bytes) -> None:
    response = api.post(f"/v1/call/stream/{call_id}", content=raw, headers={"content-type": "application/json"})
    _assert_malformed_body_422(response)
    assert api.get(f"/v1/call/{call_id}").status_code == 404


@pytest.mark.parametrize("raw", MALFORMED_BODIES.values(), ids=MALFORMED_BODIES.keys())
def test_malformed_json_ending_a_call_is_422_and_the_call_goes_on(api: httpx.Client, call_id: str, raw: bytes) -> None:
    assert api.post(f"/v1/call/stream/{call_id}", json=packet(0)).status_code == 202
    _assert_malformed_body_422(api.post(f"/v1/call/{call_id}/end", content=raw))
    assert api.get(f"/v1/call/{call_id}").json()["state"] == "IN_PROGRESS"


def test_a_packet_without_a_body_is_422(api: httpx.Client, call_id: str) -> None:
    response = api.post(f"/v1/call/stream/{call_id}", content=b"")
    assert response.status_code == 422
    assert response.json()["error"] == "invalid_request"
    assert response.json()["message"] == "body: a JSON object is required"


def test_a_utf8_byte_order_mark_is_skipped(api: httpx.Client, call_id: str) -> None:
    raw = b"\xef\xbb\xbf" + json.dumps(packet(0)).encode()
    assert api.post(f"/v1/call/stream/{call_id}", content=raw).status_code == 202


def test_integral_float_sequences_are_those_integers(api: httpx.Client, ports: Ports, call_id: str) -> None:
    body = '{"sequence": 12282.0, "data": "audio", "timestamp": 1700000000}'
    response = api.post(f"/v1/call/stream/{call_id}", content=body)
    assert response.status_code == 202
    assert response.json() == {"call_id": call_id, "sequence": 12282, "status": "accepted"}
    duplicate = api.post(f"/v1/call/stream/{call_id}", content=body.replace("12282.0", "1.2282e4"))
    assert (duplicate.status_code, duplicate.json()["sequence"]) == (200, 12282)
    assert stored_packets(ports, call_id) == {12282: "audio"}
    assert [p.timestamp for p in ports.store.packets(call_id)] == [1_700_000_000.0]
    assert api.post(f"/v1/call/{call_id}/end", content='{"last_sequence": 12283.0}').status_code == 202
    call = api.get(f"/v1/call/{call_id}").json()
    assert call["last_sequence"] == 12283
    assert call["packets"]["highest_sequence"] == 12282


@pytest.mark.parametrize("last_sequence", [3.5, True, "3", -1, MAX_SEQUENCE + 1, 1e300])
def test_invalid_last_sequence_is_422_and_the_call_goes_on(
    api: httpx.Client, call_id: str, last_sequence: object
) -> None:
    api.post(f"/v1/call/stream/{call_id}", json=packet(0))
    response = api.post(f"/v1/call/{call_id}/end", json={"last_sequence": last_sequence})
    assert response.status_code == 422
    assert "body.last_sequence" in response.json()["message"]
    assert api.get(f"/v1/call/{call_id}").json()["state"] == "IN_PROGRESS"


def test_malformed_json_through_the_lambda_handler_is_422(ports: Ports, call_id: str, lambda_loop: None) -> None:
    from ingest.app import create_app

    handler = Mangum(create_app(ports), lifespan="off")
    for raw in MALFORMED_BODIES.values():
        response = handler(http_api_event("POST", f"/v1/call/stream/{call_id}", body=raw), LAMBDA_CONTEXT)
        assert response["statusCode"] == 422
        body = json.loads(response["body"])
        assert body["error"] == "invalid_request"
        assert body["details"][0]["type"] == "json_invalid"
    assert handler(http_api_event("POST", f"/v1/call/stream/{call_id}", body=b""), LAMBDA_CONTEXT)["statusCode"] == 422
    good = json.dumps({"sequence": 7.0, "data": "x", "timestamp": 1}).encode()
    accepted = handler(http_api_event("POST", f"/v1/call/stream/{call_id}", body=good), LAMBDA_CONTEXT)
    assert (accepted["statusCode"], json.loads(accepted["body"])["sequence"]) == (202, 7)


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


def test_openapi_documents_every_status_and_no_other(api: httpx.Client) -> None:
    paths = api.get("/openapi.json").json()["paths"]
    documented = {
        ("post", "/v1/call/stream/{call_id}"): {"200", "202", "401", "409", "413", "422", "500", "503"},
        ("post", "/v1/call/stream/{call_id}/batch"): {"200", "401", "413", "422", "500", "503"},
        ("post", "/v1/call/{call_id}/end"): {"200", "202", "401", "404", "422", "500", "503"},
        ("get", "/v1/call/{call_id}"): {"200", "401", "404", "422", "500", "503"},
        ("get", "/v1/calls"): {"200", "401", "422", "500", "503"},
        ("get", "/v1/calls/counts"): {"200", "401", "422", "500", "503"},
        ("post", "/v1/call/{call_id}/retry"): {"202", "401", "404", "409", "422", "500", "503"},
        ("post", "/v1/call/{call_id}/archive"): {"200", "401", "404", "409", "422", "500", "503"},
        ("get", "/v1/call/{call_id}/recording"): {"200", "307", "401", "404", "422", "500", "503"},
        ("get", "/healthz"): {"200"},
    }
    assert {(method, path) for path, ops in paths.items() for method in ops} == set(documented)
    for (method, path), statuses in documented.items():
        responses = paths[path][method]["responses"]
        assert set(responses) == statuses, (method, path)
        for status in statuses - {"200", "202", "307"}:
            assert responses[status]["content"]["application/json"]["schema"] == {
                "$ref": "#/components/schemas/ErrorOut"
            }
        if "503" in statuses:
            assert responses["503"]["headers"]["Retry-After"]["required"] is True
    assert api.get("/docs").status_code == 200


def test_unknown_route_is_a_json_404(api: httpx.Client) -> None:
    response = api.get("/v1/nothing-here")
    assert response.status_code == 404
    assert response.json()["error"] == "not_found"


def test_integer_timestamps_are_numbers(api: httpx.Client, ports: Ports, call_id: str) -> None:
    for sequence, timestamp in enumerate((1_700_000_000, 0, 100_000_000_000)):
        body = {"sequence": sequence, "data": "x", "timestamp": timestamp}
        assert api.post(f"/v1/call/stream/{call_id}", json=body).status_code == 202
    assert [p.timestamp for p in ports.store.packets(call_id)] == [1_700_000_000.0, 0.0, 1e11]
    response = api.post(f"/v1/call/stream/{call_id}", json={"sequence": 9, "data": "x", "timestamp": 100_000_000_001})
    assert response.status_code == 422
    assert "body.timestamp" in response.json()["message"]


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
    import json

    cursor = base64.urlsafe_b64encode(json.dumps(key).encode()).decode()
    response = api.get("/v1/calls", params={"state": "COMPLETED", "cursor": cursor})
    assert response.status_code == 422
    assert "cursor" in response.json()["message"]


# Each code with the status it must give: throttling and a failing dependency are worth a
# retry (503); our own misuse of the SDK, and a table that is not there (a configuration
# error), are not (500). Neither says which.
AWS_ERRORS = {
    "ProvisionedThroughputExceededException": 503,
    "InternalServerError": 503,
    "ValidationException": 500,
    "ResourceNotFoundException": 500,
}


@contextmanager
def _app_whose_dynamodb_fails(ports: Ports, code: str) -> Iterator[httpx.Client]:
    """The app over a DynamoDB client whose every call fails with the AWS error ``code``."""
    client = boto3.session.Session(aws_access_key_id="t", aws_secret_access_key="t", region_name="us-east-1").client(
        "dynamodb", endpoint_url="http://127.0.0.1:9", config=CLIENT_CONFIG
    )
    http_status = 500 if code == "InternalServerError" else 400

    def fail(**kwargs: object) -> tuple[object, dict[str, Any]]:
        # botocore takes a before-call answer for the service's own, and raises its ClientError.
        error = {"Code": code, "Message": f"{code} raised on purpose by a test"}
        return SimpleNamespace(status_code=http_status, headers={}), {
            "Error": error,
            "ResponseMetadata": {"HTTPStatusCode": http_status},
        }

    client.meta.events.register("before-call.dynamodb.*", fail)
    store = DynamoDBCallStore(
        client,
        ports.settings.calls_table,
        ports.settings.packets_table,
        ports.settings.slots_table,
        packet_ttl_s=ports.settings.packet_ttl_s(),
    )
    from ingest.app import create_app

    with LiveServer(create_app(replace(ports, store=store))) as server, httpx.Client(base_url=server.url) as api:
        yield api


@pytest.mark.parametrize(("code", "status"), AWS_ERRORS.items())
def test_dependency_errors_tell_clients_no_aws_code_and_the_log_all_of_it(
    ports: Ports, call_id: str, caplog: pytest.LogCaptureFixture, code: str, status: int
) -> None:
    from ingest.errors import INTERNAL_MESSAGE, MISCONFIGURED_MESSAGE, UNAVAILABLE_MESSAGE

    caplog.set_level(logging.WARNING)
    with _app_whose_dynamodb_fails(ports, code) as api:
        # One client, so one kept-alive connection: each answer, a 500 too, must leave it usable.
        responses = [
            api.post(f"/v1/call/stream/{call_id}", json=packet(0)),
            api.post(f"/v1/call/{call_id}/end", json={"last_sequence": 3}),
            api.get(f"/v1/call/{call_id}"),
            api.get("/v1/calls", params={"state": "IN_PROGRESS"}),
        ]
    for response in responses:
        assert response.status_code == status, response.text
        for secret in [*AWS_ERRORS, "DynamoDB", "Exception", "on purpose"]:
            assert secret not in response.text
        if status == 503:
            assert response.json() == {"error": "dependency_unavailable", "message": UNAVAILABLE_MESSAGE}
            assert int(response.headers["Retry-After"]) >= 1
        elif code == "ResourceNotFoundException":  # a wrong table name: no retry can help
            assert response.json() == {"error": "configuration_error", "message": MISCONFIGURED_MESSAGE}
            assert "Retry-After" not in response.headers
        else:
            assert response.json() == {"error": "internal_error", "message": INTERNAL_MESSAGE}
            assert "Retry-After" not in response.headers
    # The operators' side: the log has the dependency's own code, for each request.
    logged = [r for r in caplog.records if r.name == "ingest.errors"]
    assert len(logged) == len(responses)
    for record in logged:
        trace = logging.Formatter().formatException(record.exc_info) if record.exc_info else ""
        assert code in record.getMessage() + trace

"""The Lambda path without Docker: API Gateway HTTP API (payload 2.0) events, as API Gateway and
`sam local start-api` send them, through the Mangum handler that template.yaml names."""

from __future__ import annotations

import json
from types import SimpleNamespace
from typing import Any

import pytest
from mangum import Mangum

from callcore.bootstrap import Ports
from tests.conftest import MotoStack
from tests.integration.helpers import http_api_event, packet

pytestmark = pytest.mark.usefixtures("lambda_loop")

# The handler does not read its context; any object with the usual attributes will do.
LAMBDA_CONTEXT: Any = SimpleNamespace(
    function_name="IngestFunction", aws_request_id="c6af9ac6-7b61-11e6-9a41-93e8deadbeef", memory_limit_in_mb=512
)


def api_event(
    method: str,
    resource: str,
    path_parameters: dict[str, str] | None = None,
    *,
    body: Any = None,
    base64_body: bool = False,
    headers: dict[str, str] | None = None,
    query: dict[str, str] | None = None,
) -> dict[str, Any]:
    """The HTTP API event of a request to ``resource`` (its ``{names}`` filled), JSON ``body``."""
    raw = None if body is None else json.dumps(body)
    sent = raw.encode() if raw is not None and base64_body else raw
    return http_api_event(method, resource.format(**(path_parameters or {})), body=sent, headers=headers, query=query)


def test_json_body_event_stores_the_packet(moto_stack: MotoStack, call_id: str) -> None:
    from ingest.app import handler

    response = handler(
        api_event("POST", "/v1/call/stream/{call_id}", {"call_id": call_id}, body=packet(0)), LAMBDA_CONTEXT
    )
    assert response["statusCode"] == 202
    assert json.loads(response["body"]) == {"call_id": call_id, "sequence": 0, "status": "accepted"}


def test_base64_encoded_body_event_is_decoded(moto_stack: MotoStack, call_id: str) -> None:
    from ingest.app import handler

    event = api_event("POST", "/v1/call/stream/{call_id}", {"call_id": call_id}, body=packet(1), base64_body=True)
    assert handler(event, LAMBDA_CONTEXT)["statusCode"] == 202
    duplicate = handler(event, LAMBDA_CONTEXT)
    assert duplicate["statusCode"] == 200
    assert json.loads(duplicate["body"])["status"] == "duplicate"


def test_path_and_query_parameters_reach_the_routes(moto_stack: MotoStack, call_id: str) -> None:
    from ingest.app import handler

    handler(api_event("POST", "/v1/call/stream/{call_id}", {"call_id": call_id}, body=packet(0)), LAMBDA_CONTEXT)
    ended = handler(
        api_event("POST", "/v1/call/{call_id}/end", {"call_id": call_id}, body={"last_sequence": 2}), LAMBDA_CONTEXT
    )
    assert ended["statusCode"] == 202
    got = handler(api_event("GET", "/v1/call/{call_id}", {"call_id": call_id}), LAMBDA_CONTEXT)
    assert got["statusCode"] == 200
    assert json.loads(got["body"])["packets"]["missing"] == [1, 2]
    listed = handler(api_event("GET", "/v1/calls", query={"state": "PROCESSING_AI", "limit": "100"}), LAMBDA_CONTEXT)
    assert listed["statusCode"] == 200
    bad = handler(api_event("GET", "/v1/calls", query={"state": "NOPE"}), LAMBDA_CONTEXT)
    assert bad["statusCode"] == 422


def test_api_key_header_is_checked_when_keys_are_configured(moto_stack: MotoStack, call_id: str) -> None:
    from callcore.bootstrap import build_ports
    from ingest.app import create_app

    ports: Ports = build_ports(moto_stack.settings(API_KEYS="k1, k2"))
    handler = Mangum(create_app(ports), lifespan="off")
    path = ("POST", "/v1/call/stream/{call_id}", {"call_id": call_id})
    missing = handler(api_event(*path, body=packet(0)), LAMBDA_CONTEXT)
    assert missing["statusCode"] == 401
    assert json.loads(missing["body"])["error"] == "unauthorized"
    wrong = handler(api_event(*path, body=packet(0), headers={"X-API-Key": "nope"}), LAMBDA_CONTEXT)
    assert wrong["statusCode"] == 401
    right = handler(api_event(*path, body=packet(0), headers={"X-API-Key": "k2"}), LAMBDA_CONTEXT)
    assert right["statusCode"] == 202
    health = handler(api_event("GET", "/healthz"), LAMBDA_CONTEXT)
    assert health["statusCode"] == 200

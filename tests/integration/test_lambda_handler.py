"""The Lambda path without Docker: API Gateway REST proxy events, as API Gateway and
`sam local start-api` send them, through the Mangum handler that template.yaml names."""

from __future__ import annotations

import base64
import json
from types import SimpleNamespace
from typing import Any

import pytest
from mangum import Mangum

from callcore.bootstrap import Ports
from tests.conftest import MotoStack
from tests.integration.helpers import packet

pytestmark = pytest.mark.usefixtures("lambda_loop")

# The handler does not read its context; any object with the usual attributes will do.
LAMBDA_CONTEXT: Any = SimpleNamespace(
    function_name="IngestFunction", aws_request_id="c6af9ac6-7b61-11e6-9a41-93e8deadbeef", memory_limit_in_mb=512
)


def rest_event(
    method: str,
    resource: str,
    path_parameters: dict[str, str] | None = None,
    *,
    body: Any = None,
    base64_body: bool = False,
    headers: dict[str, str] | None = None,
    query: dict[str, str] | None = None,
) -> dict[str, Any]:
    """An API Gateway REST API (v1) proxy event for the `/{proxy+}` resource."""
    path = resource.format(**(path_parameters or {}))
    raw = None if body is None else json.dumps(body)
    all_headers = {"Content-Type": "application/json", "Host": "abc123.execute-api.us-east-1.amazonaws.com"}
    all_headers |= headers or {}
    return {
        "resource": "/{proxy+}",
        "path": path,
        "httpMethod": method,
        "headers": all_headers,
        "multiValueHeaders": {k: [v] for k, v in all_headers.items()},
        "queryStringParameters": query,
        "multiValueQueryStringParameters": {k: [v] for k, v in query.items()} if query else None,
        "pathParameters": {"proxy": path.lstrip("/")},
        "stageVariables": None,
        "requestContext": {
            "resourcePath": "/{proxy+}",
            "httpMethod": method,
            "path": f"/prod{path}",
            "stage": "prod",
            "requestId": "c6af9ac6-7b61-11e6-9a41-93e8deadbeef",
            "identity": {"sourceIp": "203.0.113.7", "apiKey": (headers or {}).get("X-API-Key")},
            "accountId": "123456789012",
            "apiId": "abc123",
        },
        "body": base64.b64encode(raw.encode()).decode() if raw is not None and base64_body else raw,
        "isBase64Encoded": base64_body,
    }


def test_json_body_event_stores_the_packet(moto_stack: MotoStack, call_id: str) -> None:
    from ingest.app import handler

    response = handler(
        rest_event("POST", "/v1/call/stream/{call_id}", {"call_id": call_id}, body=packet(0)), LAMBDA_CONTEXT
    )
    assert response["statusCode"] == 202
    assert json.loads(response["body"]) == {"call_id": call_id, "sequence": 0, "status": "accepted"}


def test_base64_encoded_body_event_is_decoded(moto_stack: MotoStack, call_id: str) -> None:
    from ingest.app import handler

    event = rest_event("POST", "/v1/call/stream/{call_id}", {"call_id": call_id}, body=packet(1), base64_body=True)
    assert handler(event, LAMBDA_CONTEXT)["statusCode"] == 202
    duplicate = handler(event, LAMBDA_CONTEXT)
    assert duplicate["statusCode"] == 200
    assert json.loads(duplicate["body"])["status"] == "duplicate"


def test_path_and_query_parameters_reach_the_routes(moto_stack: MotoStack, call_id: str) -> None:
    from ingest.app import handler

    handler(rest_event("POST", "/v1/call/stream/{call_id}", {"call_id": call_id}, body=packet(0)), LAMBDA_CONTEXT)
    ended = handler(
        rest_event("POST", "/v1/call/{call_id}/end", {"call_id": call_id}, body={"last_sequence": 2}), LAMBDA_CONTEXT
    )
    assert ended["statusCode"] == 202
    got = handler(rest_event("GET", "/v1/call/{call_id}", {"call_id": call_id}), LAMBDA_CONTEXT)
    assert got["statusCode"] == 200
    assert json.loads(got["body"])["packets"]["missing"] == [1, 2]
    listed = handler(rest_event("GET", "/v1/calls", query={"state": "PROCESSING_AI", "limit": "100"}), LAMBDA_CONTEXT)
    assert listed["statusCode"] == 200
    bad = handler(rest_event("GET", "/v1/calls", query={"state": "NOPE"}), LAMBDA_CONTEXT)
    assert bad["statusCode"] == 422


def test_api_key_header_is_checked_when_keys_are_configured(moto_stack: MotoStack, call_id: str) -> None:
    from callcore.bootstrap import build_ports
    from ingest.app import create_app

    ports: Ports = build_ports(moto_stack.settings(API_KEYS="k1, k2"))
    handler = Mangum(create_app(ports), lifespan="off")
    path = ("POST", "/v1/call/stream/{call_id}", {"call_id": call_id})
    missing = handler(rest_event(*path, body=packet(0)), LAMBDA_CONTEXT)
    assert missing["statusCode"] == 401
    assert json.loads(missing["body"])["error"] == "unauthorized"
    wrong = handler(rest_event(*path, body=packet(0), headers={"X-API-Key": "nope"}), LAMBDA_CONTEXT)
    assert wrong["statusCode"] == 401
    right = handler(rest_event(*path, body=packet(0), headers={"X-API-Key": "k2"}), LAMBDA_CONTEXT)
    assert right["statusCode"] == 202
    health = handler(rest_event("GET", "/healthz"), LAMBDA_CONTEXT)
    assert health["statusCode"] == 200

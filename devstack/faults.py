"""Fault injection for the local moto server: AWS's failures, on purpose, shaped as AWS sends them.

The moto server (``python -m devstack.moto_server``) reads two variables, which the
``MotoProcess`` child inherits from the stack (``LOCAL_FAULTS=chaos make run``):

``LOCAL_FAULTS``
    Off when unset or empty. Otherwise a comma-separated list of rules
    ``service.Operation=rate:Outcome``, or the preset ``chaos`` (see ``CHAOS_RULES``),
    which may be followed by more rules (``chaos,sqs.SendMessage=0.5:ServiceUnavailable``:
    the extra rules add to the preset's).

    - ``service`` is ``dynamodb``, ``sqs``, ``s3``, ``transcribe`` or ``comprehend`` (the
      last two are AI_PROVIDER=aws's).
    - ``Operation`` is the AWS API name (``TransactWriteItems``, ``UpdateItem``,
      ``SendMessage``, ``PutObject``, ``StartTranscriptionJob``, ``DetectSentiment``...),
      checked against botocore's model of the service, or ``*`` for every operation of the
      service (control-plane ones too: ``CreateTable``).
    - ``rate`` is a number from 0 to 1: the share of the matching requests that get the
      outcome.
    - ``Outcome`` is what those requests get instead of moto's answer, shaped as the
      service shapes it (status, body in its protocol, headers):

      ``TransactionConflict``
          dynamodb ``TransactWriteItems`` only: a ``TransactionCanceledException`` whose
          reasons give one item (picked by the seeded generator) ``TransactionConflict``
          and every other item its real outcome, its condition evaluated against moto's
          state. Nothing is written.
      ``TransactionConflictException``
          dynamodb ``PutItem``, ``UpdateItem``, ``DeleteItem`` only.
      ``ProvisionedThroughputExceededException``
          dynamodb only (the other services have no provisioned throughput).
      ``ThrottlingException``
          dynamodb ``ThrottlingException`` (400); sqs ``RequestThrottled`` (400); s3
          ``SlowDown`` (503); transcribe and comprehend ``ThrottlingException`` (400).
      ``InternalServerError``
          dynamodb ``InternalServerError``; sqs ``InternalFailure``; s3 ``InternalError``;
          transcribe and comprehend ``InternalFailure`` (all 500).
      ``ServiceUnavailable``
          ``ServiceUnavailable`` (503) in each service's shape.
      ``LostResponse``
          any operation: moto runs it and commits, then the connection closes without an
          answer, as when a response times out after the write happened. The client
          (botocore) sees ``ConnectionClosedError`` and, if it retries, sends it again.

    Anything else (unknown service, operation or outcome, an outcome on an operation it
    cannot happen on, a rate outside 0..1, rates on one operation summing over 1, an
    empty rule) raises ``ValueError`` at startup: the server exits non-zero.

``LOCAL_FAULTS_SEED``
    An integer: the fault decisions come from one ``random.Random(seed)``, so the same
    requests in the same order get the same faults. Unset, they are random.

**One draw per request.** A request matches the rules of its service whose operation is
its own or ``*``, in the order written. One uniform number decides among them: the first
rule's rate is the interval [0, r1), the second's [r1, r1 + r2), and so on. So each rule
faults exactly its rate of the matching requests, a request gets at most one fault, and a
rule never shadows another; that is why the rates that can meet on one operation must sum
to at most 1. Requests that match no rule draw nothing.

Never faulted: moto's own ``/moto-api``, this module's ``GET /_local_faults``, and
requests of other services or that carry no AWS signature. ``GET /_local_faults`` answers
the counters (it exists when faults are off too, with ``enabled: false`` and nothing
counted, so the server pays one dict lookup per request when off)::

    {"enabled": true, "rules": ["dynamodb.UpdateItem=0.03:TransactionConflictException", ...],
     "seed": 7, "requests": 5210, "faulted": 402,
     "by_operation": {"dynamodb.TransactWriteItems": {"requests": 4012, "faulted": 441}, ...},
     "by_outcome": {"TransactionConflict": 203, ...}}

``requests`` counts the requests of the services above that the injector saw, faulted or
not (0 when faults are off: nothing is looked at then).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import random
import re
import socket
import struct
import threading
import uuid
import zlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs
from xml.sax.saxutils import escape

_StartResponse = Callable[..., Any]
WsgiApp = Callable[[dict[str, Any], _StartResponse], Iterable[bytes]]
_Answer = tuple[str, list[tuple[str, str]], bytes]

FAULTS_PATH = "/_local_faults"
SERVICES = ("dynamodb", "sqs", "s3", "transcribe", "comprehend")

TRANSACTION_CONFLICT = "TransactionConflict"
TRANSACTION_CONFLICT_EXCEPTION = "TransactionConflictException"
PROVISIONED_THROUGHPUT_EXCEEDED = "ProvisionedThroughputExceededException"
THROTTLING = "ThrottlingException"
INTERNAL_SERVER_ERROR = "InternalServerError"
SERVICE_UNAVAILABLE = "ServiceUnavailable"
LOST_RESPONSE = "LostResponse"

_ANY_SERVICE = frozenset(SERVICES)
_SINGLE_ITEM_WRITES = frozenset({"PutItem", "UpdateItem", "DeleteItem"})

# Where each outcome can happen: service -> the operations (None: every operation).
_WHERE: dict[str, dict[str, frozenset[str] | None]] = {
    # AWS cancels a transaction with TransactionConflict when another transaction holds one
    # of its items; only TransactWriteItems answers it in this form.
    TRANSACTION_CONFLICT: {"dynamodb": frozenset({"TransactWriteItems"})},
    # A single-item write that meets an ongoing transaction on its item.
    TRANSACTION_CONFLICT_EXCEPTION: {"dynamodb": _SINGLE_ITEM_WRITES},
    # Provisioned throughput is a DynamoDB notion; SQS and S3 throttle with their own codes.
    PROVISIONED_THROUGHPUT_EXCEEDED: {"dynamodb": None},
    THROTTLING: dict.fromkeys(_ANY_SERVICE),
    INTERNAL_SERVER_ERROR: dict.fromkeys(_ANY_SERVICE),
    SERVICE_UNAVAILABLE: dict.fromkeys(_ANY_SERVICE),
    LOST_RESPONSE: dict.fromkeys(_ANY_SERVICE),
}
OUTCOMES = frozenset(_WHERE)

# The chaos preset. A chaos run is about 200 calls x 20 packets: ~4,000 TransactWriteItems,
# ~1,000 UpdateItems, a few hundred SendMessage, ReceiveMessage, DeleteMessageBatch and
# ChangeMessageVisibility. The rates make every fault path run tens of times in such a
# run, while the run still finishes: the app's botocore clients retry throttling, 5xx and
# lost connections (max_attempts=2: botocore's count of retries, so up to 3 attempts); the
# store retries TransactionConflict itself; the PBX simulator retries the 503s that get
# through. The local poller's SQS client keeps botocore's default retries.
CHAOS_RULES: tuple[str, ...] = (
    # The packet write. Conflicts are what concurrent packets of one call meet on AWS:
    # ~200 of them exercise the store's own conflict retries (5 of them; all six attempts
    # conflict with p = 0.05^6).
    "dynamodb.TransactWriteItems=0.05:TransactionConflict",
    # Throttling and 5xx, ~40 each: botocore's retries absorb nearly all of them (every
    # attempt fails with p ~ 0.06^3); the ones left, and conflicts that outlast the store's
    # retries, take the 503 + Retry-After path to the PBX.
    "dynamodb.TransactWriteItems=0.01:ProvisionedThroughputExceededException",
    "dynamodb.TransactWriteItems=0.01:ThrottlingException",
    "dynamodb.TransactWriteItems=0.01:InternalServerError",
    "dynamodb.TransactWriteItems=0.01:ServiceUnavailable",
    # ~80 packets stored whose answer is lost: botocore retries with the same
    # ClientRequestToken, which DynamoDB (and the patched moto) answers as the first time;
    # a client without it meets its own packet: the duplicate-after-commit path.
    "dynamodb.TransactWriteItems=0.02:LostResponse",
    # Single-item writes (the end, the AI worker's attempt counting and results; ~1,000).
    # A conflict with a transaction on the same call item: ~30. botocore does not retry
    # TransactionConflictException: the app sees each one.
    "dynamodb.UpdateItem=0.03:TransactionConflictException",
    "dynamodb.UpdateItem=0.01:ProvisionedThroughputExceededException",
    "dynamodb.UpdateItem=0.01:ThrottlingException",
    "dynamodb.UpdateItem=0.01:InternalServerError",
    "dynamodb.UpdateItem=0.01:ServiceUnavailable",
    # ~20 conditional updates that committed and are retried: the retry's condition fails.
    "dynamodb.UpdateItem=0.02:LostResponse",
    # The app does not use PutItem or DeleteItem today; same rates, so a new use is covered.
    "dynamodb.PutItem=0.03:TransactionConflictException",
    "dynamodb.PutItem=0.01:ProvisionedThroughputExceededException",
    "dynamodb.PutItem=0.01:ThrottlingException",
    "dynamodb.PutItem=0.01:InternalServerError",
    "dynamodb.PutItem=0.01:ServiceUnavailable",
    "dynamodb.PutItem=0.02:LostResponse",
    "dynamodb.DeleteItem=0.03:TransactionConflictException",
    "dynamodb.DeleteItem=0.01:ProvisionedThroughputExceededException",
    "dynamodb.DeleteItem=0.01:ThrottlingException",
    "dynamodb.DeleteItem=0.01:InternalServerError",
    "dynamodb.DeleteItem=0.01:ServiceUnavailable",
    "dynamodb.DeleteItem=0.02:LostResponse",
    # Reads (GET /v1/call, the worker's reads). Lower: a failed read only repeats work, and
    # a lost read answer is just an extra retry, so LostResponse stays a little.
    "dynamodb.GetItem=0.005:ProvisionedThroughputExceededException",
    "dynamodb.GetItem=0.005:ThrottlingException",
    "dynamodb.GetItem=0.005:InternalServerError",
    "dynamodb.GetItem=0.005:ServiceUnavailable",
    "dynamodb.GetItem=0.002:LostResponse",
    "dynamodb.Query=0.005:ProvisionedThroughputExceededException",
    "dynamodb.Query=0.005:ThrottlingException",
    "dynamodb.Query=0.005:InternalServerError",
    "dynamodb.Query=0.005:ServiceUnavailable",
    "dynamodb.Query=0.002:LostResponse",
    # The work item (one per end; ~4% mixed). A send that fails every attempt puts the call
    # back to IN_PROGRESS and answers 503; a lost answer makes botocore send it again: two work
    # items of one round, which the worker's round check must make harmless.
    "sqs.SendMessage=0.01:ThrottlingException",
    "sqs.SendMessage=0.01:InternalServerError",
    "sqs.SendMessage=0.01:ServiceUnavailable",
    "sqs.SendMessage=0.01:LostResponse",
    # The poller's deletes: a delete that fails every attempt brings finished items back
    # after the visibility timeout, where they must change nothing.
    "sqs.DeleteMessageBatch=0.01:ThrottlingException",
    "sqs.DeleteMessageBatch=0.01:InternalServerError",
    "sqs.DeleteMessageBatch=0.01:ServiceUnavailable",
    "sqs.DeleteMessageBatch=0.01:LostResponse",
    # The worker's backoff. Lower 5xx: a change that fails every attempt leaves the item
    # invisible for the queue's whole visibility timeout (360 s), stalling its call.
    "sqs.ChangeMessageVisibility=0.01:ThrottlingException",
    "sqs.ChangeMessageVisibility=0.005:InternalServerError",
    "sqs.ChangeMessageVisibility=0.005:ServiceUnavailable",
    "sqs.ChangeMessageVisibility=0.01:LostResponse",
    # The event-source poller long-polls without pause and sleeps 1 s after an error, so
    # ~1% keeps it going. No LostResponse: the received messages would stay invisible for
    # 360 s, holding their calls (add sqs.ReceiveMessage=...:LostResponse to see it).
    "sqs.ReceiveMessage=0.005:ThrottlingException",
    "sqs.ReceiveMessage=0.005:ServiceUnavailable",
)
CHAOS = ",".join(CHAOS_RULES)

_RULE = re.compile(r"(?P<service>[a-z0-9]+)\.(?P<operation>\*|[A-Za-z0-9]+)=(?P<rate>[^:]*):(?P<outcome>[A-Za-z]+)")


@dataclass(frozen=True)
class Rule:
    service: str
    operation: str  # an AWS operation name, or "*"
    rate: float
    outcome: str

    def matches(self, service: str, operation: str) -> bool:
        return self.service == service and self.operation in ("*", operation)

    def __str__(self) -> str:
        return f"{self.service}.{self.operation}={self.rate:.10g}:{self.outcome}"


def parse_rules(spec: str | None) -> list[Rule]:
    """The rules of a ``LOCAL_FAULTS`` value (empty: none). Raises ValueError, saying why, if malformed."""
    if spec is None or not spec.strip():
        return []
    texts = [text.strip() for text in spec.split(",")]
    if texts[0] == "chaos":
        texts[:1] = list(CHAOS_RULES)
    rules = [_parse_rule(text) for text in texts]
    _check_operations(rules)
    _check_sums(rules)
    return rules


def _parse_rule(text: str) -> Rule:
    where = f"LOCAL_FAULTS: rule {text!r}"
    if not text:
        raise ValueError("LOCAL_FAULTS: empty rule (two commas, or a comma at an end?)")
    if text == "chaos":
        raise ValueError("LOCAL_FAULTS: 'chaos' must come first, before any other rule")
    match = _RULE.fullmatch(text)
    if match is None:
        example = "dynamodb.UpdateItem=0.05:ThrottlingException"
        raise ValueError(f"{where} is not service.Operation=rate:Outcome (e.g. {example})")
    service, operation, outcome = match["service"], match["operation"], match["outcome"]
    if service not in SERVICES:
        raise ValueError(f"{where}: unknown service {service!r}; one of {', '.join(SERVICES)}")
    try:
        rate = float(match["rate"])
    except ValueError:
        raise ValueError(f"{where}: rate {match['rate']!r} is not a number from 0 to 1") from None
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"{where}: rate {match['rate']} is not from 0 to 1")
    if outcome not in _WHERE:
        raise ValueError(f"{where}: unknown outcome {outcome!r}; one of {', '.join(sorted(OUTCOMES))}")
    places = _WHERE[outcome]
    if service not in places:
        raise ValueError(f"{where}: {outcome} does not happen on {service}; it is for {', '.join(sorted(places))}")
    operations = places[service]
    if operations is not None and operation not in operations:
        raise ValueError(f"{where}: {outcome} happens only on {service} {', '.join(sorted(operations))}")
    return Rule(service, operation, rate, outcome)


def _check_operations(rules: list[Rule]) -> None:
    """Fail on an operation the service does not have: a typo would otherwise never match."""
    named = {(r.service, r.operation) for r in rules if r.operation != "*"}
    if not named:
        return
    import botocore.session

    session = botocore.session.get_session()
    known = {s: set(session.get_service_model(s).operation_names) for s in {s for s, _ in named}}
    for service, operation in sorted(named):
        if operation not in known[service]:
            raise ValueError(f"LOCAL_FAULTS: {service} has no operation {operation!r}")


def _check_sums(rules: list[Rule]) -> None:
    """One draw per request splits [0, 1) between the matching rules: their rates must fit."""
    for service in SERVICES:
        operations = {r.operation for r in rules if r.service == service} - {"*"}
        for operation in [*sorted(operations), "(any other)"]:
            total = sum(r.rate for r in rules if r.matches(service, operation))
            if total > 1.0 + 1e-9:
                name = "*" if operation == "(any other)" else operation
                raise ValueError(f"LOCAL_FAULTS: the rates on {service}.{name} sum to {total:g}, over 1")


def parse_seed(text: str | None) -> int | None:
    """``LOCAL_FAULTS_SEED``: an integer, or None when unset or empty."""
    if text is None or not text.strip():
        return None
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"LOCAL_FAULTS_SEED: {text!r} is not an integer") from None


# ---------------------------------------------------------------------------------------
# Which service and operation a request is


# The X-Amz-Target prefix of each service on a JSON protocol (botocore's model metadata,
# "targetPrefix"): DynamoDB's JSON 1.0, SQS's JSON 1.0 (the protocol botocore uses for SQS
# now), and Transcribe's and Comprehend's JSON 1.1. The last two also offer Smithy RPC v2
# CBOR, which carries no X-Amz-Target; botocore prefers JSON when a service offers both.
_TARGET_PREFIXES = {
    "DynamoDB_20120810": "dynamodb",
    "AmazonSQS": "sqs",
    "Transcribe": "transcribe",
    "Comprehend_20171127": "comprehend",
}

_CREDENTIAL = re.compile(r"Credential=([^/,\s]+)/[^/]+/([^/]+)/([^/]+)/")


def _credential(environ: Mapping[str, Any]) -> tuple[str, str, str] | None:
    """(access key, region, signing service) of a SigV4 request, header-signed or presigned."""
    match = _CREDENTIAL.search(environ.get("HTTP_AUTHORIZATION", ""))
    if match is None and "X-Amz-Credential" in environ.get("QUERY_STRING", ""):
        values = parse_qs(environ["QUERY_STRING"]).get("X-Amz-Credential", [""])
        match = _CREDENTIAL.search("Credential=" + values[0])
    return (match[1], match[2], match[3]) if match else None


def identify(environ: dict[str, Any]) -> tuple[str, str] | None:
    """(service, operation) of an AWS request to one of SERVICES; None for anything else."""
    path = environ.get("PATH_INFO", "")
    if path.startswith("/moto-api") or path == FAULTS_PATH:
        return None
    target = environ.get("HTTP_X_AMZ_TARGET")
    if target:
        # JSON protocols: X-Amz-Target is <the service's target prefix>.<Operation>.
        prefix, _, operation = target.partition(".")
        service = _TARGET_PREFIXES.get(prefix)
        return (service, operation) if service else None
    credential = _credential(environ)
    if credential is None:
        return None
    service = credential[2]
    if service == "s3":
        return "s3", s3_operation(environ)
    if service == "sqs":
        # SQS's older query protocol: Action=<Operation> in the form body or the query string.
        action = _query_action(environ)
        return ("sqs", action) if action else None
    return None


def _read_body(environ: dict[str, Any]) -> bytes:
    """The request body, put back for the app behind (SerializedApp does the same)."""
    if environ.get("wsgi.input_terminated"):
        body = environ["wsgi.input"].read()
    else:
        length = int(environ.get("CONTENT_LENGTH") or 0)
        body = environ["wsgi.input"].read(length) if length else b""
    environ["wsgi.input"] = io.BytesIO(body)
    environ["CONTENT_LENGTH"] = str(len(body))
    return body


def _query_action(environ: dict[str, Any]) -> str | None:
    actions = parse_qs(environ.get("QUERY_STRING", "")).get("Action")
    if not actions and environ.get("CONTENT_TYPE", "").startswith("application/x-www-form-urlencoded"):
        actions = parse_qs(_read_body(environ).decode("utf-8", "replace")).get("Action")
    return actions[0] if actions else None


# Sub-resources of S3's REST API (?tagging, ?acl...) and the name they give an operation.
_S3_BUCKET_SUBRESOURCES = {
    "accelerate": "BucketAccelerateConfiguration",
    "acl": "BucketAcl",
    "analytics": "BucketAnalyticsConfiguration",
    "cors": "BucketCors",
    "encryption": "BucketEncryption",
    "intelligent-tiering": "BucketIntelligentTieringConfiguration",
    "inventory": "BucketInventoryConfiguration",
    "lifecycle": "BucketLifecycleConfiguration",
    "location": "BucketLocation",
    "logging": "BucketLogging",
    "metrics": "BucketMetricsConfiguration",
    "notification": "BucketNotificationConfiguration",
    "object-lock": "ObjectLockConfiguration",
    "ownershipControls": "BucketOwnershipControls",
    "policy": "BucketPolicy",
    "policyStatus": "BucketPolicyStatus",
    "publicAccessBlock": "PublicAccessBlock",
    "replication": "BucketReplication",
    "requestPayment": "BucketRequestPayment",
    "tagging": "BucketTagging",
    "versioning": "BucketVersioning",
    "website": "BucketWebsite",
}
_S3_OBJECT_SUBRESOURCES = {
    "acl": "ObjectAcl",
    "attributes": "ObjectAttributes",
    "legal-hold": "ObjectLegalHold",
    "retention": "ObjectRetention",
    "tagging": "ObjectTagging",
    "torrent": "ObjectTorrent",
}
_S3_VERBS = {"GET": "Get", "PUT": "Put", "DELETE": "Delete"}
_IPV4 = re.compile(r"\d+\.\d+\.\d+\.\d+")


def s3_operation(environ: Mapping[str, Any]) -> str:
    """The S3 API name of a REST request, path-style (``/bucket/key``) or virtual-hosted."""
    method = environ.get("REQUEST_METHOD", "GET")
    query = parse_qs(environ.get("QUERY_STRING", ""), keep_blank_values=True)
    path = environ.get("PATH_INFO", "/").lstrip("/")
    host = environ.get("HTTP_HOST", "").split(":")[0]
    virtual = not _IPV4.fullmatch(host) and (
        host.endswith(".localhost") or (".s3." in f".{host}" and not host.startswith(("s3.", "s3-")))
    )
    if virtual:
        bucket, key = host.split(".", 1)[0], path
    else:
        bucket, _, key = path.partition("/")
    if not bucket:
        return "ListBuckets" if method == "GET" else f"{method.title()}Service"
    if key:
        return _s3_object_operation(method, query, environ)
    return _s3_bucket_operation(method, query)


def _s3_object_operation(method: str, query: dict[str, list[str]], environ: Mapping[str, Any]) -> str:
    copy = "HTTP_X_AMZ_COPY_SOURCE" in environ
    if "uploadId" in query:
        if method == "PUT":
            return "UploadPartCopy" if copy else "UploadPart"
        return {"GET": "ListParts", "POST": "CompleteMultipartUpload", "DELETE": "AbortMultipartUpload"}.get(
            method, "UploadPart"
        )
    if method == "POST":
        for name, operation in (("uploads", "CreateMultipartUpload"), ("restore", "RestoreObject")):
            if name in query:
                return operation
        return "SelectObjectContent" if "select" in query else "PostObject"
    for name, suffix in _S3_OBJECT_SUBRESOURCES.items():
        if name in query:
            return _S3_VERBS.get(method, method.title()) + suffix
    if method == "PUT":
        return "CopyObject" if copy else "PutObject"
    return {"GET": "GetObject", "HEAD": "HeadObject", "DELETE": "DeleteObject"}.get(method, f"{method.title()}Object")


def _s3_bucket_operation(method: str, query: dict[str, list[str]]) -> str:
    if method == "POST" and "delete" in query:
        return "DeleteObjects"
    if method == "GET":
        for name, operation in (("uploads", "ListMultipartUploads"), ("versions", "ListObjectVersions")):
            if name in query:
                return operation
    for name, suffix in _S3_BUCKET_SUBRESOURCES.items():
        if name in query:
            return _S3_VERBS.get(method, method.title()) + suffix
    if method == "GET":
        return "ListObjectsV2" if query.get("list-type") == ["2"] else "ListObjects"
    plain = {"PUT": "CreateBucket", "HEAD": "HeadBucket", "DELETE": "DeleteBucket"}
    return plain.get(method, f"{method.title()}Bucket")


# ---------------------------------------------------------------------------------------
# The answers, as each service shapes them


def _dynamodb_answer(status: str, document: dict[str, Any]) -> _Answer:
    # DynamoDB's JSON 1.0 error: an HTTP status, {"__type": "<namespace>#<Exception>",
    # "message": ...}, Content-Type application/x-amz-json-1.0, x-amzn-RequestId, and the
    # x-amz-crc32 of the body, which botocore checks.
    # https://docs.aws.amazon.com/amazondynamodb/latest/developerguide/Programming.Errors.html
    body = json.dumps(document).encode()
    headers = [
        ("Content-Type", "application/x-amz-json-1.0"),
        ("x-amzn-RequestId", (uuid.uuid4().hex + uuid.uuid4().hex)[:52].upper()),
        ("x-amz-crc32", str(zlib.crc32(body) & 0xFFFFFFFF)),
    ]
    return status, headers, body


_DYNAMODB = "com.amazonaws.dynamodb.v20120810#"

# Status, __type and message of each error, from "Error handling with DynamoDB" (its
# "Error messages and codes" list: the 400s are retryable, as are the 500 and the 503).
# https://docs.aws.amazon.com/amazondynamodb/latest/developerguide/Programming.Errors.html
_DYNAMODB_ERRORS: dict[str, tuple[str, str, str]] = {
    PROVISIONED_THROUGHPUT_EXCEEDED: (
        "400 Bad Request",
        _DYNAMODB + "ProvisionedThroughputExceededException",
        "The level of configured provisioned throughput for the table was exceeded. "
        "Consider increasing your provisioning level with the UpdateTable API.",
    ),
    # ThrottlingException comes from the service framework (coral), not DynamoDB's model.
    THROTTLING: (
        "400 Bad Request",
        "com.amazon.coral.availability#ThrottlingException",
        "Rate of requests exceeds the allowed throughput.",
    ),
    # A PutItem, UpdateItem or DeleteItem that meets an ongoing TransactWriteItems on its item
    # (same page, and https://repost.aws/knowledge-center/dynamodb-transactwriteitems).
    TRANSACTION_CONFLICT_EXCEPTION: (
        "400 Bad Request",
        _DYNAMODB + "TransactionConflictException",
        "Transaction is ongoing for the item",
    ),
    INTERNAL_SERVER_ERROR: ("500 Internal Server Error", _DYNAMODB + "InternalServerError", "Internal server error"),
    SERVICE_UNAVAILABLE: (
        "503 Service Unavailable",
        _DYNAMODB + "ServiceUnavailable",
        "DynamoDB is currently unavailable. (This should be a temporary state.)",
    ),
}

# SQS on its JSON protocol: {"__type": "com.amazonaws.sqs#<Error>", "message": ...} with
# x-amzn-query-error: <query code>;Sender|Receiver, from which botocore takes the error
# code (the protocol keeps the codes of SQS's former query API).
# https://docs.aws.amazon.com/AWSSimpleQueueService/latest/SQSDeveloperGuide/sqs-json-api-responses.html
# Throttling is SQS's own RequestThrottled (400), listed in the errors of every queue
# operation, e.g. https://docs.aws.amazon.com/AWSSimpleQueueService/latest/APIReference/API_SendMessage.html
# 5xx are the common InternalFailure (500) and ServiceUnavailable (503), "Receiver" faults:
# https://docs.aws.amazon.com/AWSSimpleQueueService/latest/APIReference/CommonErrors.html
_SQS_ERRORS: dict[str, tuple[str, str, str, str]] = {
    THROTTLING: ("400 Bad Request", "RequestThrottled", "Sender", "The request was denied due to request throttling."),
    INTERNAL_SERVER_ERROR: (
        "500 Internal Server Error",
        "InternalFailure",
        "Receiver",
        "The request processing has failed because of an unknown error, exception or failure.",
    ),
    SERVICE_UNAVAILABLE: (
        "503 Service Unavailable",
        "ServiceUnavailable",
        "Receiver",
        "The request has failed due to a temporary failure of the server.",
    ),
}


def _sqs_error(outcome: str, query_protocol: bool) -> _Answer:
    status, code, fault, message = _SQS_ERRORS[outcome]
    request_id = str(uuid.uuid4())
    if query_protocol:
        # The query protocol's XML <ErrorResponse>, for clients that still speak it.
        # https://docs.aws.amazon.com/AWSSimpleQueueService/latest/SQSDeveloperGuide/sqs-api-responses.html
        xml = (
            '<?xml version="1.0"?><ErrorResponse>'
            f"<Error><Type>{fault}</Type><Code>{code}</Code><Message>{escape(message)}</Message></Error>"
            f"<RequestId>{request_id}</RequestId></ErrorResponse>"
        ).encode()
        return status, [("Content-Type", "text/xml"), ("x-amzn-RequestId", request_id)], xml
    body = json.dumps({"__type": f"com.amazonaws.sqs#{code}", "message": message}).encode()
    headers = [
        ("Content-Type", "application/x-amz-json-1.0"),
        ("x-amzn-RequestId", request_id),
        ("x-amzn-query-error", f"{code};{fault}"),
    ]
    return status, headers, body


# S3's REST errors: an XML <Error> document with Code, Message, Resource, RequestId and
# HostId, Content-Type application/xml, x-amz-request-id and x-amz-id-2. Codes and
# statuses from its list of error codes: SlowDown 503 "Slow Down", InternalError 500,
# ServiceUnavailable 503.
# https://docs.aws.amazon.com/AmazonS3/latest/API/ErrorResponses.html
_S3_ERRORS: dict[str, tuple[str, str, str]] = {
    THROTTLING: ("503 Slow Down", "SlowDown", "Please reduce your request rate."),
    INTERNAL_SERVER_ERROR: (
        "500 Internal Server Error",
        "InternalError",
        "We encountered an internal error. Please try again.",
    ),
    SERVICE_UNAVAILABLE: ("503 Service Unavailable", "ServiceUnavailable", "Service is unable to handle request."),
}


def _s3_error(outcome: str, environ: Mapping[str, Any]) -> _Answer:
    status, code, message = _S3_ERRORS[outcome]
    request_id = uuid.uuid4().hex[:16].upper()
    host_id = uuid.uuid4().hex + uuid.uuid4().hex
    xml = (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f"<Error><Code>{code}</Code><Message>{escape(message)}</Message>"
        f"<Resource>{escape(environ.get('PATH_INFO', '/'))}</Resource>"
        f"<RequestId>{request_id}</RequestId><HostId>{host_id}</HostId></Error>"
    ).encode()
    # A HEAD answer has no body; the status and headers are the whole error.
    body = b"" if environ.get("REQUEST_METHOD") == "HEAD" else xml
    headers = [("Content-Type", "application/xml"), ("x-amz-request-id", request_id), ("x-amz-id-2", host_id)]
    return status, headers, body


# Transcribe and Comprehend speak AWS JSON 1.1. An error is an HTTP status and a body
# {"__type": "<Code>", "message": ...}, Content-Type application/x-amz-json-1.1, and an
# x-amzn-RequestId (the protocol's error serialization, as DynamoDB's JSON 1.0 above,
# without the x-amz-crc32 only DynamoDB sends):
# https://smithy.io/2.0/aws/protocols/aws-json-1_1-protocol.html#operation-error-serialization
# The codes, statuses and messages are the errors common to every AWS API action, as both
# services' API references list them: ThrottlingException 400, InternalFailure 500,
# ServiceUnavailable 503.
# https://docs.aws.amazon.com/transcribe/latest/APIReference/CommonErrors.html
# https://docs.aws.amazon.com/comprehend/latest/APIReference/CommonErrors.html
# (Each service has its own throttling and 5xx exceptions besides, such as Transcribe's
# LimitExceededException and Comprehend's TooManyRequestsException; the AI provider's
# classifier knows those too.)
_JSON11_ERRORS: dict[str, tuple[str, str, str]] = {
    THROTTLING: ("400 Bad Request", "ThrottlingException", "The request was denied due to request throttling."),
    INTERNAL_SERVER_ERROR: (
        "500 Internal Server Error",
        "InternalFailure",
        "The request processing has failed because of an unknown error, exception or failure.",
    ),
    SERVICE_UNAVAILABLE: (
        "503 Service Unavailable",
        "ServiceUnavailable",
        "The request has failed due to a temporary failure of the server.",
    ),
}


def _json11_error(outcome: str) -> _Answer:
    status, code, message = _JSON11_ERRORS[outcome]
    body = json.dumps({"__type": code, "message": message}).encode()
    headers = [("Content-Type", "application/x-amz-json-1.1"), ("x-amzn-RequestId", str(uuid.uuid4()))]
    return status, headers, body


def _error_answer(service: str, outcome: str, environ: dict[str, Any]) -> _Answer:
    if service == "dynamodb":
        status, error_type, message = _DYNAMODB_ERRORS[outcome]
        return _dynamodb_answer(status, {"__type": error_type, "message": message})
    if service == "sqs":
        return _sqs_error(outcome, query_protocol="HTTP_X_AMZ_TARGET" not in environ)
    if service in ("transcribe", "comprehend"):
        return _json11_error(outcome)
    return _s3_error(outcome, environ)


def _json_answer(start_response: _StartResponse, status: str, document: Any) -> list[bytes]:
    body = json.dumps(document).encode()
    start_response(status, [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
    return [body]


def _dynamodb_backend(environ: Mapping[str, Any], region: str, access_key: str) -> Any:
    """moto's DynamoDB backend that serves this request: account as moto picks it, region signed."""
    from moto.dynamodb.models import dynamodb_backends
    from moto.iam.models import get_account_id_from

    account = (
        os.environ.get("MOTO_ACCOUNT_ID") or environ.get("HTTP_X_MOTO_ACCOUNT_ID") or get_account_id_from(access_key)
    )
    return dynamodb_backends[account][region]


def _real_reason(backend: Any, op_type: str, op: dict[str, Any]) -> dict[str, Any]:
    """What DynamoDB reports for one item of a cancelled transaction: its condition, evaluated now.

    As ``patch_transactions`` in devstack/moto_server.py does it: the item's current
    version, its ConditionExpression against it, the old item if the request asked for
    ALL_OLD on a failed condition.
    """
    from moto.dynamodb.comparisons import get_filter_expression
    from moto.dynamodb.models.utilities import dynamo_json_dump

    table = backend.get_table(op["TableName"])
    if op_type == "Put":
        names = [n for n in (table.hash_key_attr, table.range_key_attr) if n]
        key = {n: op["Item"][n] for n in names if n in op["Item"]}
    else:
        key = op["Key"]
    current = backend.get_item(op["TableName"], key)
    condition = op.get("ConditionExpression")
    if condition is None or get_filter_expression(
        condition, op.get("ExpressionAttributeNames"), op.get("ExpressionAttributeValues")
    ).expr(current):
        return {"Code": "None"}
    reason: dict[str, Any] = {"Code": "ConditionalCheckFailed", "Message": "The conditional request failed"}
    if current is not None and op.get("ReturnValuesOnConditionCheckFailure") == "ALL_OLD":
        # Through moto's own encoder: binary values (packet slots) go on the wire as base64.
        reason["Item"] = json.loads(dynamo_json_dump(current.to_json()["Attributes"]))
    return reason


# ---------------------------------------------------------------------------------------
# The middleware


class FaultInjector:
    """WSGI middleware in front of moto that answers a share of the requests with AWS's failures.

    Put it inside ``SerializedApp``'s lock: ``TransactionConflict`` reads moto's state and
    ``LostResponse`` must commit and drop as one step, with no request in between.
    """

    def __init__(self, app: WsgiApp, rules: list[Rule], seed: int | None = None) -> None:
        self._app = app
        self.rules = list(rules)
        self.seed = seed
        self._random = random.Random(seed)
        # One lock for the generator and the counters: the middleware may also be used
        # without SerializedApp (tests), and one lock keeps the draws in request order.
        self._lock = threading.Lock()
        self._matching: dict[tuple[str, str], tuple[Rule, ...]] = {}
        self._requests = 0
        self._faulted = 0
        self._by_operation: dict[str, dict[str, int]] = {}
        self._by_outcome: dict[str, int] = {}

    def _rules_for(self, service: str, operation: str) -> tuple[Rule, ...]:
        key = (service, operation)
        found = self._matching.get(key)
        if found is None:
            found = self._matching[key] = tuple(r for r in self.rules if r.matches(service, operation))
        return found

    def decide(self, service: str, operation: str) -> Rule | None:
        """Count one request of ``service.operation`` and pick its fault (one draw), or None."""
        rules = self._rules_for(service, operation)
        with self._lock:
            self._requests += 1
            counts = self._by_operation.setdefault(f"{service}.{operation}", {"requests": 0, "faulted": 0})
            counts["requests"] += 1
            if not rules:
                return None
            draw, edge = self._random.random(), 0.0
            for rule in rules:
                edge += rule.rate
                if draw < edge:
                    return rule
            return None

    def _count_fault(self, service: str, operation: str, outcome: str) -> None:
        with self._lock:
            self._faulted += 1
            self._by_operation[f"{service}.{operation}"]["faulted"] += 1
            self._by_outcome[outcome] = self._by_outcome.get(outcome, 0) + 1

    def _randbelow(self, n: int) -> int:
        with self._lock:
            return self._random.randrange(n)

    def stats(self) -> dict[str, Any]:
        """The counters, as ``GET /_local_faults`` answers them."""
        with self._lock:
            return {
                "enabled": bool(self.rules),
                "rules": [str(r) for r in self.rules],
                "seed": self.seed,
                "requests": self._requests,
                "faulted": self._faulted,
                "by_operation": {k: dict(v) for k, v in sorted(self._by_operation.items())},
                "by_outcome": dict(sorted(self._by_outcome.items())),
            }

    def __call__(self, environ: dict[str, Any], start_response: _StartResponse) -> Iterable[bytes]:
        if environ.get("PATH_INFO") == FAULTS_PATH:
            return _stats_answer(environ, start_response, self.stats())
        identity = identify(environ)
        if identity is None:
            return self._app(environ, start_response)
        service, operation = identity
        rule = self.decide(service, operation)
        if rule is None:
            return self._app(environ, start_response)
        if rule.outcome == LOST_RESPONSE:
            return self._lose_response(environ, service, operation)
        if rule.outcome == TRANSACTION_CONFLICT:
            answer = self._transaction_conflict(environ)
            if answer is None:
                return self._app(environ, start_response)
        else:
            answer = _error_answer(service, rule.outcome, environ)
        self._count_fault(service, operation, rule.outcome)
        status, headers, body = answer
        start_response(status, [*headers, ("Content-Length", str(len(body)))])
        return [body]

    def _transaction_conflict(self, environ: dict[str, Any]) -> _Answer | None:
        """A TransactionCanceledException: one item in conflict, the others' real outcomes.

        The shape (HTTP 400, CancellationReasons in request order, "None" for an item that
        caused nothing, the codes listed in the message) is TransactWriteItems':
        https://docs.aws.amazon.com/amazondynamodb/latest/APIReference/API_TransactWriteItems.html
        https://docs.aws.amazon.com/amazondynamodb/latest/APIReference/API_CancellationReason.html
        and the message as AWS words it, e.g. in
        https://repost.aws/knowledge-center/dynamodb-transactwriteitems
        None if the transaction cannot be evaluated (a missing table, a malformed request):
        moto answers it, with the error AWS would give first.
        """
        credential = _credential(environ)
        if credential is None:
            return None
        try:
            items = json.loads(_read_body(environ))["TransactItems"]
            backend = _dynamodb_backend(environ, region=credential[1], access_key=credential[0])
            reasons = [_real_reason(backend, *next(iter(entry.items()))) for entry in items]
        except Exception:  # noqa: BLE001 - whatever moto would refuse, moto answers
            return None
        if not reasons:
            return None
        # The item in conflict: any of them, as the seeded generator picks (on AWS it is the
        # item another transaction holds, usually one that many transactions write).
        reasons[self._randbelow(len(reasons))] = {
            "Code": "TransactionConflict",
            "Message": "Transaction is ongoing for the item",
        }
        codes = ", ".join(r["Code"] for r in reasons)
        return _dynamodb_answer(
            "400 Bad Request",
            {
                "__type": _DYNAMODB + "TransactionCanceledException",
                "Message": f"Transaction cancelled, please refer cancellation reasons for specific reasons [{codes}]",
                "CancellationReasons": reasons,
            },
        )

    def _lose_response(self, environ: dict[str, Any], service: str, operation: str) -> Iterable[bytes]:
        """Run the operation to the end (it commits), then drop the connection unanswered."""

        def discard(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Callable[[bytes], None]:
            return lambda data: None

        answer = self._app(environ, discard)
        try:
            for _ in answer:
                pass
        finally:
            close = getattr(answer, "close", None)
            if close is not None:
                close()
        self._count_fault(service, operation, LOST_RESPONSE)
        connection = environ.get("werkzeug.socket")
        if isinstance(connection, socket.socket):
            # Linger 0: the close that follows resets the connection instead of lingering;
            # the shutdown ends it now (werkzeug's file objects still hold the socket, so a
            # close() here would not release it). The client reads no answer at all.
            connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            with contextlib.suppress(OSError):  # the client is gone already: lost all the same
                connection.shutdown(socket.SHUT_RDWR)
        # werkzeug treats a ConnectionError from the app as a dropped connection: no answer,
        # no log line, and the server thread carries on.
        raise ConnectionAbortedError(f"local fault: {service}.{operation} answer lost after it ran")


def _stats_answer(environ: Mapping[str, Any], start_response: _StartResponse, stats: dict[str, Any]) -> list[bytes]:
    if environ.get("REQUEST_METHOD", "GET") not in ("GET", "HEAD"):
        return _json_answer(start_response, "405 Method Not Allowed", {"error": "method_not_allowed"})
    return _json_answer(start_response, "200 OK", stats)


class _FaultsOff:
    """No faults: moto as it is, plus ``GET /_local_faults`` saying so (one dict lookup a request)."""

    def __init__(self, app: WsgiApp, seed: int | None) -> None:
        self._app = app
        self._stats: dict[str, Any] = {
            "enabled": False,
            "rules": [],
            "seed": seed,
            "requests": 0,
            "faulted": 0,
            "by_operation": {},
            "by_outcome": {},
        }

    def __call__(self, environ: dict[str, Any], start_response: _StartResponse) -> Iterable[bytes]:
        if environ.get("PATH_INFO") == FAULTS_PATH:
            return _stats_answer(environ, start_response, self._stats)
        return self._app(environ, start_response)


def wrap(app: WsgiApp, environ: Mapping[str, str] | None = None) -> WsgiApp:
    """``app`` with the faults of ``LOCAL_FAULTS`` / ``LOCAL_FAULTS_SEED`` (default: os.environ).

    Raises ValueError if either is malformed, so a bad spec stops the server at startup.
    """
    env = os.environ if environ is None else environ
    rules = parse_rules(env.get("LOCAL_FAULTS"))
    seed = parse_seed(env.get("LOCAL_FAULTS_SEED"))
    if not rules:
        return _FaultsOff(app, seed)
    return FaultInjector(app, rules, seed)

"""LOCAL_FAULTS: the rules, the draw, and every outcome as a real botocore client reads it.

The HTTP tests run moto in this process behind ``SerializedApp(FaultInjector(...))``, as
``serve()`` builds it, on werkzeug's threaded server at a free port, and call it with
boto3 clients that do not retry (``total_max_attempts=1``), so each call sees the one answer.
"""

from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import sys
import threading
import urllib.request
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import botocore.session
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError, ConnectionClosedError
from botocore.parsers import QueryParser
from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app
from werkzeug.serving import BaseWSGIServer, WSGIRequestHandler, make_server
from werkzeug.test import Client

from devstack import faults
from devstack.faults import CHAOS, CHAOS_RULES, OUTCOMES, FaultInjector, Rule, parse_rules, parse_seed
from devstack.moto_process import MotoProcess, free_port
from devstack.moto_server import SerializedApp

# An exception in a server thread (werkzeug choking on a dropped connection) fails the test.
pytestmark = pytest.mark.filterwarnings("error::pytest.PytestUnhandledThreadExceptionWarning")

ROOT = Path(__file__).resolve().parents[2]
SIGNED = "AWS4-HMAC-SHA256 Credential=testing/20260101/us-east-1/{service}/aws4_request, SignedHeaders=host"

# ---------------------------------------------------------------------------------------
# Rules


def test_a_rule_is_service_operation_rate_outcome() -> None:
    rules = parse_rules(" dynamodb.UpdateItem=0.05:ThrottlingException , sqs.*=1:LostResponse ")
    assert rules == [
        Rule("dynamodb", "UpdateItem", 0.05, "ThrottlingException"),
        Rule("sqs", "*", 1.0, "LostResponse"),
    ]
    assert [str(r) for r in rules] == ["dynamodb.UpdateItem=0.05:ThrottlingException", "sqs.*=1:LostResponse"]


@pytest.mark.parametrize("spec", [None, "", "   "])
def test_unset_or_empty_is_off(spec: str | None) -> None:
    assert parse_rules(spec) == []


@pytest.mark.parametrize(
    ("spec", "says"),
    [
        ("dynamodb.PutItem", "is not service.Operation=rate:Outcome"),
        ("dynamodb.PutItem=0.1", "is not service.Operation=rate:Outcome"),
        ("ec2.RunInstances=0.1:ThrottlingException", "unknown service 'ec2'"),
        ("dynamodb.PutItem=lots:ThrottlingException", "'lots' is not a number"),
        ("dynamodb.PutItem=1.5:ThrottlingException", "rate 1.5 is not from 0 to 1"),
        ("dynamodb.PutItem=-0.1:ThrottlingException", "rate -0.1 is not from 0 to 1"),
        ("dynamodb.PutItem=nan:ThrottlingException", "rate nan is not from 0 to 1"),
        ("dynamodb.PutItem=0.1:Gremlins", "unknown outcome 'Gremlins'"),
        ("dynamodb.PutItm=0.1:ThrottlingException", "dynamodb has no operation 'PutItm'"),
        ("transcribe.StartJob=0.1:ThrottlingException", "transcribe has no operation 'StartJob'"),
        ("comprehend.DetectSentiment=0.1:ProvisionedThroughputExceededException", "does not happen on comprehend"),
        ("transcribe.*=0.1:TransactionConflictException", "does not happen on transcribe"),
        ("sqs.SendMessage=0.1:ProvisionedThroughputExceededException", "does not happen on sqs"),
        ("s3.PutObject=0.1:TransactionConflictException", "does not happen on s3"),
        ("dynamodb.UpdateItem=0.1:TransactionConflict", "only on dynamodb TransactWriteItems"),
        ("dynamodb.*=0.1:TransactionConflict", "only on dynamodb TransactWriteItems"),
        ("dynamodb.GetItem=0.1:TransactionConflictException", "only on dynamodb DeleteItem, PutItem, UpdateItem"),
        ("dynamodb.PutItem=0.1:ThrottlingException,", "empty rule"),
        ("dynamodb.PutItem=0.1:ThrottlingException,chaos", "'chaos' must come first"),
        ("dynamodb.*=0.6:ThrottlingException,dynamodb.PutItem=0.5:LostResponse", "dynamodb.PutItem sum to 1.1"),
        ("sqs.*=0.6:ThrottlingException,sqs.*=0.5:LostResponse", "sqs.* sum to 1.1"),
    ],
)
def test_a_malformed_spec_fails_saying_why(spec: str, says: str) -> None:
    with pytest.raises(ValueError, match="LOCAL_FAULTS") as caught:
        parse_rules(spec)
    assert says in str(caught.value)


def test_the_seed_is_an_integer_or_unset() -> None:
    assert parse_seed(None) is None
    assert parse_seed("") is None
    assert parse_seed("42") == 42
    with pytest.raises(ValueError, match="LOCAL_FAULTS_SEED: 'x' is not an integer"):
        parse_seed("x")


def test_chaos_mixes_every_outcome_on_named_data_plane_operations() -> None:
    rules = parse_rules("chaos")
    assert [str(r) for r in rules] == [str(r) for r in parse_rules(CHAOS)]
    assert len(rules) == len(CHAOS_RULES)
    assert {r.outcome for r in rules} == OUTCOMES
    # No "*": provisioning (CreateTable, CreateQueue) at startup must never fail.
    assert all(r.operation != "*" for r in rules)
    # The event-source poller must keep polling: ReceiveMessage is faulted little, and
    # never with a lost answer (its messages would stay invisible for the whole timeout).
    receive = [r for r in rules if r.operation == "ReceiveMessage"]
    assert sum(r.rate for r in receive) <= 0.01
    assert all(r.outcome != "LostResponse" for r in receive)


def test_chaos_takes_extra_rules_which_add_to_it() -> None:
    rules = parse_rules("chaos,sqs.SendMessage=0.5:ServiceUnavailable")
    assert rules[-1] == Rule("sqs", "SendMessage", 0.5, "ServiceUnavailable")
    assert rules[:-1] == parse_rules("chaos")


# ---------------------------------------------------------------------------------------
# The draw


def _never_called(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    raise AssertionError("the draw alone calls no app")


def test_one_draw_per_request_splits_it_between_the_matching_rules() -> None:
    # Independent rolls of two 50% rules would fault 75% of the requests; one draw
    # faults all of them, half with each outcome.
    spec = "dynamodb.PutItem=0.5:ThrottlingException,dynamodb.PutItem=0.5:InternalServerError"
    injector = FaultInjector(_never_called, parse_rules(spec), seed=1)
    picked = [injector.decide("dynamodb", "PutItem") for _ in range(4000)]
    assert all(rule is not None for rule in picked)
    throttled = sum(1 for rule in picked if rule is not None and rule.outcome == "ThrottlingException")
    assert 1800 < throttled < 2200


def test_a_rule_faults_its_rate_of_its_operations_and_a_star_every_operation_of_its_service() -> None:
    injector = FaultInjector(_never_called, parse_rules("dynamodb.*=0.2:ThrottlingException"), seed=2)
    for operation in ("PutItem", "Query", "TransactWriteItems"):
        hits = sum(injector.decide("dynamodb", operation) is not None for _ in range(5000))
        assert 900 < hits < 1100, operation
    assert all(injector.decide("sqs", "SendMessage") is None for _ in range(200))
    assert all(injector.decide("s3", "PutObject") is None for _ in range(200))
    assert injector.stats()["requests"] == 3 * 5000 + 400


def test_a_seed_makes_the_faults_reproducible() -> None:
    spec = "dynamodb.PutItem=0.3:ThrottlingException,dynamodb.PutItem=0.2:LostResponse"

    def run(seed: int) -> list[str | None]:
        injector = FaultInjector(_never_called, parse_rules(spec), seed=seed)
        return [getattr(injector.decide("dynamodb", "PutItem"), "outcome", None) for _ in range(300)]

    assert run(7) == run(7)
    assert run(7) != run(8)


# ---------------------------------------------------------------------------------------
# Which requests are whose


def _environ(method: str, path: str, query: str = "", service: str = "s3", **extra: Any) -> dict[str, Any]:
    return {
        "REQUEST_METHOD": method,
        "PATH_INFO": path,
        "QUERY_STRING": query,
        "HTTP_HOST": "127.0.0.1:5000",
        "HTTP_AUTHORIZATION": SIGNED.format(service=service),
        "wsgi.input": io.BytesIO(b""),
        **extra,
    }


@pytest.mark.parametrize(
    ("method", "path", "query", "operation"),
    [
        ("GET", "/", "", "ListBuckets"),
        ("PUT", "/audio", "", "CreateBucket"),
        ("HEAD", "/audio", "", "HeadBucket"),
        ("DELETE", "/audio/", "", "DeleteBucket"),
        ("GET", "/audio", "list-type=2&prefix=calls%2F", "ListObjectsV2"),
        ("GET", "/audio", "prefix=calls%2F", "ListObjects"),
        ("POST", "/audio", "delete", "DeleteObjects"),
        ("PUT", "/audio", "tagging", "PutBucketTagging"),
        ("GET", "/audio", "versioning", "GetBucketVersioning"),
        ("PUT", "/audio/calls/c1.wav", "", "PutObject"),
        ("GET", "/audio/calls/c1.wav", "", "GetObject"),
        ("HEAD", "/audio/calls/c1.wav", "", "HeadObject"),
        ("DELETE", "/audio/calls/c1.wav", "", "DeleteObject"),
        ("GET", "/audio/calls/c1.wav", "tagging", "GetObjectTagging"),
        ("POST", "/audio/calls/c1.wav", "uploads", "CreateMultipartUpload"),
        ("PUT", "/audio/calls/c1.wav", "partNumber=1&uploadId=u", "UploadPart"),
        ("POST", "/audio/calls/c1.wav", "uploadId=u", "CompleteMultipartUpload"),
        ("DELETE", "/audio/calls/c1.wav", "uploadId=u", "AbortMultipartUpload"),
    ],
)
def test_s3_operations_are_named_from_method_path_and_query(method: str, path: str, query: str, operation: str) -> None:
    assert faults.identify(_environ(method, path, query)) == ("s3", operation)
    known = botocore.session.get_session().get_service_model("s3").operation_names
    assert operation in known


def test_s3_copy_and_virtual_hosted_buckets() -> None:
    copy = _environ("PUT", "/audio/b.wav", HTTP_X_AMZ_COPY_SOURCE="/audio/a.wav")
    assert faults.identify(copy) == ("s3", "CopyObject")
    virtual = _environ("GET", "/calls/c1.wav", HTTP_HOST="audio.s3.us-east-1.amazonaws.com")
    assert faults.identify(virtual) == ("s3", "GetObject")
    assert faults.identify(_environ("GET", "/", HTTP_HOST="audio.localhost:5000")) == ("s3", "ListObjects")


def test_json_protocols_are_named_by_their_target_and_query_sqs_by_its_action() -> None:
    dynamodb = _environ("POST", "/", service="dynamodb", HTTP_X_AMZ_TARGET="DynamoDB_20120810.TransactWriteItems")
    assert faults.identify(dynamodb) == ("dynamodb", "TransactWriteItems")
    sqs = _environ("POST", "/", service="sqs", HTTP_X_AMZ_TARGET="AmazonSQS.ChangeMessageVisibility")
    assert faults.identify(sqs) == ("sqs", "ChangeMessageVisibility")
    body = b"Action=SendMessage&QueueUrl=http%3A%2F%2Fq&MessageBody=hi"
    query = _environ(
        "POST",
        "/",
        service="sqs",
        CONTENT_TYPE="application/x-www-form-urlencoded; charset=utf-8",
        CONTENT_LENGTH=str(len(body)),
    )
    query["wsgi.input"] = io.BytesIO(body)
    assert faults.identify(query) == ("sqs", "SendMessage")
    assert query["wsgi.input"].read() == body  # still there for moto


def test_transcribe_and_comprehend_are_named_by_their_json_1_1_target() -> None:
    transcribe = _environ("POST", "/", service="transcribe", HTTP_X_AMZ_TARGET="Transcribe.GetTranscriptionJob")
    assert faults.identify(transcribe) == ("transcribe", "GetTranscriptionJob")
    comprehend = _environ("POST", "/", service="comprehend", HTTP_X_AMZ_TARGET="Comprehend_20171127.DetectSentiment")
    assert faults.identify(comprehend) == ("comprehend", "DetectSentiment")
    # The prefixes are botocore's own: a renamed one would never match.
    session = botocore.session.get_session()
    for service, prefix in (("transcribe", "Transcribe"), ("comprehend", "Comprehend_20171127")):
        assert session.get_service_model(service).metadata["targetPrefix"] == prefix
    rules = parse_rules("transcribe.StartTranscriptionJob=0.5:LostResponse,comprehend.*=0.1:ServiceUnavailable")
    assert [str(r) for r in rules] == [
        "transcribe.StartTranscriptionJob=0.5:LostResponse",
        "comprehend.*=0.1:ServiceUnavailable",
    ]


def test_moto_api_unsigned_and_other_services_are_never_faulted() -> None:
    seen: list[str] = []

    def moto(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        seen.append(environ["PATH_INFO"])
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"moto"]

    spec = "dynamodb.*=1:ServiceUnavailable,sqs.*=1:ServiceUnavailable,s3.*=1:ServiceUnavailable"
    injector = FaultInjector(moto, parse_rules(spec), seed=1)
    client = Client(injector)
    signed = {"Authorization": SIGNED.format(service="s3")}
    assert client.post("/moto-api/reset", headers=signed).status_code == 200
    assert client.get("/audio/x.wav").status_code == 200  # unsigned
    sts = {"Authorization": SIGNED.format(service="sts")}
    assert client.post("/", headers=sts, data="Action=GetCallerIdentity").status_code == 200
    assert seen == ["/moto-api/reset", "/audio/x.wav", "/"]
    assert injector.stats()["requests"] == 0
    assert client.put("/audio/x.wav", headers=signed).status_code == 503


def test_when_off_requests_go_straight_through_and_the_counters_say_off() -> None:
    def moto(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        start_response("200 OK", [])
        return [b"moto"]

    app = faults.wrap(moto, {"LOCAL_FAULTS": "", "LOCAL_FAULTS_SEED": "5"})
    assert not isinstance(app, FaultInjector)
    client = Client(app)
    assert client.put("/audio/x.wav", headers={"Authorization": SIGNED.format(service="s3")}).data == b"moto"
    assert client.get("/_local_faults").json == {
        "enabled": False,
        "rules": [],
        "seed": 5,
        "requests": 0,
        "faulted": 0,
        "by_operation": {},
        "by_outcome": {},
    }


def test_the_query_protocol_gets_sqs_xml_errors() -> None:
    injector = FaultInjector(_never_called, parse_rules("sqs.SendMessage=1:ThrottlingException"), seed=1)
    response = Client(injector).post(
        "/",
        headers={"Authorization": SIGNED.format(service="sqs")},
        content_type="application/x-www-form-urlencoded",
        data="Action=SendMessage&QueueUrl=http%3A%2F%2Fq&MessageBody=hi",
    )
    model = botocore.session.get_session().get_service_model("sqs").operation_model("SendMessage")
    parsed = QueryParser().parse(
        {"status_code": response.status_code, "headers": dict(response.headers), "body": response.data},
        model.output_shape,
    )
    error = parsed["Error"]
    assert (response.status_code, error["Code"], error["Type"]) == (400, "RequestThrottled", "Sender")


# ---------------------------------------------------------------------------------------
# Over HTTP, read by botocore


class _QuietHandler(WSGIRequestHandler):
    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        pass


@dataclass
class Served:
    endpoint: str
    injector: FaultInjector

    def client(self, service: str) -> Any:
        return boto3.client(
            service,
            endpoint_url=self.endpoint,
            region_name="us-east-1",
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
            # One attempt: botocore's "max_attempts" counts retries, "total_max_attempts" all tries.
            config=Config(retries={"mode": "standard", "total_max_attempts": 1}, s3={"addressing_style": "path"}),
        )

    def counters(self) -> dict[str, Any]:
        with urllib.request.urlopen(f"{self.endpoint}/_local_faults", timeout=5) as answer:  # noqa: S310
            document: dict[str, Any] = json.load(answer)
            return document


@pytest.fixture(scope="module")
def moto_app() -> Any:
    return DomainDispatcherApplication(create_backend_app)


@pytest.fixture
def serve(moto_app: Any) -> Iterator[Callable[..., Served]]:
    servers: list[tuple[BaseWSGIServer, threading.Thread]] = []

    def start(spec: str, seed: int | None = 1) -> Served:
        injector = FaultInjector(moto_app, parse_rules(spec), seed)
        server = make_server("127.0.0.1", 0, SerializedApp(injector), threaded=True, request_handler=_QuietHandler)
        thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
        thread.start()
        servers.append((server, thread))
        return Served(f"http://127.0.0.1:{server.server_port}", injector)

    yield start
    for server, thread in servers:
        server.shutdown()
        thread.join()
        server.server_close()


def _name() -> str:
    return f"t{uuid.uuid4().hex[:12]}"


def _calls_table(ddb: Any) -> str:
    name = _name()
    ddb.create_table(
        TableName=name,
        KeySchema=[{"AttributeName": "call_id", "KeyType": "HASH"}],
        AttributeDefinitions=[{"AttributeName": "call_id", "AttributeType": "S"}],
        BillingMode="PAY_PER_REQUEST",
    )
    return name


def _packets_table(ddb: Any) -> str:
    name = _name()
    ddb.create_table(
        TableName=name,
        KeySchema=[{"AttributeName": "call_id", "KeyType": "HASH"}, {"AttributeName": "sequence", "KeyType": "RANGE"}],
        AttributeDefinitions=[
            {"AttributeName": "call_id", "AttributeType": "S"},
            {"AttributeName": "sequence", "AttributeType": "N"},
        ],
        BillingMode="PAY_PER_REQUEST",
    )
    return name


def _error(caught: pytest.ExceptionInfo[ClientError]) -> tuple[str, int]:
    response: Any = caught.value.response
    return response["Error"]["Code"], response["ResponseMetadata"]["HTTPStatusCode"]


@pytest.mark.parametrize(
    ("outcome", "status"),
    [
        ("ProvisionedThroughputExceededException", 400),
        ("ThrottlingException", 400),
        ("InternalServerError", 500),
        ("ServiceUnavailable", 503),
        ("TransactionConflictException", 400),
    ],
)
def test_dynamodb_errors_reach_botocore_as_aws_sends_them(
    serve: Callable[..., Served], outcome: str, status: int
) -> None:
    served = serve(f"dynamodb.PutItem=1:{outcome},dynamodb.UpdateItem=1:{outcome}")
    ddb = served.client("dynamodb")
    table = _calls_table(ddb)
    with pytest.raises(ClientError) as put:
        ddb.put_item(TableName=table, Item={"call_id": {"S": "c1"}})
    assert _error(put) == (outcome, status)
    with pytest.raises(ClientError) as update:
        ddb.update_item(
            TableName=table,
            Key={"call_id": {"S": "c1"}},
            UpdateExpression="SET n = :n",
            ExpressionAttributeValues={":n": {"N": "1"}},
        )
    assert _error(update) == (outcome, status)
    assert "Item" not in ddb.get_item(TableName=table, Key={"call_id": {"S": "c1"}})  # answered instead of run


@pytest.mark.parametrize(
    ("outcome", "code", "status"),
    [
        ("ThrottlingException", "RequestThrottled", 400),
        ("InternalServerError", "InternalFailure", 500),
        ("ServiceUnavailable", "ServiceUnavailable", 503),
    ],
)
def test_sqs_errors_reach_botocore_as_aws_sends_them(
    serve: Callable[..., Served], outcome: str, code: str, status: int
) -> None:
    served = serve(f"sqs.SendMessage=1:{outcome}")
    sqs = served.client("sqs")
    url = sqs.create_queue(QueueName=_name())["QueueUrl"]
    with pytest.raises(ClientError) as caught:
        sqs.send_message(QueueUrl=url, MessageBody="work")
    assert _error(caught) == (code, status)
    assert "Messages" not in sqs.receive_message(QueueUrl=url, WaitTimeSeconds=0)


@pytest.mark.parametrize(
    ("outcome", "code", "status"),
    [
        ("ThrottlingException", "SlowDown", 503),
        ("InternalServerError", "InternalError", 500),
        ("ServiceUnavailable", "ServiceUnavailable", 503),
    ],
)
def test_s3_errors_reach_botocore_as_aws_sends_them(
    serve: Callable[..., Served], outcome: str, code: str, status: int
) -> None:
    served = serve(f"s3.PutObject=1:{outcome}")
    s3 = served.client("s3")
    bucket = _name()
    s3.create_bucket(Bucket=bucket)
    with pytest.raises(ClientError) as caught:
        s3.put_object(Bucket=bucket, Key="calls/c1.wav", Body=b"RIFF")
    assert _error(caught) == (code, status)
    assert "Contents" not in s3.list_objects_v2(Bucket=bucket)


_JSON11_OUTCOMES = [
    ("ThrottlingException", "ThrottlingException", 400),
    ("InternalServerError", "InternalFailure", 500),
    ("ServiceUnavailable", "ServiceUnavailable", 503),
]


def _start_job(transcribe: Any, name: str) -> None:
    transcribe.start_transcription_job(
        TranscriptionJobName=name,
        LanguageCode="en-US",
        MediaFormat="wav",
        Media={"MediaFileUri": "s3://audio-bucket/calls/c1/recording.wav"},
    )


@pytest.mark.parametrize(("outcome", "code", "status"), _JSON11_OUTCOMES)
def test_transcribe_errors_reach_botocore_as_aws_sends_them(
    serve: Callable[..., Served], outcome: str, code: str, status: int
) -> None:
    served = serve(f"transcribe.StartTranscriptionJob=1:{outcome},transcribe.GetTranscriptionJob=1:{outcome}")
    transcribe = served.client("transcribe")
    name = _name()
    with pytest.raises(ClientError) as started:
        _start_job(transcribe, name)
    assert _error(started) == (code, status)
    assert started.value.response["ResponseMetadata"]["HTTPHeaders"]["content-type"] == "application/x-amz-json-1.1"
    with pytest.raises(ClientError) as got:
        transcribe.get_transcription_job(TranscriptionJobName=name)
    assert _error(got) == (code, status)
    # Answered instead of run: no job was started.
    assert transcribe.list_transcription_jobs(JobNameContains=name)["TranscriptionJobSummaries"] == []
    assert served.counters()["by_operation"]["transcribe.StartTranscriptionJob"] == {"requests": 1, "faulted": 1}


@pytest.mark.parametrize(("outcome", "code", "status"), _JSON11_OUTCOMES)
def test_comprehend_errors_reach_botocore_as_aws_sends_them(
    serve: Callable[..., Served], outcome: str, code: str, status: int
) -> None:
    served = serve(f"comprehend.DetectSentiment=1:{outcome}")
    comprehend = served.client("comprehend")
    with pytest.raises(ClientError) as caught:
        comprehend.detect_sentiment(Text="thanks, that fixed it", LanguageCode="en")
    assert _error(caught) == (code, status)
    assert caught.value.response["Error"]["Message"]  # the message is read from the body too
    assert served.counters()["by_outcome"] == {outcome: 1}


def test_a_lost_transcription_start_has_started_the_job(serve: Callable[..., Served]) -> None:
    served = serve("transcribe.StartTranscriptionJob=1:LostResponse")
    transcribe = served.client("transcribe")
    name = _name()
    with pytest.raises(ConnectionClosedError):
        _start_job(transcribe, name)
    # The job exists though the client saw no answer: a retry of the start meets its name
    # taken (ConflictException), which the AI provider takes as "go on with that job".
    summaries = transcribe.list_transcription_jobs(JobNameContains=name)["TranscriptionJobSummaries"]
    assert [s["TranscriptionJobName"] for s in summaries] == [name]


def _packet_transaction(calls: str, packets: str, sequence: int) -> list[dict[str, Any]]:
    """The app's packet write: put the packet if new, while its call is IN_PROGRESS."""
    return [
        {
            "Put": {
                "TableName": packets,
                "Item": {"call_id": {"S": "c1"}, "sequence": {"N": str(sequence)}, "data": {"S": "AAAA"}},
                "ConditionExpression": "attribute_not_exists(call_id)",
                "ReturnValuesOnConditionCheckFailure": "ALL_OLD",
            }
        },
        {
            "ConditionCheck": {
                "TableName": calls,
                "Key": {"call_id": {"S": "c1"}},
                "ConditionExpression": "#s = :open",
                "ExpressionAttributeNames": {"#s": "state"},
                "ExpressionAttributeValues": {":open": {"S": "IN_PROGRESS"}},
                "ReturnValuesOnConditionCheckFailure": "ALL_OLD",
            }
        },
    ]


def _cancelled(ddb: Any, items: list[dict[str, Any]]) -> dict[str, Any]:
    with pytest.raises(ClientError) as caught:
        ddb.transact_write_items(TransactItems=items)
    assert _error(caught) == ("TransactionCanceledException", 400)
    response: dict[str, Any] = caught.value.response
    return response


def test_a_transaction_conflict_cancels_with_the_other_items_real_outcome(serve: Callable[..., Served]) -> None:
    served = serve("dynamodb.TransactWriteItems=1:TransactionConflict", seed=3)
    ddb = served.client("dynamodb")
    calls, packets = _calls_table(ddb), _packets_table(ddb)
    ddb.put_item(TableName=calls, Item={"call_id": {"S": "c1"}, "state": {"S": "IN_PROGRESS"}})
    conflict = {"Code": "TransactionConflict", "Message": "Transaction is ongoing for the item"}
    seen = set()
    for _ in range(6):
        response = _cancelled(ddb, _packet_transaction(calls, packets, sequence=1))
        reasons = response["CancellationReasons"]
        assert reasons in ([conflict, {"Code": "None"}], [{"Code": "None"}, conflict])
        codes = ", ".join(r["Code"] for r in reasons)
        assert response["Error"]["Message"] == (
            f"Transaction cancelled, please refer cancellation reasons for specific reasons [{codes}]"
        )
        seen.add(reasons.index(conflict))
    assert seen == {0, 1}  # the seeded generator picks either item
    assert (
        ddb.query(
            TableName=packets, KeyConditionExpression="call_id = :c", ExpressionAttributeValues={":c": {"S": "c1"}}
        )["Count"]
        == 0
    )  # nothing written


def test_a_conflict_and_a_failed_condition_arrive_together(serve: Callable[..., Served]) -> None:
    served = serve("dynamodb.TransactWriteItems=1:TransactionConflict", seed=4)
    ddb = served.client("dynamodb")
    calls, packets = _calls_table(ddb), _packets_table(ddb)
    call = {"call_id": {"S": "c1"}, "state": {"S": "PROCESSING_AI"}}
    stored = {"call_id": {"S": "c1"}, "sequence": {"N": "1"}, "data": {"S": "BBBB"}}
    ddb.put_item(TableName=calls, Item=call)
    ddb.put_item(TableName=packets, Item=stored)
    conflict = {"Code": "TransactionConflict", "Message": "Transaction is ongoing for the item"}
    failed = {"Code": "ConditionalCheckFailed", "Message": "The conditional request failed"}
    seen = set()
    for _ in range(6):
        reasons = _cancelled(ddb, _packet_transaction(calls, packets, sequence=1))["CancellationReasons"]
        # Both conditions fail (the packet exists, the call has ended): whichever item is
        # in conflict, the other reports its failed condition with its current item.
        assert reasons in ([conflict, {**failed, "Item": call}], [{**failed, "Item": stored}, conflict])
        seen.add(reasons.index(conflict))
    assert seen == {0, 1}
    assert ddb.get_item(TableName=packets, Key={"call_id": {"S": "c1"}, "sequence": {"N": "1"}})["Item"] == stored


def test_a_transaction_moto_would_refuse_is_left_to_moto(serve: Callable[..., Served]) -> None:
    served = serve("dynamodb.TransactWriteItems=1:TransactionConflict")
    ddb = served.client("dynamodb")
    with pytest.raises(ClientError) as caught:
        ddb.transact_write_items(TransactItems=_packet_transaction("no-such-calls", "no-such-packets", 1))
    assert _error(caught)[0] == "ResourceNotFoundException"
    assert served.counters()["faulted"] == 0


def test_a_lost_response_commits_then_drops_the_connection(
    serve: Callable[..., Served], caplog: pytest.LogCaptureFixture
) -> None:
    served = serve("dynamodb.PutItem=1:LostResponse,sqs.SendMessage=1:LostResponse")
    ddb, sqs = served.client("dynamodb"), served.client("sqs")
    table = _calls_table(ddb)
    url = sqs.create_queue(QueueName=_name())["QueueUrl"]
    with caplog.at_level(logging.INFO, logger="werkzeug"):
        with pytest.raises(ConnectionClosedError):
            ddb.put_item(TableName=table, Item={"call_id": {"S": "c1"}, "state": {"S": "IN_PROGRESS"}})
        with pytest.raises(ConnectionClosedError):
            sqs.send_message(QueueUrl=url, MessageBody="work")
        # The writes happened: only their answers were lost. And the server carries on.
        item = ddb.get_item(TableName=table, Key={"call_id": {"S": "c1"}})["Item"]
        assert item == {"call_id": {"S": "c1"}, "state": {"S": "IN_PROGRESS"}}
        messages = sqs.receive_message(QueueUrl=url, WaitTimeSeconds=0, MaxNumberOfMessages=10)["Messages"]
        assert [m["Body"] for m in messages] == ["work"]  # sent once: the client did not retry
        assert served.counters()["by_outcome"] == {"LostResponse": 2}
    assert not [r for r in caplog.records if r.name == "werkzeug"]  # dropped without a word


def test_the_counters_are_served_at_local_faults(serve: Callable[..., Served]) -> None:
    served = serve("dynamodb.PutItem=1:ThrottlingException", seed=9)
    ddb = served.client("dynamodb")
    table = _calls_table(ddb)
    for _ in range(2):
        with pytest.raises(ClientError):
            ddb.put_item(TableName=table, Item={"call_id": {"S": "c1"}})
    ddb.get_item(TableName=table, Key={"call_id": {"S": "c1"}})
    assert served.counters() == {
        "enabled": True,
        "rules": ["dynamodb.PutItem=1:ThrottlingException"],
        "seed": 9,
        "requests": 4,
        "faulted": 2,
        "by_operation": {
            "dynamodb.CreateTable": {"requests": 1, "faulted": 0},
            "dynamodb.GetItem": {"requests": 1, "faulted": 0},
            "dynamodb.PutItem": {"requests": 2, "faulted": 2},
        },
        "by_outcome": {"ThrottlingException": 2},
    }


# ---------------------------------------------------------------------------------------
# The moto server process reads LOCAL_FAULTS


def test_the_moto_server_reads_local_faults_from_its_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOCAL_FAULTS", "chaos,sqs.SendMessage=0.5:ServiceUnavailable")
    monkeypatch.setenv("LOCAL_FAULTS_SEED", "11")
    moto = MotoProcess("127.0.0.1", free_port()).start()
    try:
        with urllib.request.urlopen(f"{moto.endpoint}/_local_faults", timeout=5) as answer:  # noqa: S310
            counters = json.load(answer)
    finally:
        moto.stop()
    assert counters["enabled"] is True
    assert counters["seed"] == 11
    assert counters["rules"] == [*CHAOS_RULES, "sqs.SendMessage=0.5:ServiceUnavailable"]


def test_the_moto_server_refuses_to_start_on_a_malformed_spec() -> None:
    env = {**os.environ, "LOCAL_FAULTS": "dynamodb.PutItem=2:ThrottlingException", "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-m", "devstack.moto_server", "--port", str(free_port())],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode != 0
    assert "ready" not in done.stdout
    assert "LOCAL_FAULTS: rule 'dynamodb.PutItem=2:ThrottlingException': rate 2 is not from 0 to 1" in done.stderr

"""Promises template.yaml makes that no local test can catch: moto enforces no IAM, runs no
alarm and knows no Lambda timeouts. Each test reads the real template."""

from __future__ import annotations

import re
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Any

import pytest

from devstack.template import load_template, resources_of_type, sqs_event_sources

Template = dict[str, Any]

# What the SAM policy templates once used here grant (samtranslator's policy_templates.json),
# so that a function going back to one is judged by what it really allows.
_SAM_POLICY_TEMPLATES: dict[str, tuple[str, tuple[str, ...], tuple[str, ...]]] = {
    # name: (parameter naming the resource, actions, resource suffixes)
    "DynamoDBCrudPolicy": (
        "TableName",
        (
            "dynamodb:GetItem",
            "dynamodb:DeleteItem",
            "dynamodb:PutItem",
            "dynamodb:Scan",
            "dynamodb:Query",
            "dynamodb:UpdateItem",
            "dynamodb:BatchWriteItem",
            "dynamodb:BatchGetItem",
            "dynamodb:DescribeTable",
            "dynamodb:ConditionCheckItem",
        ),
        ("", "/index/*"),
    ),
    "DynamoDBReadPolicy": (
        "TableName",
        ("dynamodb:GetItem", "dynamodb:Scan", "dynamodb:Query", "dynamodb:BatchGetItem", "dynamodb:DescribeTable"),
        ("", "/index/*"),
    ),
    "SQSSendMessagePolicy": ("QueueName", ("sqs:SendMessage*",), ("",)),
    "SQSPollerPolicy": (
        "QueueName",
        (
            "sqs:ChangeMessageVisibility",
            "sqs:ChangeMessageVisibilityBatch",
            "sqs:DeleteMessage",
            "sqs:DeleteMessageBatch",
            "sqs:GetQueueAttributes",
            "sqs:ReceiveMessage",
        ),
        ("",),
    ),
}

FUNCTIONS = ("IngestFunction", "AiWorkerFunction", "DlqHandlerFunction", "SweeperFunction")

# What each function's code calls, on what: the grants it cannot work without, and all it
# may have. TransactWriteItems is authorised item by item, as PutItem, UpdateItem or
# ConditionCheckItem on each item's table.
NEEDED: dict[str, set[tuple[str, str]]] = {
    "IngestFunction": {
        ("dynamodb:GetItem", "CallsTable"),
        ("dynamodb:UpdateItem", "CallsTable"),
        ("dynamodb:ConditionCheckItem", "CallsTable"),
        ("dynamodb:Query", "CallsTable/index/by-state"),
        ("dynamodb:PutItem", "PacketsTable"),
        ("dynamodb:GetItem", "PacketsTable"),
        ("dynamodb:Query", "PacketsTable"),
        ("dynamodb:Query", "PacketsTable/index/by-arrival"),
        ("dynamodb:UpdateItem", "PacketSlotsTable"),
        ("dynamodb:GetItem", "PacketSlotsTable"),
        ("dynamodb:Query", "PacketSlotsTable"),
        ("sqs:SendMessage", "WorkQueue"),
        ("s3:GetObject", "RecordingsBucket/calls/*"),
        ("s3:PutObject", "RecordingsBucket/calls/*/record.json"),
    },
    "AiWorkerFunction": {
        ("dynamodb:GetItem", "CallsTable"),
        ("dynamodb:UpdateItem", "CallsTable"),
        ("dynamodb:Query", "PacketsTable"),
        ("dynamodb:Query", "PacketSlotsTable"),
        ("s3:GetObject", "RecordingsBucket/calls/*"),
        ("s3:PutObject", "RecordingsBucket/calls/*"),
        ("sqs:SendMessage", "WorkQueue"),
        # AI_PROVIDER=aws; these actions take no resource ARN.
        ("transcribe:StartTranscriptionJob", "*"),
        ("transcribe:GetTranscriptionJob", "*"),
        ("comprehend:DetectSentiment", "*"),
        ("sqs:ReceiveMessage", "WorkQueue"),
        ("sqs:DeleteMessage", "WorkQueue"),
        ("sqs:GetQueueAttributes", "WorkQueue"),
        ("sqs:ChangeMessageVisibility", "WorkQueue"),
    },
    "DlqHandlerFunction": {
        ("dynamodb:GetItem", "CallsTable"),
        ("dynamodb:UpdateItem", "CallsTable"),
        ("sqs:ReceiveMessage", "DeadLetterQueue"),
        ("sqs:DeleteMessage", "DeadLetterQueue"),
        ("sqs:GetQueueAttributes", "DeadLetterQueue"),
        ("sqs:ChangeMessageVisibility", "DeadLetterQueue"),
    },
    "SweeperFunction": {
        ("dynamodb:GetItem", "CallsTable"),
        ("dynamodb:UpdateItem", "CallsTable"),
        ("dynamodb:Query", "CallsTable/index/by-state"),
        ("sqs:SendMessage", "WorkQueue"),
        # Archiving: the packets' arrivals, and the record beside the recording.
        ("dynamodb:Query", "PacketsTable/index/by-arrival"),
        ("dynamodb:Query", "PacketSlotsTable"),
        ("s3:PutObject", "RecordingsBucket/calls/*/record.json"),
    },
}

DYNAMODB_WRITES = (
    "dynamodb:PutItem",
    "dynamodb:UpdateItem",
    "dynamodb:DeleteItem",
    "dynamodb:BatchWriteItem",
    "dynamodb:PartiQLInsert",
    "dynamodb:PartiQLUpdate",
    "dynamodb:PartiQLDelete",
)


@dataclass(frozen=True)
class Grant:
    """One allowed action pattern on one resource: a logical id, optionally with a path
    ("CallsTable/index/by-state"), or a pattern such as "*" that may match anything."""

    action: str
    resource: str

    def allows_action(self, action: str) -> bool:
        """Whether the grant allows the action, on whatever resource."""
        return fnmatchcase(action.lower(), self.action.lower())

    def allows(self, action: str, resource: str) -> bool:
        return self.allows_action(action) and fnmatchcase(resource, self.resource)

    def touches(self, logical_id: str) -> bool:
        """Whether the grant may reach the resource or anything under it (its indexes)."""
        return fnmatchcase(logical_id, self.resource) or self.resource.split("/")[0] == logical_id


_EVERYTHING = [Grant("*", "*")]


def _resource(value: Any) -> str:
    """A statement's resource as a logical id (plus path); anything else as a wildcard."""
    if isinstance(value, dict) and "Fn::GetAtt" in value:
        name, attribute = value["Fn::GetAtt"]
        return str(name) if attribute in ("Arn", "QueueName") else "*"
    if isinstance(value, dict) and "Ref" in value:
        return str(value["Ref"])
    if isinstance(value, dict) and isinstance(value.get("Fn::Sub"), str):
        # "${CallsTable.Arn}/index/by-state" -> "CallsTable/index/by-state"
        text = re.sub(r"\$\{([A-Za-z0-9]+)\.Arn\}", r"\1", value["Fn::Sub"])
        return "*" if "${" in text or ":" in text else text
    return "*"  # a literal ARN or "*": assume the worst


def _as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def grants(template: Template, function: str) -> list[Grant]:
    """Everything the function's Policies allow. Anything not understood allows everything."""
    found: list[Grant] = []
    for policy in template["Resources"][function]["Properties"].get("Policies", []):
        if isinstance(policy, dict) and "Statement" in policy:
            for statement in _as_list(policy["Statement"]):
                if statement.get("Effect") != "Allow":
                    continue
                if "NotAction" in statement or "NotResource" in statement:
                    found += _EVERYTHING
                    continue
                found += [
                    Grant(action, _resource(resource))
                    for action in _as_list(statement["Action"])
                    for resource in _as_list(statement["Resource"])
                ]
        elif isinstance(policy, dict) and len(policy) == 1 and next(iter(policy)) in _SAM_POLICY_TEMPLATES:
            name, parameters = next(iter(policy.items()))
            parameter, actions, suffixes = _SAM_POLICY_TEMPLATES[name]
            target = _resource(parameters[parameter])
            found += [Grant(action, target + suffix) for action in actions for suffix in suffixes]
        else:  # a managed policy, or a policy template not listed above
            found += _EVERYTHING
    return found


def timeout_s(template: Template, function: str) -> int:
    props = template["Resources"][function]["Properties"]
    return int(props.get("Timeout", template.get("Globals", {}).get("Function", {}).get("Timeout", 3)))


def visibility_timeout_s(template: Template, queue: str) -> int:
    return int(template["Resources"][queue].get("Properties", {}).get("VisibilityTimeout", 30))  # SQS's default


@pytest.fixture(scope="module")
def template() -> Template:
    return load_template()


# ------------------------------------------------------------------------ permissions


@pytest.mark.parametrize("function", FUNCTIONS)
def test_policies_are_explicit_statements(template: Template, function: str) -> None:
    policies = template["Resources"][function]["Properties"]["Policies"]

    assert policies
    assert all(isinstance(p, dict) and "Statement" in p for p in policies), (
        f"{function}: policy templates and managed policies grant more than the code uses"
    )


@pytest.mark.parametrize("function", FUNCTIONS)
def test_no_function_may_delete_scan_or_batch_write(template: Template, function: str) -> None:
    forbidden = ("dynamodb:DeleteItem", "dynamodb:Scan", "dynamodb:BatchWriteItem")

    allowed = [(a, g) for g in grants(template, function) for a in forbidden if g.allows_action(a)]

    assert not allowed


def test_ai_worker_cannot_write_packets(template: Template) -> None:
    writes = [
        g
        for g in grants(template, "AiWorkerFunction")
        if (g.touches("PacketsTable") or g.touches("PacketSlotsTable"))
        and any(g.allows_action(w) for w in DYNAMODB_WRITES)
    ]

    assert not writes


def test_dlq_handler_has_no_access_to_packets(template: Template) -> None:
    touching = [
        g for g in grants(template, "DlqHandlerFunction") if g.touches("PacketsTable") or g.touches("PacketSlotsTable")
    ]

    assert not touching


@pytest.mark.parametrize("function", FUNCTIONS)
def test_function_has_every_grant_its_code_needs(template: Template, function: str) -> None:
    # Moto enforces no IAM: a missing grant would show only once deployed.
    have = grants(template, function)
    missing = {(a, r) for a, r in NEEDED[function] if not any(g.allows(a, r) for g in have)}

    assert not missing


@pytest.mark.parametrize("function", FUNCTIONS)
def test_function_has_no_grant_beyond_what_its_code_needs(template: Template, function: str) -> None:
    extra = {(g.action, g.resource) for g in grants(template, function)} - NEEDED[function]

    assert not extra, "grant only what the code calls (and add it to NEEDED with the code that calls it)"


# ---------------------------------------------------------------------- queues, timeouts


def test_each_queue_with_an_event_source_is_checked(template: Template) -> None:
    assert {(s.queue, s.function) for s in sqs_event_sources(template)} == {
        ("WorkQueue", "AiWorkerFunction"),
        ("DeadLetterQueue", "DlqHandlerFunction"),
    }


@pytest.mark.parametrize(
    ("queue", "function"), [("WorkQueue", "AiWorkerFunction"), ("DeadLetterQueue", "DlqHandlerFunction")]
)
def test_queue_visibility_timeout_is_at_least_six_times_its_function_timeout(
    template: Template, queue: str, function: str
) -> None:
    # Lambda's advice for SQS event sources: a message must not come back while a batch
    # holding it may still be running, retries of throttled invocations included.
    assert visibility_timeout_s(template, queue) >= 6 * timeout_s(template, function)


# --------------------------------------------------------------------------- alarms


def test_every_alarm_notifies_the_alarm_topic(template: Template) -> None:
    alarms = resources_of_type(template, "AWS::CloudWatch::Alarm")
    topic = {"Ref": "AlarmTopic"}

    assert "DeadLetterQueueDepthAlarm" in alarms
    assert template["Resources"]["AlarmTopic"]["Type"] == "AWS::SNS::Topic"
    for name, alarm in alarms.items():
        props = alarm["Properties"]
        assert topic in props.get("AlarmActions", []), f"{name} alarms no one"
        assert topic in props.get("OKActions", []), f"{name} never says it is over"


def test_cloudwatch_can_publish_to_the_encrypted_alarm_topic(template: Template) -> None:
    # CloudWatch alarms cannot use the AWS managed key alias/aws/sns (its policy does not
    # let them, and cannot be changed): their notifications would be dropped.
    key_ref = template["Resources"]["AlarmTopic"]["Properties"]["KmsMasterKeyId"]
    assert isinstance(key_ref, dict) and "Ref" in key_ref, "the topic needs a key whose policy we own"
    key = template["Resources"][key_ref["Ref"]]
    assert key["Type"] == "AWS::KMS::Key"

    cloudwatch_actions = {
        action
        for statement in key["Properties"]["KeyPolicy"]["Statement"]
        if statement["Effect"] == "Allow"
        and "cloudwatch.amazonaws.com" in _as_list(statement.get("Principal", {}).get("Service", []))
        for action in _as_list(statement["Action"])
    }
    assert {"kms:Decrypt", "kms:GenerateDataKey*"} <= cloudwatch_actions


def test_alarm_email_is_subscribed_only_when_given(template: Template) -> None:
    assert template["Parameters"]["AlarmEmail"]["Default"] == ""
    subscriptions = resources_of_type(template, "AWS::SNS::Subscription")
    assert len(subscriptions) == 1
    (subscription,) = subscriptions.values()
    assert subscription["Properties"]["TopicArn"] == {"Ref": "AlarmTopic"}
    assert subscription["Properties"]["Protocol"] == "email"
    assert subscription["Properties"]["Endpoint"] == {"Ref": "AlarmEmail"}
    assert template["Conditions"][subscription["Condition"]] == {
        "Fn::Not": [{"Fn::Equals": [{"Ref": "AlarmEmail"}, ""]}]
    }


# -------------------------------------------------------------------------- tables


@pytest.mark.parametrize("table", ["PacketsTable", "PacketSlotsTable"])
def test_packet_tables_expire_items_by_the_attribute_the_store_writes(template: Template, table: str) -> None:
    from callcore.adapters.dynamodb_store import EXPIRES_AT

    ttl = template["Resources"][table]["Properties"]["TimeToLiveSpecification"]

    assert ttl == {"AttributeName": EXPIRES_AT, "Enabled": True}


def test_packets_table_has_a_keys_only_arrival_index(template: Template) -> None:
    props = template["Resources"]["PacketsTable"]["Properties"]
    (index,) = [i for i in props.get("LocalSecondaryIndexes", []) if i["IndexName"] == "by-arrival"]

    assert index["KeySchema"] == [
        {"AttributeName": "call_id", "KeyType": "HASH"},
        {"AttributeName": "received_at", "KeyType": "RANGE"},
    ]
    assert index["Projection"] == {"ProjectionType": "KEYS_ONLY"}
    assert {"AttributeName": "received_at", "AttributeType": "N"} in props["AttributeDefinitions"]


@pytest.mark.parametrize("function", FUNCTIONS)
def test_every_function_logs_to_its_own_log_group_kept_log_retention_days(template: Template, function: str) -> None:
    groups = [
        res["Properties"]
        for res in template["Resources"].values()
        if res["Type"] == "AWS::Logs::LogGroup"
        and res["Properties"]["LogGroupName"] == {"Fn::Sub": f"/aws/lambda/${{{function}}}"}
    ]

    assert groups == [
        {"LogGroupName": {"Fn::Sub": f"/aws/lambda/${{{function}}}"}, "RetentionInDays": {"Ref": "LogRetentionDays"}}
    ]


def test_the_api_writes_access_logs_to_a_log_group_kept_log_retention_days(template: Template) -> None:
    setting = template["Resources"]["CallApi"]["Properties"]["AccessLogSettings"]
    group = setting["DestinationArn"]["Fn::GetAtt"][0]

    assert template["Resources"][group]["Properties"]["RetentionInDays"] == {"Ref": "LogRetentionDays"}
    assert "$context.status" in setting["Format"]


def test_every_request_reaches_the_app_through_an_http_api_on_its_default_stage(template: Template) -> None:
    api = template["Resources"]["CallApi"]
    events = template["Resources"]["IngestFunction"]["Properties"]["Events"]

    assert api["Type"] == "AWS::Serverless::HttpApi"
    # No stage name in the path: the app sees the paths it serves (Mangum strips none).
    assert api["Properties"]["StageName"] == "$default"
    assert api["Properties"]["DefaultRouteSettings"] == {
        "ThrottlingRateLimit": {"Ref": "ThrottleRateLimit"},
        "ThrottlingBurstLimit": {"Ref": "ThrottleBurstLimit"},
    }
    assert events == {
        "Proxy": {
            "Type": "HttpApi",
            "Properties": {
                "ApiId": {"Ref": "CallApi"},
                "Path": "/{proxy+}",
                "Method": "ANY",
                "PayloadFormatVersion": "2.0",
            },
        }
    }


def test_the_deployed_api_cannot_be_open_its_keys_are_a_required_secret_parameter(template: Template) -> None:
    # The app's X-API-Key check is the API's only gate: a deploy must give it a key.
    keys = template["Parameters"]["AppApiKeys"]
    env = template["Globals"]["Function"]["Environment"]["Variables"]

    pattern = re.compile(keys["AllowedPattern"])
    assert "Default" not in keys
    assert keys["NoEcho"] is True
    assert env["API_KEYS"] == {"Ref": "AppApiKeys"}
    assert pattern.fullmatch("0123456789abcdef0123456789abcdef")
    assert pattern.fullmatch("0123456789abcdef,fedcba9876543210")
    # Nothing that the app would read as no key, or as a short one.
    for open_or_weak in ("", ",,,,,,,,,,,,,,,,", " " * 16, "x,0123456789abcdef", "0123456789abcdef,", "short"):
        assert not pattern.fullmatch(open_or_weak), open_or_weak


def test_a_failed_scheduled_sweep_goes_to_its_dead_letter_queue(template: Template) -> None:
    sweeper = template["Resources"]["SweeperFunction"]["Properties"]
    on_failure = sweeper["EventInvokeConfig"]["DestinationConfig"]["OnFailure"]
    rule = sweeper["Events"]["SweepSchedule"]["Properties"]

    assert on_failure == {"Type": "SQS", "Destination": {"Fn::GetAtt": ["SweeperDeadLetterQueue", "Arn"]}}
    assert rule["DeadLetterConfig"] == {"Arn": {"Fn::GetAtt": ["SweeperDeadLetterQueue", "Arn"]}}


def test_the_dashboard_shows_every_metric_the_functions_emit(template: Template) -> None:
    import json
    import re

    from callcore.metrics import NAMESPACE, Metric

    body = template["Resources"]["Dashboard"]["Properties"]["DashboardBody"]["Fn::Sub"]
    widgets = json.loads(re.sub(r"\$\{[^}]+\}", "x", body))["widgets"]
    shown = {m[1] for w in widgets for m in w["properties"]["metrics"] if m[0] == NAMESPACE}

    assert shown == {m.value for m in Metric}


@pytest.mark.parametrize(
    "alarm", ["DeadLetterQueueDepthAlarm", "WorkerErrorsAlarm", "Api5xxAlarm", "CallsPastRetryHorizonAlarm"]
)
def test_each_alarm_notifies_the_alarm_topic_on_alarm_and_ok(template: Template, alarm: str) -> None:
    props = template["Resources"][alarm]["Properties"]

    assert props["AlarmActions"] == props["OKActions"] == [{"Ref": "AlarmTopic"}]


def test_the_past_horizon_alarm_watches_the_metric_the_sweeper_emits(template: Template) -> None:
    from callcore.metrics import NAMESPACE, SERVICE, Metric

    props = template["Resources"]["CallsPastRetryHorizonAlarm"]["Properties"]

    assert (props["Namespace"], props["MetricName"]) == (NAMESPACE, Metric.CALLS_PAST_RETRY_HORIZON.value)
    assert {d["Name"]: d["Value"] for d in props["Dimensions"]} == {"function": "SweeperFunction", "service": SERVICE}

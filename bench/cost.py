"""What a call-minute costs: the units the local stack counted (devstack/usage.py), priced
from bench/prices.json (us-east-1 list prices, each with its source page and the date
it was read).

Infrastructure: API Gateway HTTP API requests, Lambda requests and GB-seconds (measured
handler seconds x the template's memory size, Arm), DynamoDB request units and the bytes
its tables hold for as long as they hold them, SQS requests,
S3 requests and the recording's storage for RecordingRetentionDays, and CloudWatch Logs
ingestion (what each function wrote, Lambda's own lines, the API's access log). AI: Amazon Transcribe
per audio second and Comprehend per 100 characters for ``aws``; for ``local``, the
worker's Lambda GB-seconds at the measured real-time factor.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PRICES = Path(__file__).resolve().parent / "prices.json"
# Comprehend bills each DetectSentiment request in 100-character units, 3 at least; the
# provider sends one request per 5,000-byte chunk.
COMPREHEND_CHUNK_BYTES = 5000


def load_prices(path: Path = PRICES) -> dict[str, Any]:
    prices: dict[str, Any] = json.loads(path.read_text())
    return prices


def price(prices: dict[str, Any], name: str) -> float:
    return float(prices["prices"][name]["usd"])


def function_memory_mb(template: dict[str, Any]) -> dict[str, int]:
    """Each function's MemorySize: its own, or the Globals'."""
    default = int(template.get("Globals", {}).get("Function", {}).get("MemorySize", 128))
    return {
        name: int(res["Properties"].get("MemorySize", default))
        for name, res in template["Resources"].items()
        if res["Type"] == "AWS::Serverless::Function"
    }


# CloudWatch Logs counts each event's UTF-8 bytes plus 26 bytes (PutLogEvents' batch size
# rule); priced here as ingested bytes, so an upper bound if ingestion bills the text alone.
LOG_EVENT_OVERHEAD_BYTES = 26
# Lambda's own lines for each invocation in the text format (AWS's example in "Log and
# monitor Python Lambda functions"), at this project's memory sizes. The JSON format sends
# them as larger objects; SystemLogLevel WARN sends neither.
PLATFORM_LINES = (
    "START RequestId: 8f507cfc-xmpl-4697-b07a-ac58fc914c95 Version: $LATEST",
    "END RequestId: 8f507cfc-xmpl-4697-b07a-ac58fc914c95",
    "REPORT RequestId: 8f507cfc-xmpl-4697-b07a-ac58fc914c95\tDuration: 15.74 ms\tBilled Duration: 16 ms"
    "\tMemory Size: 512 MB\tMax Memory Used: 86 MB\t",
)
# The $context variables of an API access log line, as a batch request fills them: a
# 36-character call id, on the $default stage (no stage in the path).
ACCESS_LOG_CONTEXT = {
    "requestId": "c6af9ac6-7b61-11e6-9a41-93e8deadbeef",
    "identity.sourceIp": "203.0.113.10",
    "httpMethod": "POST",
    "path": "/v1/call/stream/3f2b8c4e-6a1d-4e0f-9b7a-2c5d8e1f4a6b/batch",
    "status": "200",
    "responseLatency": "14",
    "integration.latency": "12",
    "error.messageString": '"-"',
}
_CONTEXT_VARIABLE = re.compile(r"\$context\.([A-Za-z.]+[A-Za-z])")


def _resolved(template: dict[str, Any], value: Any) -> Any:
    """A property's value, with a ``!Ref Parameter`` taken at the parameter's default."""
    if isinstance(value, dict) and set(value) == {"Ref"}:
        return template["Parameters"][value["Ref"]]["Default"]
    return value


def platform_log_events(template: dict[str, Any], function: str) -> int:
    """Lambda's own log lines per invocation of ``function``, by its LoggingConfig."""
    config = template["Resources"][function]["Properties"].get("LoggingConfig", {})
    if config.get("LogFormat") == "JSON" and _resolved(template, config.get("SystemLogLevel")) == "WARN":
        return 0
    return len(PLATFORM_LINES)


def access_log_bytes(template: dict[str, Any]) -> int:
    """One API request's access log event: the stage's format, filled as ACCESS_LOG_CONTEXT says."""
    [api] = [r for r in template["Resources"].values() if r["Type"] == "AWS::Serverless::HttpApi"]
    fmt = api["Properties"]["AccessLogSettings"]["Format"]
    line = _CONTEXT_VARIABLE.sub(lambda m: ACCESS_LOG_CONTEXT[m.group(1)], fmt)
    return len(line.encode()) + LOG_EVENT_OVERHEAD_BYTES


def log_bytes(usage: Usage, template: dict[str, Any]) -> dict[str, float]:
    """CloudWatch Logs bytes ingested: each function's own lines as the local stack counted them,
    Lambda's lines per invocation, and one access log line per API request."""
    platform = sum(len(line.encode()) + LOG_EVENT_OVERHEAD_BYTES for line in PLATFORM_LINES) / len(PLATFORM_LINES)
    functions = sum(
        f.get("log_bytes", 0)
        + f.get("log_events", 0) * LOG_EVENT_OVERHEAD_BYTES
        + f["invocations"] * platform_log_events(template, name) * platform
        for name, f in usage.functions.items()
    )
    access = usage.functions["IngestFunction"]["invocations"] * access_log_bytes(template)
    return {"functions": functions, "api_access": access}


def recording_retention_months(template: dict[str, Any]) -> float:
    return float(template["Parameters"]["RecordingRetentionDays"]["Default"]) / 30


def packet_retention_months(template: dict[str, Any]) -> float:
    """How long a packet item stays: its TTL, PacketRetentionDays from its arrival (DynamoDB
    deletes an expired item within days of its expiry: a lower bound)."""
    return float(template["Parameters"]["PacketRetentionDays"]["Default"]) / 30


def point_in_time_recovery(template: dict[str, Any], table: str) -> bool:
    """Whether the template keeps continuous backups of ``table`` (a logical id: the local
    stack's table names)."""
    resource = template["Resources"].get(table, {})
    spec = resource.get("Properties", {}).get("PointInTimeRecoverySpecification", {})
    return bool(_resolved(template, spec.get("PointInTimeRecoveryEnabled", False)))


def dynamodb_gb_months(stored: dict[str, dict[str, float]], template: dict[str, Any]) -> dict[str, float]:
    """GB-months the counted items occupy (``tables``), and of those the ones continuous
    backups bill again (``backups``: tables with point-in-time recovery).

    The expiring items (packets) stay for their TTL; the kept ones (a call's own item, which
    stays after archiving) are priced for as long as its recording, RecordingRetentionDays:
    they have no end, but are a few KB a call.
    """
    months = {"expiring": packet_retention_months(template), "kept": recording_retention_months(template)}
    tables = backups = 0.0
    for table, held in stored.items():
        gb_months = sum(held.get(kind, 0) * m for kind, m in months.items()) / 1024**3
        tables += gb_months
        if point_in_time_recovery(template, table):
            backups += gb_months
    return {"tables": tables, "backups": backups}


@dataclass(frozen=True)
class Usage:
    """What one run used: the moto meter's and the function clock's answers."""

    moto: dict[str, Any]
    functions: dict[str, Any]
    call_minutes: float


def infrastructure(usage: Usage, prices: dict[str, Any], template: dict[str, Any]) -> dict[str, Any]:
    """USD per call-minute, by item, with the units counted per call-minute beside each."""
    per = 1 / usage.call_minutes
    memory = function_memory_mb(template)
    ingest = usage.functions["IngestFunction"]
    api_requests = ingest["invocations"]
    invocations = sum(f["invocations"] for f in usage.functions.values())
    gb_seconds = sum(f["seconds"] * memory[name] / 1024 for name, f in usage.functions.items())
    ddb = usage.moto["dynamodb"]
    s3 = usage.moto["s3"]
    gb_months = s3["bytes_put"] / 1024**3 * recording_retention_months(template)
    ddb_stored = usage.moto.get("dynamodb_stored_bytes", {})
    ddb_gb_months = dynamodb_gb_months(ddb_stored, template)
    logs = log_bytes(usage, template)
    items = {
        # An HTTP API bills a request per 512 KB of it: a 200 ms batch is about 3 KB.
        "api_gateway": (api_requests * price(prices, "apigateway_http_request"), {"requests": api_requests}),
        "lambda": (
            invocations * price(prices, "lambda_request") + gb_seconds * price(prices, "lambda_arm_gb_second"),
            {"invocations": invocations, "gb_seconds": gb_seconds},
        ),
        "dynamodb": (
            ddb["write_units"] * price(prices, "dynamodb_write_request_unit")
            + ddb["read_units"] * price(prices, "dynamodb_read_request_unit")
            + ddb_gb_months["tables"] * price(prices, "dynamodb_storage_gb_month")
            + ddb_gb_months["backups"] * price(prices, "dynamodb_pitr_gb_month"),
            {
                "write_units": ddb["write_units"],
                "read_units": ddb["read_units"],
                "stored_bytes_expiring": sum(t.get("expiring", 0) for t in ddb_stored.values()),
                "stored_bytes_kept": sum(t.get("kept", 0) for t in ddb_stored.values()),
                "gb_months": ddb_gb_months["tables"],
                "backup_gb_months": ddb_gb_months["backups"],
            },
        ),
        "sqs": (
            usage.moto["sqs_billed_requests"] * price(prices, "sqs_standard_request"),
            {"requests": usage.moto["sqs_billed_requests"]},
        ),
        "s3": (
            s3["put_class"] * price(prices, "s3_put_request")
            + s3["get_class"] * price(prices, "s3_get_request")
            + gb_months * price(prices, "s3_storage_gb_month"),
            {"put_requests": s3["put_class"], "get_requests": s3["get_class"], "gb_months": gb_months},
        ),
        "cloudwatch_logs": (
            sum(logs.values()) / 1024**3 * price(prices, "cloudwatch_logs_ingest_gb"),
            {"function_log_bytes": logs["functions"], "access_log_bytes": logs["api_access"]},
        ),
    }
    return {
        "usd_per_call_minute": sum(usd for usd, _ in items.values()) * per,
        "by_item": {
            name: {"usd_per_call_minute": usd * per, "units_per_call_minute": {k: v * per for k, v in units.items()}}
            for name, (usd, units) in items.items()
        },
    }


def ai_aws_usd_per_call_minute(prices: dict[str, Any], characters_per_audio_second: float) -> float:
    """Transcribe's per-second price for a minute of audio (calls over its 15 s minimum), and
    Comprehend on the minute's transcript, in 5,000-byte requests of 100-character units."""
    transcribe = 60 * price(prices, "transcribe_batch_second")
    characters = characters_per_audio_second * 60
    entry = prices["prices"]["comprehend_sentiment_unit"]
    unit, minimum = int(entry.get("unit_characters", 100)), int(entry.get("minimum_units", 3))
    requests = max(1, math.ceil(characters / COMPREHEND_CHUNK_BYTES))
    units = max(minimum * requests, math.ceil(characters / unit))
    return transcribe + units * float(entry["usd"])


def ai_local_usd_per_call_minute(prices: dict[str, Any], rtf: float, worker_memory_mb: int) -> float:
    """The worker's Lambda time to transcribe a minute of audio at real-time factor ``rtf``."""
    return 60 * rtf * worker_memory_mb / 1024 * price(prices, "lambda_arm_gb_second")

"""What a call-minute costs: the units the local stack counted (devstack/usage.py), priced
from bench/prices.json (us-east-1 list prices, each with its source page and the date
it was read).

Infrastructure: API Gateway REST requests, Lambda requests and GB-seconds (measured
handler seconds x the template's memory size, Arm), DynamoDB request units, SQS requests,
S3 requests and the recording's storage for RecordingRetentionDays. AI: Amazon Transcribe
per audio second and Comprehend per 100 characters for ``aws``; for ``local``, the
worker's Lambda GB-seconds at the measured real-time factor.
"""

from __future__ import annotations

import json
import math
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


def recording_retention_months(template: dict[str, Any]) -> float:
    return float(template["Parameters"]["RecordingRetentionDays"]["Default"]) / 30


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
    items = {
        "api_gateway": (api_requests * price(prices, "apigateway_rest_request"), {"requests": api_requests}),
        "lambda": (
            invocations * price(prices, "lambda_request") + gb_seconds * price(prices, "lambda_arm_gb_second"),
            {"invocations": invocations, "gb_seconds": gb_seconds},
        ),
        "dynamodb": (
            ddb["write_units"] * price(prices, "dynamodb_write_request_unit")
            + ddb["read_units"] * price(prices, "dynamodb_read_request_unit"),
            {"write_units": ddb["write_units"], "read_units": ddb["read_units"]},
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

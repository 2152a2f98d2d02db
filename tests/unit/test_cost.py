"""The cost model's arithmetic (bench/cost.py) and its price table (bench/prices.json)."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from bench.cost import (
    ACCESS_LOG_CONTEXT,
    LOG_EVENT_OVERHEAD_BYTES,
    PLATFORM_LINES,
    Usage,
    access_log_bytes,
    ai_aws_usd_per_call_minute,
    ai_local_usd_per_call_minute,
    function_memory_mb,
    infrastructure,
    load_prices,
    platform_log_events,
    point_in_time_recovery,
)
from devstack.template import load_template

PRICES: dict[str, Any] = {
    "read_on": "2026-12-01",
    "prices": {
        name: {"usd": usd, "source": "https://aws.amazon.com/"}
        for name, usd in {
            "apigateway_http_request": 1e-6,
            "lambda_request": 2e-7,
            "lambda_arm_gb_second": 1.33334e-5,
            "dynamodb_write_request_unit": 6.25e-7,
            "dynamodb_read_request_unit": 1.25e-7,
            "dynamodb_storage_gb_month": 0.25,
            "dynamodb_pitr_gb_month": 0.2,
            "sqs_standard_request": 4e-7,
            "s3_put_request": 5e-6,
            "s3_get_request": 4e-7,
            "s3_storage_gb_month": 0.023,
            "transcribe_batch_second": 0.0004,
            "cloudwatch_logs_ingest_gb": 0.5,
        }.items()
    }
    | {"comprehend_sentiment_unit": {"usd": 0.0001, "unit_characters": 100, "minimum_units": 3, "source": "x"}},
}


def test_every_function_has_the_memory_the_template_gives_it() -> None:
    memory = function_memory_mb(load_template())
    assert memory["IngestFunction"] == 512
    assert memory["AiWorkerFunction"] == 1769


def test_infrastructure_prices_each_counted_unit_per_call_minute() -> None:
    usage = Usage(
        moto={
            "dynamodb": {"write_units": 4000.0, "read_units": 100.0},
            "sqs_billed_requests": 10,
            "s3": {"put_class": 2, "get_class": 2, "bytes_put": 2 * 1024**3},
        },
        functions={
            "IngestFunction": {"invocations": 1000, "seconds": 10.0},
            "AiWorkerFunction": {"invocations": 2, "records": 2, "seconds": 2.0},
        },
        call_minutes=2.0,
    )
    template = load_template()

    cost = infrastructure(usage, PRICES, template)

    items = cost["by_item"]
    assert items["api_gateway"]["usd_per_call_minute"] == pytest.approx(1000 * 1e-6 / 2)
    gb_seconds = 10.0 * 512 / 1024 + 2.0 * 1769 / 1024
    assert items["lambda"]["usd_per_call_minute"] == pytest.approx((1002 * 2e-7 + gb_seconds * 1.33334e-5) / 2)
    assert items["dynamodb"]["units_per_call_minute"] == {
        "write_units": 2000.0,
        "read_units": 50.0,
        "stored_bytes_expiring": 0.0,
        "stored_bytes_kept": 0.0,
        "gb_months": 0.0,
        "backup_gb_months": 0.0,
    }
    months = int(template["Parameters"]["RecordingRetentionDays"]["Default"]) / 30
    assert items["s3"]["usd_per_call_minute"] == pytest.approx((2 * 5e-6 + 2 * 4e-7 + 2 * months * 0.023) / 2)
    assert cost["usd_per_call_minute"] == pytest.approx(sum(i["usd_per_call_minute"] for i in items.values()))


def test_dynamodb_bills_the_bytes_its_tables_hold_for_as_long_as_they_hold_them_and_backups_again() -> None:
    template = load_template()
    stored = {
        # Packets expire (TTL) PacketRetentionDays after they arrive; a call's
        # own item stays, priced for RecordingRetentionDays.
        "PacketSlotsTable": {"expiring": 3 * 1024**3, "kept": 0},
        "CallsTable": {"expiring": 0, "kept": 1024**3},
    }
    usage = Usage(
        moto={
            "dynamodb": {"write_units": 0.0, "read_units": 0.0},
            "dynamodb_stored_bytes": stored,
            "sqs_billed_requests": 0,
            "s3": {"put_class": 0, "get_class": 0, "bytes_put": 0},
        },
        functions={"IngestFunction": {"invocations": 0, "seconds": 0.0}},
        call_minutes=2.0,
    )
    packet_months = int(template["Parameters"]["PacketRetentionDays"]["Default"]) / 30
    call_months = int(template["Parameters"]["RecordingRetentionDays"]["Default"]) / 30
    gb_months = 3 * packet_months + call_months

    item = infrastructure(usage, PRICES, template)["by_item"]["dynamodb"]

    assert item["units_per_call_minute"]["gb_months"] == pytest.approx(gb_months / 2)
    # Every table of the template keeps point-in-time recovery, billed on the same bytes.
    assert all(point_in_time_recovery(template, table) for table in stored)
    assert item["units_per_call_minute"]["backup_gb_months"] == pytest.approx(gb_months / 2)
    assert item["usd_per_call_minute"] == pytest.approx(gb_months * (0.25 + 0.2) / 2)
    # A table without it is billed once.
    del template["Resources"]["CallsTable"]["Properties"]["PointInTimeRecoverySpecification"]
    item = infrastructure(usage, PRICES, template)["by_item"]["dynamodb"]
    assert item["usd_per_call_minute"] == pytest.approx((gb_months * 0.25 + 3 * packet_months * 0.2) / 2)


def test_cloudwatch_logs_bill_what_each_function_wrote_lambdas_own_lines_and_one_access_line_a_request() -> None:
    template = load_template()
    usage = Usage(
        moto={
            "dynamodb": {"write_units": 0.0, "read_units": 0.0},
            "sqs_billed_requests": 0,
            "s3": {"put_class": 0, "get_class": 0, "bytes_put": 0},
        },
        functions={
            "IngestFunction": {"invocations": 1000, "seconds": 1.0, "log_bytes": 250_000, "log_events": 1000},
            "AiWorkerFunction": {"invocations": 2, "records": 2, "seconds": 1.0, "log_bytes": 4000, "log_events": 20},
        },
        call_minutes=2.0,
    )

    item = infrastructure(usage, PRICES, template)["by_item"]["cloudwatch_logs"]

    # The ingest function's START/END/REPORT lines are off (JSON format, SystemLogLevel WARN);
    # the worker's are not: three lines an invocation, at the text format's size.
    platform = sum(len(line) + LOG_EVENT_OVERHEAD_BYTES for line in PLATFORM_LINES)
    functions = 250_000 + 1000 * LOG_EVENT_OVERHEAD_BYTES + 4000 + 20 * LOG_EVENT_OVERHEAD_BYTES + 2 * platform
    access = 1000 * access_log_bytes(template)
    assert item["units_per_call_minute"] == {"function_log_bytes": functions / 2, "access_log_bytes": access / 2}
    assert item["usd_per_call_minute"] == pytest.approx((functions + access) / 1024**3 * 0.5 / 2)


def test_lambdas_own_lines_are_counted_unless_the_function_logs_json_at_warn() -> None:
    template = load_template()
    assert platform_log_events(template, "IngestFunction") == 0
    assert platform_log_events(template, "AiWorkerFunction") == len(PLATFORM_LINES)

    ingest = template["Resources"]["IngestFunction"]["Properties"]
    ingest["LoggingConfig"]["SystemLogLevel"] = "INFO"
    assert platform_log_events(template, "IngestFunction") == len(PLATFORM_LINES)


def test_the_access_log_line_is_the_stages_format_with_every_variable_filled() -> None:
    template = load_template()
    [api] = [r for r in template["Resources"].values() if r["Type"] == "AWS::Serverless::HttpApi"]
    fmt = api["Properties"]["AccessLogSettings"]["Format"]

    size = access_log_bytes(template)

    # Filled, the line is the JSON object CloudWatch Logs Insights reads, no $context left.
    line = fmt
    for name, value in sorted(ACCESS_LOG_CONTEXT.items(), key=lambda kv: -len(kv[0])):
        line = line.replace(f"$context.{name}", value)
    assert "$context" not in line
    assert json.loads(line)["status"] == "200"
    assert size == len(line.encode()) + LOG_EVENT_OVERHEAD_BYTES
    # A variable the model has no value for is an error, not a silently short line.
    api["Properties"]["AccessLogSettings"]["Format"] = fmt + "$context.domainName"
    with pytest.raises(KeyError):
        access_log_bytes(template)


def test_the_aws_ai_is_transcribe_by_the_second_and_comprehend_by_the_hundred_characters() -> None:
    # 15 characters a second: 900 a minute, 9 units (over the 3-unit minimum), one request.
    assert ai_aws_usd_per_call_minute(PRICES, 15.0) == pytest.approx(60 * 0.0004 + 9 * 0.0001)
    # A near-silent minute still bills Comprehend's minimum of 3 units.
    assert ai_aws_usd_per_call_minute(PRICES, 0.1) == pytest.approx(60 * 0.0004 + 3 * 0.0001)


def test_the_local_ai_is_the_workers_lambda_time_at_the_real_time_factor() -> None:
    assert ai_local_usd_per_call_minute(PRICES, 0.2, 1024) == pytest.approx(12 * 1.33334e-5)


def test_every_price_in_the_table_has_its_source_and_the_table_its_date() -> None:
    table = load_prices()

    assert re.fullmatch(r"\d{4}-\d{2}-\d{2}", table["read_on"])
    assert table["region"] == "us-east-1"
    for name in PRICES["prices"]:
        entry = table["prices"][name]
        assert entry["usd"] > 0, name
        assert entry["source"].startswith("https://"), name

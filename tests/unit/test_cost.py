"""The cost model's arithmetic (bench/cost.py) and its price table (bench/prices.json)."""

from __future__ import annotations

import re
from typing import Any

import pytest

from bench.cost import (
    Usage,
    ai_aws_usd_per_call_minute,
    ai_local_usd_per_call_minute,
    function_memory_mb,
    infrastructure,
    load_prices,
)
from devstack.template import load_template

PRICES: dict[str, Any] = {
    "read_on": "2026-12-01",
    "prices": {
        name: {"usd": usd, "source": "https://aws.amazon.com/"}
        for name, usd in {
            "apigateway_rest_request": 3.5e-6,
            "lambda_request": 2e-7,
            "lambda_arm_gb_second": 1.33334e-5,
            "dynamodb_write_request_unit": 6.25e-7,
            "dynamodb_read_request_unit": 1.25e-7,
            "sqs_standard_request": 4e-7,
            "s3_put_request": 5e-6,
            "s3_get_request": 4e-7,
            "s3_storage_gb_month": 0.023,
            "transcribe_batch_second": 0.0004,
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
    assert items["api_gateway"]["usd_per_call_minute"] == pytest.approx(1000 * 3.5e-6 / 2)
    gb_seconds = 10.0 * 512 / 1024 + 2.0 * 1769 / 1024
    assert items["lambda"]["usd_per_call_minute"] == pytest.approx((1002 * 2e-7 + gb_seconds * 1.33334e-5) / 2)
    assert items["dynamodb"]["units_per_call_minute"] == {"write_units": 2000.0, "read_units": 50.0}
    months = int(template["Parameters"]["RecordingRetentionDays"]["Default"]) / 30
    assert items["s3"]["usd_per_call_minute"] == pytest.approx((2 * 5e-6 + 2 * 4e-7 + 2 * months * 0.023) / 2)
    assert cost["usd_per_call_minute"] == pytest.approx(sum(i["usd_per_call_minute"] for i in items.values()))


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

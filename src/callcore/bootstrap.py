"""The one place that builds AWS clients and adapters: once per process (Lambda sandbox)."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import boto3
from botocore.config import Config

from callcore.adapters.ai.mock import MockAIProvider
from callcore.adapters.dynamodb_store import DynamoDBCallStore
from callcore.adapters.sqs_queue import SQSWorkQueue
from callcore.settings import Settings

# Fail fast: a PBX retries a 503 sooner than it would wait for a hung request, and the
# worst case (2 attempts x (1 s connect + 3 s read) + backoff) stays well inside the
# ingest function's 10 s timeout, so a request never dies between two of its writes.
CLIENT_CONFIG = Config(
    connect_timeout=1,
    read_timeout=3,
    retries={"mode": "standard", "max_attempts": 2},
    # The local stack serves many requests and worker batches from one process.
    max_pool_connections=128,
)


@dataclass(frozen=True)
class Ports:
    settings: Settings
    store: DynamoDBCallStore
    queue: SQSWorkQueue
    dynamodb: Any
    sqs: Any


def build_ports(
    settings: Settings, session: boto3.session.Session | None = None, endpoint_url: str | None = None
) -> Ports:
    """Build fresh clients. Locally, AWS_ENDPOINT_URL (or ``endpoint_url``) points them at moto."""
    session = session or boto3.session.Session()
    dynamodb = session.client("dynamodb", config=CLIENT_CONFIG, endpoint_url=endpoint_url)
    sqs = session.client("sqs", config=CLIENT_CONFIG, endpoint_url=endpoint_url)
    return Ports(
        settings=settings,
        store=DynamoDBCallStore(dynamodb, settings.calls_table, settings.packets_table),
        queue=SQSWorkQueue(sqs, settings.work_queue_url),
        dynamodb=dynamodb,
        sqs=sqs,
    )


def build_ai_provider(settings: Settings) -> MockAIProvider:
    """The provider AI_PROVIDER names (Settings has already refused unknown names)."""
    return MockAIProvider(
        failure_rate=settings.ai_failure_rate,
        min_latency_s=settings.ai_min_latency_s,
        max_latency_s=settings.ai_max_latency_s,
        seed=settings.ai_seed,
    )


@functools.cache
def default_ports() -> Ports:
    """The process-wide ports, built on first use and reused by every request."""
    return build_ports(Settings.from_env())

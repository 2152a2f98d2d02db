"""The one place that builds AWS clients and adapters: once per process (Lambda sandbox)."""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import boto3
import botocore.session
from botocore.config import Config
from botocore.loaders import Loader

from callcore.adapters.dynamodb_store import DynamoDBCallStore
from callcore.adapters.s3_archive import S3CallArchive
from callcore.adapters.s3_recordings import S3RecordingStore
from callcore.adapters.sqs_queue import SQSWorkQueue
from callcore.ports import AIProvider, CallArchive, CallStore, RecordingStore, WorkQueue
from callcore.settings import Settings

# Fail fast: a PBX retries a 503 sooner than it would wait for a hung request. One SDK
# call takes at most two tries of (1 s connect + 2 s read) plus botocore's backoff (under
# 1 s before a second try): WORST_CALL_S. DynamoDB and SQS answer in milliseconds; a
# second try is what resends a request whose answer was lost.
CONNECT_TIMEOUT_S, READ_TIMEOUT_S, TRIES = 1, 2, 2
WORST_CALL_S = TRIES * (CONNECT_TIMEOUT_S + READ_TIMEOUT_S) + 1
CLIENT_CONFIG = Config(
    connect_timeout=CONNECT_TIMEOUT_S,
    read_timeout=READ_TIMEOUT_S,
    # total_max_attempts counts the first try; botocore's max_attempts would count retries only.
    retries={"mode": "standard", "total_max_attempts": TRIES},
    # The local stack serves many requests and worker batches from one process.
    max_pool_connections=128,
    # The adapters build every request from typed values, and DynamoDB validates it again
    # anyway; botocore's own pass over the shapes was a tenth of its CPU per packet
    # (botocore's documentation suggests turning it off for performance).
    parameter_validation=False,
)


# A recording is megabytes (a 10-minute call is 9.6 MB of 8 kHz WAV): S3 gets longer to
# answer than DynamoDB's milliseconds, and presigned URLs are SigV4.
S3_CONFIG = CLIENT_CONFIG.merge(Config(read_timeout=20, signature_version="s3v4"))


class _KnownServicesLoader(Loader):
    """botocore's model loader, told which services exist instead of listing its data directory.

    To check a service name, botocore lists every model directory it ships (some 3,000
    stat calls, 20 to 30 ms of a cold start); this code only ever loads these.
    """

    # transcribe and comprehend: AI_PROVIDER=aws only (build_ai_clients).
    SERVICES = ("dynamodb", "sqs", "s3", "transcribe", "comprehend")

    def list_available_services(self, type_name: str) -> list[str]:
        return list(self.SERVICES)


def _session() -> boto3.session.Session:
    core = botocore.session.get_session()
    core.register_component("data_loader", _KnownServicesLoader())
    return boto3.session.Session(botocore_session=core)


class LazyClient:
    """A client (or session) made on first use, once per process, by whichever thread gets there first.

    Making a client costs 40 to 50 ms (botocore parses its service model and endpoint
    data), as much as the rest of a handler's init. The cold-start budget (README,
    Performance) is an import and init close to `import boto3`, so clients are made when
    first needed: packets and successful AI attempts never call SQS at all, and
    DynamoDB's client is made by a sandbox's first request, then reused by every request
    after it.
    """

    def __init__(self, make: Callable[[], Any], lock: threading.RLock | None = None) -> None:
        self._make = make
        self._client: Any = None
        # Clients made from one boto3 Session share its lock: a Session is not thread-safe.
        self._lock = lock or threading.RLock()

    def __getattr__(self, name: str) -> Any:
        if self._client is None:
            with self._lock:
                if self._client is None:
                    self._client = self._make()
        return getattr(self._client, name)


@dataclass(frozen=True)
class AwsClients:
    """The SDK clients the adapters use, made on first use. Only bootstrap and tools see them."""

    dynamodb: Any
    sqs: Any
    s3: Any


@dataclass(frozen=True)
class Ports:
    """What routes and handlers get: the settings and the ports, never a raw client."""

    settings: Settings
    store: CallStore
    queue: WorkQueue
    recordings: RecordingStore
    archive: CallArchive


def build_clients(session: boto3.session.Session | None = None, endpoint_url: str | None = None) -> AwsClients:
    """Clients made on first use. Locally, AWS_ENDPOINT_URL (or ``endpoint_url``) points them at moto."""
    # The session too is made on first use (another 5 ms of init), once for both clients,
    # and all three are made under one lock (re-entrant: a client's maker uses the session).
    lock = threading.RLock()
    shared = LazyClient(lambda: session or _session(), lock)
    return AwsClients(
        dynamodb=LazyClient(lambda: shared.client("dynamodb", config=CLIENT_CONFIG, endpoint_url=endpoint_url), lock),
        sqs=LazyClient(lambda: shared.client("sqs", config=CLIENT_CONFIG, endpoint_url=endpoint_url), lock),
        s3=LazyClient(lambda: shared.client("s3", config=S3_CONFIG, endpoint_url=endpoint_url), lock),
    )


# AI_PROVIDER=aws's clients serve the worker, which has minutes, not an ingest request's
# seconds: a slow Transcribe or Comprehend answer is waited for rather than cut off, and a
# third try absorbs a throttle in place instead of redoing the whole attempt through SQS.
AI_CLIENT_CONFIG = CLIENT_CONFIG.merge(Config(read_timeout=10, retries={"mode": "standard", "total_max_attempts": 3}))


@dataclass(frozen=True)
class AwsAIClients:
    """The clients of AI_PROVIDER=aws (callcore.adapters.ai.aws), made on first use."""

    transcribe: Any
    comprehend: Any


def build_ai_clients(session: boto3.session.Session | None = None, endpoint_url: str | None = None) -> AwsAIClients:
    """Transcribe and Comprehend clients made on first use; AWS_ENDPOINT_URL (or ``endpoint_url``) as for the others."""
    lock = threading.RLock()
    shared = LazyClient(lambda: session or _session(), lock)
    return AwsAIClients(
        transcribe=LazyClient(
            lambda: shared.client("transcribe", config=AI_CLIENT_CONFIG, endpoint_url=endpoint_url), lock
        ),
        comprehend=LazyClient(
            lambda: shared.client("comprehend", config=AI_CLIENT_CONFIG, endpoint_url=endpoint_url), lock
        ),
    )


def build_ports(settings: Settings, clients: AwsClients | None = None, *, endpoint_url: str | None = None) -> Ports:
    """The ports over ``clients`` (by default new ones, for ``endpoint_url``)."""
    clients = clients or build_clients(endpoint_url=endpoint_url)
    return Ports(
        settings=settings,
        store=DynamoDBCallStore(
            clients.dynamodb,
            settings.calls_table,
            settings.packets_table,
            settings.slots_table,
            packet_ttl_s=settings.packet_ttl_s(),
        ),
        queue=SQSWorkQueue(clients.sqs, settings.work_queue_url),
        recordings=S3RecordingStore(clients.s3, settings.recordings_bucket),
        archive=S3CallArchive(clients.s3, settings.recordings_bucket),
    )


def build_ai_provider(settings: Settings) -> AIProvider:
    """The provider AI_PROVIDER names (Settings has already refused unknown names), behind the
    simulated failures and latency of AI_FAILURE_RATE and AI_MIN/MAX_LATENCY_S."""
    # Imported here, each only when chosen: the ingest function never needs a provider.
    from callcore.adapters.ai.unreliable import UnreliableAI

    inner: AIProvider
    if settings.ai_provider == "aws":
        from callcore.adapters.ai.aws import AwsAIProvider

        ai = build_ai_clients()
        # The S3 client is the recordings' own (one per process, made on first use).
        inner = AwsAIProvider(
            settings.recordings_bucket, transcribe=ai.transcribe, comprehend=ai.comprehend, s3=default_clients().s3
        )
    elif settings.ai_provider == "local":
        from callcore.adapters.ai.local import LocalAIProvider

        inner = LocalAIProvider(settings.local_max_audio_s)
    else:
        from callcore.adapters.ai.mock import PacketText

        inner = PacketText()
    if not settings.ai_failure_rate and not settings.ai_max_latency_s:
        return inner
    return UnreliableAI(
        inner,
        failure_rate=settings.ai_failure_rate,
        min_latency_s=settings.ai_min_latency_s,
        max_latency_s=settings.ai_max_latency_s,
        seed=settings.ai_seed,
    )


@functools.cache
def default_clients() -> AwsClients:
    """The process-wide clients (one set per Lambda sandbox)."""
    return build_clients()


@functools.cache
def default_ports() -> Ports:
    """The process-wide ports, built on first use and reused by every request."""
    return build_ports(Settings.from_env(), default_clients())

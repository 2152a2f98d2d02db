"""Every environment variable the service reads, read here and nowhere else.

The names are the same in Lambda (set by template.yaml) and in the local stack.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field

from callcore.domain.audio_format import DEFAULT_FORMAT, AudioFormat
from callcore.domain.model import MAX_CALL_PACKETS

# template.yaml's WorkQueue VisibilityTimeout and AiWorkerFunction Timeout (a unit test
# holds them equal).
WORK_QUEUE_VISIBILITY_S = 5400
AI_WORKER_TIMEOUT_S = 900
# template.yaml's WorkQueue MessageRetentionPeriod: no work item outlives it.
WORK_QUEUE_RETENTION_S = 345600
# The ingest function's timeout (template.yaml); a request never runs longer.
INGEST_TIMEOUT_S = 10
# What the dead-letter handler may take on top of the retries: its queue's 180 s
# visibility timeout, several times over.
DEAD_LETTER_MARGIN_S = 1800


AI_PROVIDERS = ("local", "aws", "mock")
# Transcription seconds per audio second that AI_PROVIDER=local is sized for on a Lambda
# vCPU (measured 0.19 to 0.30 on the 2-core x86 build machine; see README, Long calls),
# with room for a slower CPU.
ASR_RTF_BOUND = 0.4
LOCAL_MAX_AUDIO_S = AI_WORKER_TIMEOUT_S * 0.8 / ASR_RTF_BOUND


class SettingsError(ValueError):
    """An environment variable holds a value the service cannot use."""


def _float(env: Mapping[str, str], name: str, default: float, low: float = 0.0, high: float | None = None) -> float:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise SettingsError(f"{name}={raw!r} is not a number") from None
    if not math.isfinite(value) or not (value >= low and (high is None or value <= high)):
        bound = f"between {low} and {high}" if high is not None else f">= {low}"
        raise SettingsError(f"{name}={raw!r} must be {bound}")
    return value


def _int(env: Mapping[str, str], name: str, default: int, low: int = 0) -> int:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise SettingsError(f"{name}={raw!r} is not an integer") from None
    if value < low:
        raise SettingsError(f"{name}={raw!r} must be >= {low}")
    return value


@dataclass(frozen=True)
class Settings:
    calls_table: str = "CallsTable"
    packets_table: str = "PacketsTable"
    slots_table: str = "PacketSlotsTable"
    work_queue_url: str = ""
    recordings_bucket: str = ""
    ai_provider: str = "local"
    ai_failure_rate: float = 0.25
    ai_min_latency_s: float = 1.0
    ai_max_latency_s: float = 3.0
    ai_seed: int | None = None
    retry_base_delay_s: float = 2.0
    retry_max_delay_s: float = 60.0
    max_receive_count: int = 5
    api_keys: tuple[str, ...] = ()
    # The audio of calls whose packets declare no format (AUDIO_ENCODING, AUDIO_SAMPLE_RATE).
    audio_format: AudioFormat = field(default=DEFAULT_FORMAT)
    # GET /v1/call/{id}/recording: "redirect" answers 307 to a presigned S3 URL (AWS);
    # "inline" answers the WAV itself (the local stack, whose S3 is not the client's).
    recording_download: str = "redirect"
    # Longest call AI_PROVIDER=local transcribes: it must finish inside the worker's timeout.
    local_max_audio_s: float = LOCAL_MAX_AUDIO_S
    # Under DynamoDB's 400 KB item limit, with room for the packet's other attributes.
    max_packet_bytes: int = 256 * 1024
    # A batch's data: within Lambda's 6 MB request payload, with room for the JSON around it.
    max_batch_bytes: int = 1024 * 1024
    # Packet data of one call the worker will load: two hours of 8 kHz mu-law is 77 MB of base64.
    max_call_bytes: int = 128 * 1024 * 1024
    # The sweeper sends a round's unsent work item only after this long, when no ingest
    # request (10 s timeout) can still be sending it: concurrent ends never send two.
    work_resend_after_s: float = 30.0
    # A round with no result this long after its work item was sent is past every retry
    # (unset: the retry horizon, ``retry_horizon_s``, plus the dead-letter handler's
    # retries): its item may be lost, and the sweeper sends it once more.
    processing_timeout_s: float = 5 * WORK_QUEUE_VISIBILITY_S + DEAD_LETTER_MARGIN_S
    # COMPLETED and FAILED calls unchanged this long are archived by the sweeper.
    archive_after_days: int = 30
    # Days a packet stays in DynamoDB after it arrived (PACKET_RETENTION_DAYS, the template's
    # PacketRetentionDays): see packet_ttl_s.
    packet_retention_days: int = 7

    def packet_ttl_s(self) -> int:
        """How long a packet stays in DynamoDB after it arrived (its TTL, written with it: no
        second write per packet to expire it).

        The worker reads a call's packets once it has ended, and notes their statistics on
        the call and their audio as its recording: after that the packets are a copy, billed
        as storage and backups by the byte. They must outlast the longest call and the
        longest a call can wait for its worker (``shortest_packet_retention_s``): a shorter
        setting is raised to that, in whole days, rather than refused, since a longer retry
        horizon (RETRY_MAX_DELAY_S, MAX_RECEIVE_COUNT) lengthens it.
        """
        shortest_days = math.ceil(self.shortest_packet_retention_s() / 86_400)
        return max(self.packet_retention_days, shortest_days) * 86_400

    def shortest_packet_retention_s(self) -> float:
        """A call's packets must outlast the call (at most MAX_CALL_PACKETS x 20 ms) and its
        longest wait for the worker's first read: its work item's silence until the sweeper
        sends it again (``processing_timeout_s``), then until it gives up (``give_up_after_s``,
        counted from that send)."""
        return MAX_CALL_PACKETS * 0.02 + self.processing_timeout_s + self.give_up_after_s()

    def give_up_after_s(self) -> float:
        """After this long without a result since its last send, a round's work item is certainly
        gone (the queue's retention period has passed): the sweeper fails the call."""
        return self.processing_timeout_s + WORK_QUEUE_RETENTION_S

    def retry_horizon_s(self) -> float:
        """The longest a work item can take to use all its receives.

        Each receive hides it for the work queue's visibility timeout (when the worker
        dies), or for the worker's run plus its backoff, whichever is longer.
        """
        per_receive = max(WORK_QUEUE_VISIBILITY_S, AI_WORKER_TIMEOUT_S + self.retry_max_delay_s)
        return self.max_receive_count * per_receive

    api_port: int = 8000
    moto_port: int = 5000

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        seed = env.get("AI_SEED", "").strip()
        settings = cls(
            calls_table=env.get("CALLS_TABLE") or cls.calls_table,
            packets_table=env.get("PACKETS_TABLE") or cls.packets_table,
            slots_table=env.get("PACKET_SLOTS_TABLE") or cls.slots_table,
            work_queue_url=env.get("WORK_QUEUE_URL", ""),
            recordings_bucket=env.get("RECORDINGS_BUCKET", ""),
            ai_provider=env.get("AI_PROVIDER") or cls.ai_provider,
            ai_failure_rate=_float(env, "AI_FAILURE_RATE", cls.ai_failure_rate, 0.0, 1.0),
            ai_min_latency_s=_float(env, "AI_MIN_LATENCY_S", cls.ai_min_latency_s),
            ai_max_latency_s=_float(env, "AI_MAX_LATENCY_S", cls.ai_max_latency_s),
            ai_seed=_int(env, "AI_SEED", 0) if seed else None,
            retry_base_delay_s=_float(env, "RETRY_BASE_DELAY_S", cls.retry_base_delay_s),
            retry_max_delay_s=_float(env, "RETRY_MAX_DELAY_S", cls.retry_max_delay_s, 0.0, 43200.0),
            max_receive_count=_int(env, "MAX_RECEIVE_COUNT", cls.max_receive_count, 1),
            api_keys=tuple(k.strip() for k in env.get("API_KEYS", "").split(",") if k.strip()),
            audio_format=_audio_format(env),
            recording_download=env.get("RECORDING_DOWNLOAD", "").strip() or cls.recording_download,
            local_max_audio_s=_float(env, "LOCAL_MAX_AUDIO_S", cls.local_max_audio_s, 1.0, LOCAL_MAX_AUDIO_S),
            max_packet_bytes=_int(env, "MAX_PACKET_BYTES", cls.max_packet_bytes, 1),
            max_batch_bytes=_int(env, "MAX_BATCH_BYTES", cls.max_batch_bytes, 1),
            max_call_bytes=_int(env, "MAX_CALL_BYTES", cls.max_call_bytes, 1),
            work_resend_after_s=_float(env, "WORK_RESEND_AFTER_S", cls.work_resend_after_s, INGEST_TIMEOUT_S + 5.0),
            processing_timeout_s=_float(env, "PROCESSING_TIMEOUT_S", 0.0, 1.0),
            archive_after_days=_int(env, "ARCHIVE_AFTER_DAYS", cls.archive_after_days, 1),
            packet_retention_days=_int(env, "PACKET_RETENTION_DAYS", cls.packet_retention_days, 1),
            api_port=_int(env, "API_PORT", cls.api_port, 1),
            moto_port=_int(env, "MOTO_PORT", cls.moto_port, 1),
        )
        horizon = settings.retry_horizon_s()
        explicit_timeout = bool(settings.processing_timeout_s)
        if not explicit_timeout:
            settings = dataclasses.replace(
                settings, processing_timeout_s=max(cls.processing_timeout_s, horizon + DEAD_LETTER_MARGIN_S)
            )
        if settings.processing_timeout_s <= settings.work_resend_after_s:
            raise SettingsError("PROCESSING_TIMEOUT_S must be longer than WORK_RESEND_AFTER_S")
        if explicit_timeout and settings.processing_timeout_s < horizon:
            raise SettingsError(
                f"PROCESSING_TIMEOUT_S={settings.processing_timeout_s:g} is shorter than the retry horizon "
                f"({horizon:g} s: MAX_RECEIVE_COUNT x max(visibility timeout, worker timeout + RETRY_MAX_DELAY_S)); "
                "the sweeper would fail calls still being retried"
            )
        if settings.ai_max_latency_s < settings.ai_min_latency_s:
            raise SettingsError("AI_MAX_LATENCY_S must be >= AI_MIN_LATENCY_S")
        if settings.ai_provider not in AI_PROVIDERS:
            raise SettingsError(f"AI_PROVIDER={settings.ai_provider!r} is not one of: {', '.join(AI_PROVIDERS)}")
        if settings.recording_download not in {"redirect", "inline"}:
            raise SettingsError(f"RECORDING_DOWNLOAD={settings.recording_download!r} is not one of: redirect, inline")
        return settings


def _audio_format(env: Mapping[str, str]) -> AudioFormat:
    encoding = env.get("AUDIO_ENCODING", "").strip() or DEFAULT_FORMAT.encoding.value
    rate = _int(env, "AUDIO_SAMPLE_RATE", DEFAULT_FORMAT.sample_rate, 1)
    try:
        return AudioFormat.parse(encoding, rate)
    except ValueError as exc:
        raise SettingsError(f"AUDIO_ENCODING={encoding!r}, AUDIO_SAMPLE_RATE={rate}: {exc}") from None

"""Settings: the defaults the README documents (Configuration), overrides, and clear errors."""

from __future__ import annotations

import pytest

from callcore.settings import Settings, SettingsError


def test_defaults_are_those_of_the_design() -> None:
    settings = Settings.from_env({})

    assert settings.ai_provider == "local"
    assert str(settings.audio_format) == "mulaw/8000"
    assert settings.recording_download == "redirect"
    assert settings.ai_failure_rate == 0.25
    assert settings.ai_min_latency_s == 1.0
    assert settings.ai_max_latency_s == 3.0
    assert settings.ai_seed is None
    assert settings.retry_base_delay_s == 2.0
    assert settings.retry_max_delay_s == 60.0
    assert settings.max_receive_count == 5
    assert settings.api_keys == ()
    assert settings.api_port == 8000


def test_call_size_and_sweep_defaults() -> None:
    settings = Settings.from_env({})

    assert settings.max_call_bytes == 128 * 1024 * 1024
    assert settings.work_resend_after_s == 30.0
    assert settings.processing_timeout_s == 28800.0
    assert Settings() == settings


def test_blank_values_fall_back_to_the_defaults() -> None:
    env = {"AI_FAILURE_RATE": "", "AI_SEED": "  ", "MAX_RECEIVE_COUNT": " ", "API_KEYS": "", "AI_PROVIDER": ""}

    assert Settings.from_env(env) == Settings.from_env({})


def test_overrides_are_parsed_to_their_types() -> None:
    env = {
        "AI_PROVIDER": "mock",
        "AI_FAILURE_RATE": "0.5",
        "AI_MIN_LATENCY_S": "0",
        "AI_MAX_LATENCY_S": " 0.25 ",
        "AI_SEED": "42",
        "RETRY_BASE_DELAY_S": "1.5",
        "RETRY_MAX_DELAY_S": "900",
        "MAX_RECEIVE_COUNT": "3",
        "API_PORT": "9000",
        "MOTO_PORT": "5555",
        "CALLS_TABLE": "calls-dev",
        "PACKETS_TABLE": "packets-dev",
        "WORK_QUEUE_URL": "http://localhost/queue/work",
        "MAX_CALL_BYTES": " 4096 ",
        "WORK_RESEND_AFTER_S": "20",
        "PROCESSING_TIMEOUT_S": "20000",
        "AUDIO_ENCODING": "PCM16",
        "AUDIO_SAMPLE_RATE": "16000",
        "RECORDING_DOWNLOAD": "inline",
    }

    settings = Settings.from_env(env)

    assert settings.ai_failure_rate == 0.5
    assert settings.ai_min_latency_s == 0.0
    assert settings.ai_max_latency_s == 0.25
    assert settings.ai_seed == 42
    assert settings.retry_base_delay_s == 1.5
    assert settings.retry_max_delay_s == 900.0
    assert settings.max_receive_count == 3
    assert settings.api_port == 9000
    assert settings.moto_port == 5555
    assert settings.calls_table == "calls-dev"
    assert settings.packets_table == "packets-dev"
    assert settings.work_queue_url == "http://localhost/queue/work"
    assert settings.max_call_bytes == 4096
    assert settings.work_resend_after_s == 20.0
    assert settings.processing_timeout_s == 20000.0
    assert str(settings.audio_format) == "pcm16/16000"
    assert settings.recording_download == "inline"


def test_equal_min_and_max_latency_are_allowed() -> None:
    settings = Settings.from_env({"AI_MIN_LATENCY_S": "0", "AI_MAX_LATENCY_S": "0"})

    assert settings.ai_min_latency_s == settings.ai_max_latency_s == 0.0


@pytest.mark.parametrize("rate", ["0", "1", "0.0", "1.0"])
def test_failure_rate_bounds_are_inclusive(rate: str) -> None:
    assert Settings.from_env({"AI_FAILURE_RATE": rate}).ai_failure_rate == float(rate)


def test_api_keys_are_split_on_commas_stripped_and_blanks_dropped() -> None:
    settings = Settings.from_env({"API_KEYS": " key-one , key-two,,  ,key-three "})

    assert settings.api_keys == ("key-one", "key-two", "key-three")


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("AI_FAILURE_RATE", "a lot"),
        ("AI_FAILURE_RATE", "1.5"),
        ("AI_FAILURE_RATE", "-0.1"),
        ("AI_FAILURE_RATE", "nan"),
        ("AI_MIN_LATENCY_S", "-1"),
        ("AI_MAX_LATENCY_S", "three"),
        ("AI_SEED", "abc"),
        ("RETRY_BASE_DELAY_S", "-2"),
        ("RETRY_MAX_DELAY_S", "43201"),
        ("MAX_RECEIVE_COUNT", "0"),
        ("MAX_RECEIVE_COUNT", "2.5"),
        ("MAX_RECEIVE_COUNT", "five"),
        ("API_PORT", "0"),
        ("API_PORT", "http"),
        ("MAX_PACKET_BYTES", "0"),
        ("MAX_CALL_BYTES", "0"),
        ("MAX_CALL_BYTES", "-1"),
        ("MAX_CALL_BYTES", "128MiB"),
        ("WORK_RESEND_AFTER_S", "0"),
        ("WORK_RESEND_AFTER_S", "0.5"),
        ("WORK_RESEND_AFTER_S", "soon"),
        ("WORK_RESEND_AFTER_S", "inf"),
        ("PROCESSING_TIMEOUT_S", "0.5"),
        ("PROCESSING_TIMEOUT_S", "nan"),
        ("PROCESSING_TIMEOUT_S", "an hour"),
        ("PACKET_RETENTION_DAYS", "0"),
        ("PACKET_RETENTION_DAYS", "a week"),
        ("PACKET_RETENTION_DAYS", "7.5"),
    ],
)
def test_bad_value_raises_settings_error_naming_the_variable(name: str, value: str) -> None:
    with pytest.raises(SettingsError, match=name):
        Settings.from_env({name: value})


def test_max_latency_below_min_latency_raises_settings_error_naming_both() -> None:
    with pytest.raises(SettingsError, match="AI_MAX_LATENCY_S") as excinfo:
        Settings.from_env({"AI_MIN_LATENCY_S": "2", "AI_MAX_LATENCY_S": "1"})

    assert "AI_MIN_LATENCY_S" in str(excinfo.value)


def test_max_latency_below_the_default_min_latency_raises_settings_error() -> None:
    with pytest.raises(SettingsError, match="AI_MAX_LATENCY_S"):
        Settings.from_env({"AI_MAX_LATENCY_S": "0.5"})


@pytest.mark.parametrize("provider", ["openai", "MOCK", " mock"])
def test_unknown_ai_provider_raises_settings_error_naming_the_variable(provider: str) -> None:
    with pytest.raises(SettingsError, match="AI_PROVIDER"):
        Settings.from_env({"AI_PROVIDER": provider})


def test_settings_error_is_a_value_error() -> None:
    assert issubclass(SettingsError, ValueError)


@pytest.mark.parametrize("name", ["AI_MAX_LATENCY_S", "RETRY_BASE_DELAY_S"])
def test_infinite_delays_are_rejected(name: str) -> None:
    with pytest.raises(SettingsError, match=name):
        Settings.from_env({name: "inf"})


@pytest.mark.parametrize(
    "env",
    [
        pytest.param({"PROCESSING_TIMEOUT_S": "30"}, id="timeout equal to the default resend delay"),
        pytest.param({"PROCESSING_TIMEOUT_S": "10"}, id="timeout below the default resend delay"),
        pytest.param({"WORK_RESEND_AFTER_S": "28800"}, id="resend delay equal to the default timeout"),
        pytest.param({"WORK_RESEND_AFTER_S": "60", "PROCESSING_TIMEOUT_S": "59"}, id="both set, timeout shorter"),
    ],
)
def test_a_processing_timeout_not_longer_than_the_resend_delay_raises_settings_error_naming_both(
    env: dict[str, str],
) -> None:
    # A call would be failed as lost before the sweeper ever resent its work item.
    with pytest.raises(SettingsError, match="PROCESSING_TIMEOUT_S") as excinfo:
        Settings.from_env(env)

    assert "WORK_RESEND_AFTER_S" in str(excinfo.value)


def test_a_processing_timeout_just_longer_than_the_resend_delay_is_allowed() -> None:
    env = {"MAX_RECEIVE_COUNT": "1", "WORK_RESEND_AFTER_S": "5400", "PROCESSING_TIMEOUT_S": "5400.5"}
    settings = Settings.from_env(env)

    assert (settings.work_resend_after_s, settings.processing_timeout_s) == (5400.0, 5400.5)


def test_a_processing_timeout_shorter_than_the_retry_horizon_raises_settings_error() -> None:
    # 5 receives x 5400 s visibility timeout: a call could still be retried after 26999 s.
    with pytest.raises(SettingsError, match="retry horizon"):
        Settings.from_env({"PROCESSING_TIMEOUT_S": "26999"})


@pytest.mark.parametrize(
    ("env", "timeout"),
    [
        ({}, 28800.0),  # 5 x 5400 s + 1800 s for the dead-letter handler
        ({"MAX_RECEIVE_COUNT": "20"}, 20 * 5400 + 1800.0),
        ({"RETRY_MAX_DELAY_S": "43200"}, 5 * (900 + 43200) + 1800.0),
    ],
)
def test_the_default_processing_timeout_grows_with_the_retry_horizon(env: dict[str, str], timeout: float) -> None:
    assert Settings.from_env(env).processing_timeout_s == timeout


def test_a_resend_delay_within_an_ingest_request_s_lifetime_raises_settings_error() -> None:
    # An end may still be sending its item for up to the ingest function's 10 s timeout.
    with pytest.raises(SettingsError, match="WORK_RESEND_AFTER_S"):
        Settings.from_env({"WORK_RESEND_AFTER_S": "10"})


def test_the_sweeper_gives_up_only_after_the_work_queue_s_retention_period() -> None:
    settings = Settings.from_env({})
    assert settings.give_up_after_s() == settings.processing_timeout_s + 345600


def test_packets_are_kept_a_week_and_never_shorter_than_a_call_can_wait_for_its_worker() -> None:
    from devstack.template import load_template

    settings = Settings.from_env({})
    assert settings.packet_ttl_s() == 7 * 86_400
    # Two hours of packets, 8 h until the sweeper resends a silent round's work item, and
    # from that send its give-up horizon (8 h + the queue's 4 days): 4.75 days.
    assert settings.shortest_packet_retention_s() == 7200 + 28800 + 28800 + 345600
    assert Settings.from_env({"PACKET_RETENTION_DAYS": "5"}).packet_ttl_s() == 5 * 86_400
    # Shorter is raised to the whole days that cover it, not refused: the functions start.
    assert Settings.from_env({"PACKET_RETENTION_DAYS": "1"}).packet_ttl_s() == 5 * 86_400
    # ... and a longer retry horizon lengthens it: 5 x (900 + 43200) + 1800 s to resend.
    longer = Settings.from_env({"RETRY_MAX_DELAY_S": "43200"})
    assert longer.packet_ttl_s() == 10 * 86_400
    # The template offers the same default, and refuses what the functions would refuse.
    parameter = load_template()["Parameters"]["PacketRetentionDays"]
    assert parameter["Default"] == settings.packet_retention_days
    assert (
        (parameter["MinValue"] - 1) * 86_400 < settings.shortest_packet_retention_s() <= parameter["MinValue"] * 86_400
    )


def test_the_horizon_constants_are_the_templates_visibility_and_worker_timeouts() -> None:
    from callcore import settings as settings_module
    from devstack.template import load_template

    resources = load_template()["Resources"]
    assert resources["WorkQueue"]["Properties"]["MessageRetentionPeriod"] == settings_module.WORK_QUEUE_RETENTION_S
    assert resources["IngestFunction"]["Properties"]["Timeout"] == settings_module.INGEST_TIMEOUT_S
    assert resources["WorkQueue"]["Properties"]["VisibilityTimeout"] == settings_module.WORK_QUEUE_VISIBILITY_S
    assert resources["AiWorkerFunction"]["Properties"]["Timeout"] == settings_module.AI_WORKER_TIMEOUT_S


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"AUDIO_ENCODING": "opus"}, "unknown audio encoding 'opus'"),
        ({"AUDIO_ENCODING": "mulaw", "AUDIO_SAMPLE_RATE": "16000"}, "mulaw audio must be 8000 Hz"),
        ({"AUDIO_SAMPLE_RATE": "44100"}, "44100"),
        ({"RECORDING_DOWNLOAD": "email"}, "RECORDING_DOWNLOAD"),
        ({"AI_PROVIDER": "openai"}, "local, aws, mock"),
    ],
)
def test_audio_and_recording_settings_refuse_what_cannot_work(env: dict[str, str], named: str) -> None:
    with pytest.raises(SettingsError, match=named):
        Settings.from_env(env)

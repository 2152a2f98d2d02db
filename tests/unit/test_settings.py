"""Settings: defaults from DESIGN.md's Configuration section, overrides, and clear errors."""

from __future__ import annotations

import pytest

from callcore.settings import Settings, SettingsError


def test_defaults_are_those_of_the_design() -> None:
    settings = Settings.from_env({})

    assert settings.ai_provider == "mock"
    assert settings.ai_failure_rate == 0.25
    assert settings.ai_min_latency_s == 1.0
    assert settings.ai_max_latency_s == 3.0
    assert settings.ai_seed is None
    assert settings.retry_base_delay_s == 2.0
    assert settings.retry_max_delay_s == 60.0
    assert settings.max_receive_count == 5
    assert settings.api_keys == ()
    assert settings.api_port == 8000


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

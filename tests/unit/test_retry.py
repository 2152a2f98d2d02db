"""The retry schedule: exponential backoff with full jitter, in whole seconds for SQS."""

from __future__ import annotations

import random
from collections.abc import Iterator

import pytest

from callcore.domain.retry import SQS_MAX_VISIBILITY_S, backoff_delay
from callcore.settings import Settings

BASE_S = Settings.retry_base_delay_s  # 2
CAP_S = Settings.retry_max_delay_s  # 60


def lowest(low: float, high: float) -> float:
    """The smallest draw ``random.uniform`` can make."""
    return low


def highest(low: float, high: float) -> float:
    """The largest draw ``random.uniform`` can make."""
    return high


@pytest.fixture
def seeded_random() -> Iterator[None]:
    """The global generator (the default ``uniform``) seeded, and restored afterwards."""
    state = random.getstate()
    random.seed(20240101)
    try:
        yield
    finally:
        random.setstate(state)


def test_lowest_draw_gives_no_delay() -> None:
    assert backoff_delay(3, BASE_S, CAP_S, uniform=lowest) == 0


def test_highest_draw_gives_the_ceiling() -> None:
    assert backoff_delay(3, BASE_S, CAP_S, uniform=highest) == 8


def test_ceiling_doubles_with_each_receive_until_the_cap() -> None:
    ceilings = [backoff_delay(n, BASE_S, CAP_S, uniform=highest) for n in range(1, 9)]

    assert ceilings == [2, 4, 8, 16, 32, 60, 60, 60]


def test_ceiling_is_capped_at_retry_max_delay() -> None:
    assert backoff_delay(10_000, base_s=1, cap_s=45, uniform=highest) == 45


def test_ceiling_is_capped_at_sqs_maximum_visibility_timeout_even_with_a_higher_cap() -> None:
    assert SQS_MAX_VISIBILITY_S == 43200
    assert backoff_delay(40, base_s=1, cap_s=10**9, uniform=highest) == 43200
    assert backoff_delay(10**6, base_s=1, cap_s=10**9, uniform=highest) == 43200


@pytest.mark.parametrize("receive_count", [0, 1, -3])
def test_receive_count_zero_or_below_is_treated_as_the_first_receive(receive_count: int) -> None:
    assert backoff_delay(receive_count, BASE_S, CAP_S, uniform=highest) == backoff_delay(
        1, BASE_S, CAP_S, uniform=highest
    )
    assert backoff_delay(receive_count, BASE_S, CAP_S, uniform=highest) == BASE_S


def test_jitter_is_drawn_from_zero_to_the_ceiling() -> None:
    drawn: list[tuple[float, float]] = []

    def recording_uniform(low: float, high: float) -> float:
        drawn.append((low, high))
        return (low + high) / 2

    delay = backoff_delay(4, BASE_S, CAP_S, uniform=recording_uniform)

    assert drawn == [(0.0, 16)]
    assert delay == 8


def test_result_is_a_whole_number_of_seconds() -> None:
    delay = backoff_delay(2, BASE_S, CAP_S, uniform=lambda low, high: 2.7)

    assert type(delay) is int
    assert delay == 3


def test_a_fractional_ceiling_is_never_exceeded() -> None:
    # base 1.5: the first ceiling is 1.5 s and SQS takes whole seconds, so the delay rounds down
    assert backoff_delay(1, base_s=1.5, cap_s=60, uniform=highest) == 1
    assert backoff_delay(2, base_s=1.5, cap_s=60, uniform=highest) == 3


@pytest.mark.parametrize("receive_count", [1, 2, 3, 5, 8, 20])
def test_random_delays_stay_within_zero_and_the_ceiling(receive_count: int) -> None:
    ceiling = min(CAP_S, BASE_S * 2 ** (receive_count - 1))

    delays = [backoff_delay(receive_count, BASE_S, CAP_S) for _ in range(500)]

    assert all(type(d) is int for d in delays)
    assert min(delays) >= 0
    assert max(delays) <= ceiling


@pytest.mark.usefixtures("seeded_random")
def test_default_jitter_uses_random_uniform_and_varies() -> None:
    delays = [backoff_delay(8, BASE_S, CAP_S) for _ in range(200)]

    # 61 possible values (0..60); 200 draws from random.uniform cover many of them
    assert len(set(delays)) > 30
    assert min(delays) < 15
    assert max(delays) > 45

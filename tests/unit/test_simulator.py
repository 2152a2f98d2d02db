"""The PBX simulator's own logic: its plans, its arithmetic, and how it detects loss."""

from __future__ import annotations

import random

import pytest

from pbxsim.__main__ import parse_args
from pbxsim.plan import Rates, plan_call
from pbxsim.report import CallOutcome, Report, lost_sequences, percentile, stored_sequences

NO_NOISE = Rates(duplicate=0, reorder=0, late=0, skip=0)


def test_percentile_is_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == 50
    assert percentile(values, 95) == 95
    assert percentile(values, 99) == 99
    assert percentile(values, 100) == 100
    assert percentile([7.0], 99) == 7.0
    assert percentile([], 50) is None


def test_stored_sequences_are_derived_from_the_packets_block() -> None:
    # stored: 2, 3, 5 (4 missing), last_sequence 7 adds 6 and 7 to missing
    block = {"received": 3, "highest_sequence": 5, "missing": [4, 6, 7], "missing_count": 3}
    assert stored_sequences(block, last_sequence=7) == {2, 3, 5}
    assert stored_sequences({"received": 0, "highest_sequence": None, "missing": []}, None) == set()


def test_a_truncated_missing_list_cannot_be_verified() -> None:
    with pytest.raises(ValueError, match="truncated"):
        stored_sequences({"received": 1, "highest_sequence": 5000, "missing": [1] * 1000, "missing_count": 4999}, None)


def test_lost_sequences_are_the_acknowledged_ones_not_reported_stored() -> None:
    block = {"received": 3, "highest_sequence": 3, "missing": [2], "missing_count": 1}
    assert lost_sequences({0, 1, 2, 3}, block, last_sequence=3) == {2}
    assert lost_sequences({0, 1, 3}, block, last_sequence=3) == set()


def test_a_plan_without_noise_sends_every_packet_once_in_order() -> None:
    plan = plan_call("c", 10, NO_NOISE, random.Random(1))
    assert [s.sequence for s in plan.sends] == list(range(10))
    assert plan.last_sequence == 9
    assert plan.skipped == frozenset()


def test_duplicates_send_each_packet_twice_with_the_same_data() -> None:
    plan = plan_call("c", 5, Rates(duplicate=1, reorder=0, late=0, skip=0), random.Random(1))
    assert [s.sequence for s in plan.sends] == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4]
    assert plan.sends[0] == plan.sends[1]


def test_skipped_packets_are_never_sent() -> None:
    plan = plan_call("c", 5, Rates(duplicate=0, reorder=0, late=0, skip=1), random.Random(1))
    assert plan.sends == []
    assert plan.skipped == frozenset(range(5))


def test_late_packets_go_last_and_reordering_keeps_every_packet() -> None:
    rng = random.Random(3)
    plan = plan_call("c", 50, Rates(duplicate=0, reorder=0.5, late=0.2, skip=0), rng)
    sequences = [s.sequence for s in plan.sends]
    assert sorted(sequences) == list(range(50))
    assert sequences != list(range(50))


def test_report_counts_statuses_and_server_errors() -> None:
    report = Report()
    for status in (202, 202, 200, 409, 503, 422):
        report.record(status, 1.0)
    report.record(None, 0.0)
    d = report.to_dict()
    assert d["responses"] == {"202": 2, "200": 1, "409": 1, "other": 2}
    assert d["server_errors"] == 2  # the 503 and the connection error
    assert not report.ok


def test_report_is_not_ok_when_a_packet_is_lost() -> None:
    report = Report()
    report.calls["c"] = CallOutcome(call_id="c", lost={4})
    assert report.lost_packets == 1
    assert report.to_dict()["lost_by_call"] == {"c": [4]}
    assert not report.ok
    report.calls["c"].lost = set()
    assert report.ok


@pytest.mark.parametrize("argv", [["--duplicate-rate", "1.5"], ["--calls", "0"], ["--skip-rate", "-0.1"]])
def test_cli_refuses_bad_options(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as excinfo:
        parse_args(argv)
    assert excinfo.value.code == 2

"""How the simulator's report reads on the terminal: one line per measure, its figures
rounded and with their units; `--json` keeps every figure as measured."""

from __future__ import annotations

import io
import json
import re
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

import pbxsim.__main__ as cli
from pbxsim.__main__ import NOT_RENDERED, render, significant
from pbxsim.report import CallOutcome, Report
from pbxsim.runner import Options

P50_MS = 327.0517710000149


def measured_report() -> Report:
    """100 calls, 98 COMPLETED and 2 FAILED, with figures as unround as a run's."""
    report = Report(
        responses=Counter({"202": 4991, "200": 483}),
        end_responses=Counter({"202": 100}),
        latencies_ms=[P50_MS] * 50 + [1480.338] * 45 + [2210.9] * 4 + [3050.77],
        packets_sent=5474,
        requests=5474,
        streaming_s=6.80612,
        waiting_s=6.5123,
        checking_s=0.1312,
        waited=True,
        service_counts={
            "IN_PROGRESS": {"count": 0, "more": False},
            "COMPLETED": {"count": 1000, "more": True},
            "FAILED": {"count": 2, "more": False},
        },
    )
    for n in range(100):
        failed = n >= 98
        report.calls[f"run-{n}"] = CallOutcome(
            f"run-{n}",
            end_status=202,
            completed_after_s=6.53 + n / 100,
            state="FAILED" if failed else "COMPLETED",
            failure_reason="AI failed permanently on attempt 1: no" if failed else None,
        )
    return report


def rendered(report: dict[str, Any]) -> list[str]:
    console = Console(record=True, width=120, file=io.StringIO())
    render(report, console)
    return console.export_text().splitlines()


def value_of(lines: list[str], key: str) -> str:
    """The value cell of the one row of ``key``."""
    [row] = [line for line in lines if line.startswith(f"│ {key} ")]
    return row.strip("│").split("│")[1].strip()


def test_each_measure_is_one_line_of_rounded_figures_with_their_units() -> None:
    lines = rendered(measured_report().to_dict())

    assert value_of(lines, "latency_ms") == "p50 327 ms, p95 1480 ms, p99 2211 ms, max 3051 ms"
    assert value_of(lines, "packets_per_s") == "804 packets/s"  # 5474 / 6.80612 s
    assert value_of(lines, "phases_s") == "streaming 6.8 s, waiting 6.5 s, checking 0.1 s"
    assert value_of(lines, "end_to_completed_s") == "p50 7.0 s, p95 7.5 s"
    assert value_of(lines, "packets_per_request") == "1.00"
    assert value_of(lines, "responses") == "202: 4991  200: 483  409: 0  503: 0"
    assert value_of(lines, "end_responses") == "202: 100  200: 0  409: 0  503: 0"
    assert value_of(lines, "gave_up") == "packets: 0  ends: 0  reads: 0"
    assert value_of(lines, "final_states") == "COMPLETED: 98  FAILED: 2"
    assert value_of(lines, "service_calls_by_state") == "IN_PROGRESS: 0  COMPLETED: 1000+  FAILED: 2"
    assert value_of(lines, "calls") == "100"
    assert value_of(lines, "stuck_calls") == "0"
    assert value_of(lines, "ok") == "yes"


def test_every_measure_has_one_row_and_no_raw_dicts_or_long_floats() -> None:
    report = measured_report().to_dict()
    lines = rendered(report)
    text = "\n".join(lines)

    for key in report:
        rows = [line for line in lines if line.startswith(f"│ {key} ")]
        assert len(rows) == (0 if key in NOT_RENDERED else 1), key
    assert "{" not in text and "'" not in text
    assert not re.search(r"\d\.\d{4,}", text)


def test_answers_a_healthy_run_does_not_get_show_only_once_counted() -> None:
    report = measured_report()
    report.responses.update({"other": 3, "4xx": 1})

    assert value_of(rendered(report.to_dict()), "responses") == "202: 4991  200: 483  409: 0  4xx: 1  503: 0  other: 3"


def test_figures_not_measured_show_as_a_dash() -> None:
    lines = rendered(Report().to_dict())  # nothing sent, and --no-wait

    assert value_of(lines, "latency_ms") == "p50 -, p95 -, p99 -, max -"
    assert value_of(lines, "packets_per_s") == "-"
    assert value_of(lines, "packets_per_request") == "-"
    assert value_of(lines, "end_to_completed_s") == "p50 -, p95 -"
    assert value_of(lines, "final_states") == "-"
    assert value_of(lines, "service_calls_by_state") == "-"
    assert value_of(lines, "stuck_calls") == "not checked (--no-wait)"


@pytest.mark.parametrize(
    ("value", "digits", "text"),
    [
        (P50_MS, 3, "327"),
        (804.2761514636827, 3, "804"),
        (1480.338, 3, "1480"),  # whole digits are never rounded away
        (12.345, 3, "12.3"),
        (0.012345, 3, "0.0123"),
        (9.996, 3, "10.0"),  # the digits of what it rounds to
        (6.53, 2, "6.5"),
        (0.352, 2, "0.35"),
        (1.0, 3, "1.00"),
        (0.0, 3, "0"),
        (-3.14159, 2, "-3.1"),
    ],
)
def test_significant_digits_in_plain_notation(value: float, digits: int, text: str) -> None:
    assert significant(value, digits) == text


def test_the_json_report_keeps_every_figure_as_measured_while_the_terminal_rounds(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    report = measured_report()

    async def measured_run(options: Options) -> Report:
        return report

    monkeypatch.setattr(cli, "run", measured_run)
    out = tmp_path / "report.json"

    assert cli.main(["--calls", "1", "--quiet", "--json", str(out)]) == 0

    written = json.loads(out.read_text())
    assert written == json.loads(json.dumps(report.to_dict()))
    assert written["latency_ms"]["p50"] == P50_MS
    assert written["packets_per_s"] == 5474 / 6.80612
    assert written["phases_s"] == {"streaming": 6.806, "waiting": 6.512, "checking": 0.131}
    terminal = capsys.readouterr().out
    assert "p50 327 ms" in terminal and "804 packets/s" in terminal
    assert "327.05" not in terminal

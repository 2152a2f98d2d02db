"""The local stack's log meter (devstack/function_logs.py): what each function writes to
stdout and stderr, counted for the function running, for the cost model's CloudWatch Logs."""

from __future__ import annotations

import io
import logging
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest

from devstack.function_logs import LogMeter, in_function, run_in


def metered(monkeypatch: pytest.MonkeyPatch) -> tuple[LogMeter, io.StringIO, io.StringIO]:
    # In the test's body, not a fixture: pytest puts its own capture back on sys.stdout
    # between a fixture's setup and the test's call.
    out, err = io.StringIO(), io.StringIO()
    monkeypatch.setattr(sys, "stdout", out)
    monkeypatch.setattr(sys, "stderr", err)
    return LogMeter().install(), out, err


def test_each_line_is_counted_for_the_function_that_wrote_it_and_still_written(monkeypatch: pytest.MonkeyPatch) -> None:
    logs, out, err = metered(monkeypatch)
    print("the stack starting")  # no function running: the stack's own line, billed to none
    with in_function("IngestFunction"):
        print('{"_aws": {}, "PacketsAccepted": [10]}')
        sys.stderr.write("ünïcode warning\n")
    print("after")

    assert logs.stats() == {
        "IngestFunction": {
            "log_bytes": len('{"_aws": {}, "PacketsAccepted": [10]}\n')
            + len("ünïcode warning\n".encode()),  # UTF-8 bytes
            "log_events": 2,
        }
    }
    assert out.getvalue() == 'the stack starting\n{"_aws": {}, "PacketsAccepted": [10]}\nafter\n'
    assert err.getvalue() == "ünïcode warning\n"


def test_a_handler_on_an_executors_thread_is_counted_through_run_in(monkeypatch: pytest.MonkeyPatch) -> None:
    logs, _, _ = metered(monkeypatch)
    handler = logging.StreamHandler()  # takes sys.stderr now: the metered stream, as in the stack
    log = logging.getLogger("test_function_logs.worker")
    log.addHandler(handler)
    log.propagate = False
    try:
        with in_function("IngestFunction"), ThreadPoolExecutor(1) as pool:
            # An executor's thread does not inherit the caller's context: run_in names the function.
            pool.submit(log.warning, "unattributed").result()
            pool.submit(run_in, "AiWorkerFunction", log.warning, "attempt failed").result()
    finally:
        log.removeHandler(handler)

    assert logs.stats() == {"AiWorkerFunction": {"log_bytes": len("attempt failed\n"), "log_events": 1}}


def test_stats_with_reset_answer_the_counts_then_zero_them(monkeypatch: pytest.MonkeyPatch) -> None:
    logs, _, _ = metered(monkeypatch)
    run_in("AiWorkerFunction", print, "one")

    assert logs.stats(reset=True) == {"AiWorkerFunction": {"log_bytes": 4, "log_events": 1}}
    assert logs.stats() == {}

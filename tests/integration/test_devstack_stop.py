"""Stopping `make run` (`python -m devstack`) as a terminal or a supervisor does: Ctrl-C or
SIGTERM to its whole process group, while the AI worker has calls in flight.

The stop is quiet and in order: the pollers let the invocations in flight finish (or, on a
second Ctrl-C, abandon them), then the API stops, then the moto server; nothing is left
running, and nothing logs a traceback. The moto server also dies with a stack killed outright.
"""

from __future__ import annotations

import os
import re
import signal
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from devstack.__main__ import DRAIN_S
from devstack.child import ChildStack
from tests.integration.helpers import packet

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="reads /proc; moto's own session is Linux's")

AI_LATENCY_S = 3.0  # long enough to be in flight when the signal comes, short next to DRAIN_S
CALLS = 3


def wait_until(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(0.05)


def _stat(pid: int) -> list[str] | None:
    """/proc/<pid>/stat after the command name: state, ppid, pgrp, ...; None once it is gone."""
    try:
        return (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def running(pid: int) -> bool:
    """Neither gone nor a zombie (whoever inherited it may be slow to reap it)."""
    stat = _stat(pid)
    return stat is not None and stat[0] != "Z"


def processes(where: Callable[[list[str]], bool]) -> list[int]:
    pids = [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit()]
    return [pid for pid in pids if (stat := _stat(pid)) is not None and stat[0] != "Z" and where(stat)]


def moto_pid(stack: ChildStack) -> int:
    """The stack's one child: its moto server."""
    children = processes(lambda stat: int(stat[1]) == stack.proc.pid)
    assert len(children) == 1, children
    return children[0]


@contextmanager
def stack_in_own_group(log_path: Path, ai_latency_s: float) -> Iterator[tuple[ChildStack, int]]:
    """The stack as `make run` starts it, in a process group of its own, and its moto server's pid."""
    env = {
        "AI_PROVIDER": "mock",
        "AI_FAILURE_RATE": "0",
        "AI_MIN_LATENCY_S": str(ai_latency_s),
        "AI_MAX_LATENCY_S": str(ai_latency_s),
        # stdout (the handlers' JSON logs) and stderr (the stack's) in the order written.
        "PYTHONUNBUFFERED": "1",
    }
    with log_path.open("w") as log:
        stack = ChildStack(env, log, own_process_group=True)
        moto = moto_pid(stack)
        try:
            yield stack, moto
        finally:
            if stack.proc.poll() is None:
                os.killpg(stack.proc.pid, signal.SIGKILL)
                stack.proc.wait(timeout=30)
            if running(moto):
                os.kill(moto, signal.SIGKILL)


def calls_in_flight(stack: ChildStack, count: int) -> list[str]:
    """``count`` calls streamed and ended, once the AI worker is inside each one's attempt."""
    ids = [f"stop-{os.getpid()}-{time.monotonic_ns()}-{n}" for n in range(count)]
    with httpx.Client(base_url=stack.url, timeout=30) as api:
        for call_id in ids:
            for seq in range(3):
                assert api.post(f"/v1/call/stream/{call_id}", json=packet(seq)).status_code == 202
            assert api.post(f"/v1/call/{call_id}/end").status_code == 202

        def attempt_started(call_id: str) -> bool:
            call = api.get(f"/v1/call/{call_id}").json()
            return bool(call["state"] == "PROCESSING_AI" and call["ai"]["attempts"] >= 1)

        wait_until(lambda: all(attempt_started(c) for c in ids), 30, "the AI worker to take every call")
    return ids


def line_of(lines: list[str], text: str) -> int:
    """The index of the one line that ends with ``text``."""
    found = [i for i, line in enumerate(lines) if line.endswith(text)]
    assert len(found) == 1, (text, found)
    return found[0]


def assert_stopped_quietly_in_order(stack: ChildStack, moto: int, log_path: Path) -> list[str]:
    assert stack.proc.returncode == 0
    text = log_path.read_text()
    lines = text.splitlines()
    assert "Traceback" not in text
    assert not [line for line in lines if " ERROR " in line or line.startswith("ERROR:") or '"level":"ERROR"' in line]
    assert "EndpointConnectionError" not in text and "Could not connect" not in text
    order = [
        line_of(lines, "devstack: pollers stopped"),
        line_of(lines, "devstack: API stopped"),
        line_of(lines, "devstack: moto server stopped"),
        line_of(lines, "devstack: stopped"),
    ]
    assert order == sorted(order), "\n".join(lines[min(order) - 1 :])
    # The stack reaped its moto server; nothing of its process group is left either.
    assert not running(moto)
    wait_until(lambda: not processes(lambda stat: int(stat[2]) == stack.proc.pid), 10, "the process group to empty")
    return lines


@pytest.mark.parametrize(
    "signals",
    [("SIGTERM",), ("SIGINT",), ("SIGTERM", "SIGTERM")],
    # SIGTERM twice: `make run` passes the group's SIGTERM on to the stack, which gets two.
    ids=["sigterm", "ctrl-c", "sigterm-through-make"],
)
def test_a_signal_to_the_group_lets_the_calls_in_flight_finish_then_stops_api_then_moto(
    tmp_path: Path, signals: tuple[str, ...]
) -> None:
    log_path = tmp_path / "stack.log"
    with stack_in_own_group(log_path, AI_LATENCY_S) as (stack, moto):
        calls = calls_in_flight(stack, CALLS)
        for name in signals:
            os.killpg(stack.proc.pid, signal.Signals[name])
        stack.proc.wait(timeout=DRAIN_S + 30)

    lines = assert_stopped_quietly_in_order(stack, moto, log_path)
    line_of(lines, "devstack: TTL of PacketSlotsTable, PacketsTable, every 600 s")  # the stack runs DynamoDB's TTL
    line_of(lines, f"devstack: {signals[0]}: stopping the pollers, then the API, then the moto server")
    assert any(re.search(r"devstack: pollers: waiting for \d+ handler invocation", line) for line in lines)
    assert not any("abandoning" in line for line in lines)
    pollers_stopped = line_of(lines, "devstack: pollers stopped")
    for call_id in calls:  # each attempt in flight finished, and before the pollers stopped
        done = [i for i, line in enumerate(lines) if "work item done" in line and call_id in line]
        assert len(done) == 1 and done[0] < pollers_stopped, call_id


def test_ctrl_c_twice_abandons_the_calls_in_flight_and_still_stops_in_order(tmp_path: Path) -> None:
    log_path = tmp_path / "stack.log"
    with stack_in_own_group(log_path, ai_latency_s=120) as (stack, moto):
        calls = calls_in_flight(stack, CALLS)
        os.killpg(stack.proc.pid, signal.SIGINT)
        wait_until(lambda: "pollers: waiting for" in log_path.read_text(), 10, "the pollers to start waiting")
        asked = time.monotonic()
        os.killpg(stack.proc.pid, signal.SIGINT)
        stack.proc.wait(timeout=DRAIN_S + 30)
        took_s = time.monotonic() - asked

    lines = assert_stopped_quietly_in_order(stack, moto, log_path)
    assert took_s < DRAIN_S  # it did not wait out the drain, let alone the AI's 120 s
    abandoning = [
        i for i, line in enumerate(lines) if re.search(r"devstack: pollers: abandoning [1-9]\d* handler", line)
    ]
    assert len(abandoning) == 1 and abandoning[0] < line_of(lines, "devstack: pollers stopped")
    assert not [line for line in lines if "work item done" in line and any(c in line for c in calls)]


def test_the_moto_server_dies_with_a_stack_killed_outright(tmp_path: Path) -> None:
    with stack_in_own_group(tmp_path / "stack.log", AI_LATENCY_S) as (stack, moto):
        os.kill(stack.proc.pid, signal.SIGKILL)
        stack.proc.wait(timeout=30)
        wait_until(lambda: not running(moto), 10, "the moto server to exit after its parent")

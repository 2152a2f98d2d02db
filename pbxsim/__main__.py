"""`python -m pbxsim`: simulate a PBX against a running stack and report what it lost."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path

from rich.console import Console
from rich.table import Table

from pbxsim.plan import Rates
from pbxsim.retry import RetryPolicy
from pbxsim.runner import Options, run

EPILOG = """\
503 answers are retried as the API asks: after Retry-After seconds (--retry-backoff,
doubling, when the header is absent or not an integer), each wait capped at
--max-retry-wait, at most --max-retries times per request (packets, ends and the
simulator's own reads). A packet counts as acknowledged if any attempt got 202 or
200 duplicate (a 503 whose retry gets 200 duplicate hid a committed write), and every
acknowledged packet must be in the call's GET.

Exit status 1 when: an acknowledged packet is missing from the call's GET (lost); an
answer was not 2xx, 4xx or 503, or a request got no answer (server errors); a call's
GET could not be read (unverified); an ended call (end answered 202, or 200 once
finished) is IN_PROGRESS, or is not COMPLETED or FAILED when --timeout runs out
(stuck; not checked with --no-wait); a FAILED call has no failure_reason; or a call's
state, result and AI history disagree (see README). A request that gave up after its
retries is reported but is not by itself a failure: the stack said "not now, retry",
and nothing it acknowledged was dropped. It fails the run only where it hides a loss:
a GET of the final check that gives up leaves its call unverified.
"""


def parse_args(argv: list[str] | None = None) -> tuple[Options, Path | None]:
    p = argparse.ArgumentParser(
        prog="python -m pbxsim",
        description=__doc__,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--base-url", default="http://127.0.0.1:8000", help="the stack's API (local or deployed)")
    p.add_argument("--api-key", default=None, help="sent as X-API-Key")
    p.add_argument("--calls", type=int, default=100, help="concurrent calls")
    p.add_argument("--packets", type=int, default=20, help="packets per call")
    p.add_argument("--interval-ms", type=float, default=20.0, help="pause before each packet of a call")
    p.add_argument("--duplicate-rate", type=float, default=0.05)
    p.add_argument("--reorder-rate", type=float, default=0.05)
    p.add_argument("--late-rate", type=float, default=0.02, help="packets held back and sent last")
    p.add_argument("--skip-rate", type=float, default=0.0, help="packets never sent (reported missing, not lost)")
    p.add_argument("--connections", type=int, default=200, help="most requests in flight at once")
    p.add_argument("--no-wait", action="store_true", help="do not wait for COMPLETED or FAILED")
    p.add_argument("--timeout", type=float, default=600.0, help="seconds to wait for the calls to finish")
    p.add_argument("--max-retries", type=int, default=5, help="retries of a request answered 503 (0: none)")
    p.add_argument(
        "--max-retry-wait", type=float, default=5.0, help="longest wait before one retry, seconds (caps Retry-After)"
    )
    p.add_argument(
        "--retry-backoff",
        type=float,
        default=0.1,
        help="first wait when a 503 has no integer Retry-After, seconds; doubles each retry",
    )
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--json", type=Path, default=None, help="also write the report as JSON here")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    a = p.parse_args(argv)
    for name in ("duplicate_rate", "reorder_rate", "late_rate", "skip_rate"):
        if not 0 <= getattr(a, name) <= 1:
            p.error(f"--{name.replace('_', '-')} must be between 0 and 1")
    if a.calls < 1 or a.packets < 1 or a.connections < 1:
        p.error("--calls, --packets and --connections must be at least 1")
    if a.max_retries < 0 or a.max_retry_wait < 0 or a.retry_backoff < 0:
        p.error("--max-retries, --max-retry-wait and --retry-backoff must not be negative")
    options = Options(
        base_url=a.base_url,
        api_key=a.api_key,
        calls=a.calls,
        packets=a.packets,
        interval_s=a.interval_ms / 1000,
        rates=Rates(duplicate=a.duplicate_rate, reorder=a.reorder_rate, late=a.late_rate, skip=a.skip_rate),
        connections=a.connections,
        wait=not a.no_wait,
        timeout_s=a.timeout,
        seed=a.seed,
        progress=not a.quiet,
        retry=RetryPolicy(max_retries=a.max_retries, max_wait_s=a.max_retry_wait, fallback_s=a.retry_backoff),
    )
    return options, a.json


def render(report: dict[str, object], console: Console) -> None:
    table = Table(title="PBX simulator report", show_header=False)
    for key, value in report.items():
        if key not in ("lost_by_call", "problems_by_call"):
            table.add_row(key, json.dumps(value) if isinstance(value, dict) else str(value))
    console.print(table)


def main(argv: list[str] | None = None) -> int:
    options, json_path = parse_args(argv)
    report = asyncio.run(run(options))
    as_dict = report.to_dict()
    render(as_dict, Console(stderr=False))
    if json_path:
        json_path.write_text(json.dumps(as_dict, indent=2) + "\n")
    gave_up = sum(report.gave_up.values())
    if gave_up:
        print(f"note: {gave_up} requests gave up after {options.retry.max_retries} retries of 503", file=sys.stderr)
    if not report.ok:
        for call_id, problems in as_dict["problems_by_call"].items():
            print(f"{call_id}: {'; '.join(problems)}", file=sys.stderr)
        print(f"FAILED: {', '.join(report.failures())}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

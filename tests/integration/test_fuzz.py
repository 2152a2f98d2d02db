"""Schemathesis fuzzes the live API (uvicorn, moto), API key set, every check, every phase.

Schemathesis' CLI runs in a subprocess against the app served here over HTTP. The CLI,
not the pytest plugin: only the CLI runs all four phases (the schema's examples, the
deterministic coverage phase with its boundary and negative cases and unexpected
methods, random fuzzing, and stateful sequences that follow the inferred links from a
created call to its end, retry and listing), and its JSON report counts check failures
apart from schemathesis' own errors, so the test can assert on both. ``schema.parametrize()``
runs examples, coverage and fuzzing per operation but no stateful phase, and leaves
the telling-apart of its internal errors to us.

A failure prints the command (seeded: it makes the same cases again, against a running
stack's URL) and schemathesis' whole report, each finding with a curl line to replay it.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from callcore.bootstrap import Ports
from tests.conftest import LiveServer

FUZZ_KEY = "fuzz-key"
SEED = 20_261_201
MAX_EXAMPLES = 50  # per operation and phase: some 500 requests, 10 to 20 s on a 2-core machine

# Exclusions, each one check for one operation, each a false positive explained.
CONFIG = f"""
# Every check. (Not `--checks all` on the command line: a check named there is enabled
# for every operation, whatever an [[operations]] entry below says.)
[checks]
enabled = true

[auth.openapi.APIKeyHeader]
api_key = "{FUZZ_KEY}"

# `cursor` is opaque: only a next_cursor this API returned is one. A schema can say
# "a string of at most 2048 characters" but not that, so schemathesis' schema-valid
# cursors are refused with a 422 that positive_data_acceptance takes for a rejection
# of valid data. The stateful phase still follows real next_cursor values, and every
# other check (negative data included) still runs on this operation.
[[operations]]
include-path = "/v1/calls"
include-method = "GET"
checks.positive_data_acceptance.enabled = false
"""


@pytest.fixture(scope="module")
def keyed_api(ports: Ports) -> Iterator[str]:
    """The real app, with API_KEYS set, on uvicorn."""
    from ingest.app import create_app

    app = create_app(replace(ports, settings=replace(ports.settings, api_keys=(FUZZ_KEY,))))
    with LiveServer(app) as server:
        yield server.url


def test_schemathesis_finds_nothing(keyed_api: str, tmp_path: Path) -> None:
    config = tmp_path / "schemathesis.toml"
    config.write_text(CONFIG)
    report = tmp_path / "report.json"
    command = [
        sys.executable,
        "-m",
        "schemathesis.cli",
        "--config-file",
        str(config),
        "run",
        f"{keyed_api}/openapi.json",
        "--max-examples",
        str(MAX_EXAMPLES),
        "--seed",
        str(SEED),
        "--workers",
        # One worker: the order of requests, and so the run, is reproducible. (With two,
        # 4.32 on Python 3.11 also meets internal errors: threads racing in ast.parse.)
        "1",
        "--generation-database",
        "none",  # nothing replayed from an earlier run
        "--request-timeout",
        "15",
        "--no-color",
        "--report",
        "json",
        "--report-json-path",
        str(report),
    ]
    started = time.monotonic()
    run = subprocess.run(command, capture_output=True, text=True, timeout=240, check=False, cwd=tmp_path)
    elapsed = time.monotonic() - started
    output = f"{shlex.join(command)}\nexited {run.returncode} after {elapsed:.0f} s\n{run.stdout}\n{run.stderr}"
    assert report.exists(), output
    summary = json.loads(report.read_text())

    assert summary["complete"], output
    assert summary["operations"]["selected"] == summary["operations"]["tested"] == 10, output
    assert summary["failures"] == [], output
    # Errors are not only schemathesis' own: a request that timed out or had its connection
    # reset is one. None is expected, so any is worth a look.
    assert summary["errors"] == [], output
    assert run.returncode == 0, output

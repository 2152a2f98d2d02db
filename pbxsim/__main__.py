"""`python -m pbxsim`: simulate a PBX against a running stack and report what it lost."""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import sys
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from pbxsim.plan import PACKET_S, Rates, batch_packets
from pbxsim.retry import RetryPolicy
from pbxsim.runner import Options, run
from pbxsim.speech import FRAME_S, SpeechError, SpeechRequest, fixture_rows

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

Batches (--batch-ms N): each call's packets, in the order planned (duplicates, reordering
and late packets included), go in consecutive POST /v1/call/stream/{call_id}/batch
requests of N ms of audio each: round(N / --interval-ms) packets (N / 20 ms with --speech,
or when --interval-ms is 0), at least 1 and at most 50; a call's last batch may be
shorter. A batch is sent once its packets' intervals have passed, as a PBX sends one once
it holds that much audio. A batch answered 503 is sent again whole, like a packet. Each
packet counts its own result, as the single route's answer: accepted as 202, duplicate as
200 (both acknowledged), conflict and ended as 409; a batch that gets no result counts its
final answer for each of its packets. "requests" counts the requests, "packets_per_request"
is packets_sent over requests; gave_up, retries and latency_ms count a batch as one request.
A 200 whose results are not the batch's packets, in order, is a server error.

Speech (--speech): each call streams real speech as a PBX does, 20 ms G.711 mu-law
frames at 8 kHz (160 bytes, base64, one per packet): the committed fixtures
(tests/fixtures/speech), cycled over the calls, or with --text/--text-file any text
spoken by espeak-ng. --calls defaults to one call per speech; --packets and
--interval-ms do not apply (the audio sets a call's length; --speed or --fast its pace).
The duplicate/reorder/late/skip rates apply as usual (a skipped packet is 20 ms of
silence to the AI). Once a call is COMPLETED its transcript is compared with the text
spoken: the word error rate per call (word-level Levenshtein distance over the number
of reference words, after lowercasing and stripping punctuation), their mean, and
whether the sentiment label is the text's expected one. These are measurements: they
do not change the exit status.
"""


@dataclass(frozen=True)
class Cli:
    options: Options
    json_path: Path | None
    speech: SpeechRequest | None  # --speech: the audio main() loads into options.speech


def parse_args(argv: list[str] | None = None) -> tuple[Options, Path | None]:
    cli = parse_cli(argv)
    return cli.options, cli.json_path


def parse_cli(argv: list[str] | None = None) -> Cli:
    p = argparse.ArgumentParser(
        prog="python -m pbxsim",
        description=__doc__,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--base-url", default="http://127.0.0.1:8000", help="the stack's API (local or deployed)")
    p.add_argument("--api-key", default=None, help="sent as X-API-Key")
    p.add_argument("--calls", type=int, default=None, help="concurrent calls (100; with --speech, one per speech)")
    p.add_argument("--packets", type=int, default=None, help="packets per call (20)")
    p.add_argument("--interval-ms", type=float, default=None, help="pause before each packet of a call (20)")
    p.add_argument("--duplicate-rate", type=float, default=0.05)
    p.add_argument("--reorder-rate", type=float, default=0.05)
    p.add_argument("--late-rate", type=float, default=0.02, help="packets held back and sent last")
    p.add_argument("--skip-rate", type=float, default=0.0, help="packets never sent (reported missing, not lost)")
    p.add_argument(
        "--batch-ms",
        type=float,
        default=0.0,
        metavar="N",
        help="send each call's packets in batches of N ms of audio, one POST .../batch each: "
        "round(N / --interval-ms) packets, 1 to 50 (speech, or --interval-ms 0: N / 20 ms); "
        "0: one request per packet (0)",
    )
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
    speech = p.add_argument_group("speech (see below)")
    speech.add_argument(
        "--speech", action="store_true", help="stream real speech: the committed fixtures, cycled over the calls"
    )
    speech.add_argument(
        "--text",
        action="append",
        default=[],
        metavar="TEXT",
        help="speak TEXT with espeak-ng instead (repeatable: one speech each; implies --speech)",
    )
    speech.add_argument(
        "--text-file", type=Path, default=None, help="speak each non-empty line of this file (implies --speech)"
    )
    speech.add_argument("--voice", default=None, help="espeak-ng voice for --text (en-us+klatt, as the fixtures)")
    pace = speech.add_mutually_exclusive_group()
    pace.add_argument(
        "--speed", type=float, default=None, help="pace, times real time (1: one 20 ms frame per 20 ms per call)"
    )
    pace.add_argument("--fast", action="store_true", help="no pacing: each call's frames as fast as answered")
    a = p.parse_args(argv)
    request = _speech_request(p, a)
    for name in ("duplicate_rate", "reorder_rate", "late_rate", "skip_rate"):
        if not 0 <= getattr(a, name) <= 1:
            p.error(f"--{name.replace('_', '-')} must be between 0 and 1")
    if request is None:
        calls = 100 if a.calls is None else a.calls
    else:
        calls = a.calls if a.calls is not None else len(request.texts) or _fixture_count(p)
    packets = 20 if a.packets is None else a.packets
    if calls < 1 or packets < 1 or a.connections < 1:
        p.error("--calls, --packets and --connections must be at least 1")
    if a.max_retries < 0 or a.max_retry_wait < 0 or a.retry_backoff < 0:
        p.error("--max-retries, --max-retry-wait and --retry-backoff must not be negative")
    if not (a.batch_ms >= 0 and math.isfinite(a.batch_ms)):
        p.error("--batch-ms must be 0 or a positive number")
    # A batch holds an amount of audio: a speech frame, else a packet per --interval-ms, and
    # without pacing the 20 ms that the plan's timestamps give each packet.
    if request is not None:
        packet_ms = FRAME_S * 1000
    else:
        packet_ms = a.interval_ms if a.interval_ms is not None and a.interval_ms > 0 else PACKET_S * 1000
    options = Options(
        base_url=a.base_url,
        api_key=a.api_key,
        calls=calls,
        packets=packets,
        interval_s=(20.0 if a.interval_ms is None else a.interval_ms) / 1000,
        rates=Rates(duplicate=a.duplicate_rate, reorder=a.reorder_rate, late=a.late_rate, skip=a.skip_rate),
        connections=a.connections,
        wait=not a.no_wait,
        timeout_s=a.timeout,
        seed=a.seed,
        progress=not a.quiet,
        retry=RetryPolicy(max_retries=a.max_retries, max_wait_s=a.max_retry_wait, fallback_s=a.retry_backoff),
        batch=batch_packets(a.batch_ms, packet_ms) if a.batch_ms else 0,
    )
    if request is not None:
        # Real time: frame i of a call at its start + i * 20 ms, however long each request takes.
        options = replace(options, interval_s=0.0 if a.fast else FRAME_S / (a.speed or 1.0), on_clock=True)
    return Cli(options, a.json, request)


def _speech_request(p: argparse.ArgumentParser, a: argparse.Namespace) -> SpeechRequest | None:
    """What --speech, --text and --text-file ask for; None without them (refusing the speech-only options)."""
    texts = list(a.text)
    if a.text_file is not None:
        try:
            texts += [line.strip() for line in a.text_file.read_text().splitlines() if line.strip()]
        except (OSError, UnicodeDecodeError) as exc:
            p.error(f"--text-file: {exc}")
        if not texts:
            p.error(f"--text-file {a.text_file} has no text")
    if not (a.speech or texts or a.text_file is not None):
        if a.speed is not None or a.fast or a.voice is not None:
            p.error("--speed, --fast and --voice apply to --speech (or --text)")
        return None
    if any(not t.strip() for t in texts):
        p.error("--text must not be empty")
    if a.packets is not None or a.interval_ms is not None:
        p.error("--packets and --interval-ms do not apply to speech: the audio sets its length, --speed its pace")
    if a.speed is not None and not (a.speed > 0 and a.speed < float("inf")):
        p.error("--speed must be a positive number")
    if a.voice is not None and not texts:
        p.error("--voice applies to --text (the fixtures are already spoken)")
    return SpeechRequest(tuple(texts), **({"voice": a.voice} if a.voice else {}))


def _fixture_count(p: argparse.ArgumentParser) -> int:
    try:
        return len(fixture_rows())
    except SpeechError as exc:
        p.error(str(exc))


def significant(value: float, digits: int = 3) -> str:
    """``value`` to ``digits`` significant digits, in plain notation: 327.05 -> "327", 0.01234 ->
    "0.0123". Whole digits are never rounded away (1234.5 -> "1234"): a figure reads as it is."""
    if value == 0 or not math.isfinite(value):
        return f"{value:g}"
    # The magnitude once rounded: 9.996 has the decimals of the 10.0 it shows as.
    magnitude = math.floor(math.log10(abs(float(f"{value:.{digits - 1}e}"))))
    return f"{value:.{max(0, digits - 1 - magnitude)}f}"


def _figures(values: dict[str, Any], unit: Callable[[float], str]) -> str:
    """Named figures of one measure on one line: "p50 327 ms, p95 1480 ms" ("-": none measured)."""
    return ", ".join(f"{name} {'-' if value is None else unit(value)}" for name, value in values.items())


def _counts(values: dict[str, Any], unless_zero: tuple[str, ...] = ()) -> str:
    """Counts by key on one line: "202: 4991  200: 483  409: 0"; the keys of ``unless_zero`` only when counted."""
    shown = [f"{key}: {count}" for key, count in values.items() if count or key not in unless_zero]
    return "  ".join(shown) or "-"


# Answers a healthy run seldom or never gets: on the terminal only when some came.
RARE_ANSWERS = ("2xx", "4xx", "other")


# How the terminal shows a measure; --json keeps every figure as measured.
FORMATS: dict[str, Callable[[Any], str]] = {
    "packets_per_request": significant,
    "responses": lambda v: _counts(v, RARE_ANSWERS),
    "end_responses": lambda v: _counts(v, RARE_ANSWERS),
    "latency_ms": lambda v: _figures(v, lambda ms: f"{significant(ms)} ms"),
    "packets_per_s": lambda v: f"{significant(v)} packets/s",
    "phases_s": lambda v: _figures(v, lambda s: f"{s:.1f} s"),
    "end_to_completed_s": lambda v: _figures(v, lambda s: f"{significant(s, 2)} s"),
    "service_calls_by_state": lambda v: "  ".join(f"{s}: {c['count']}{'+' if c['more'] else ''}" for s, c in v.items()),
    "ok": lambda v: "yes" if v else "no",
}
NOT_RENDERED = ("lost_by_call", "problems_by_call", "speech")  # listed apart, or in --json


def render_value(key: str, value: Any) -> str:
    """One measure of the report as one line of text: rounded, with its unit."""
    if value is None:
        return "not checked (--no-wait)" if key == "stuck_calls" else "-"
    if key in FORMATS:
        return FORMATS[key](value)
    if isinstance(value, dict):
        return _counts(value)
    if isinstance(value, float):
        return significant(value)
    return str(value)


def render(report: dict[str, object], console: Console) -> None:
    table = Table(title="PBX simulator report", show_header=False)
    table.add_column("measure", no_wrap=True)
    table.add_column("value")
    for key, value in report.items():
        if key not in NOT_RENDERED:
            table.add_row(key, Text(render_value(key, value)))  # text, not rich markup
    console.print(table)
    if isinstance(speech := report.get("speech"), dict):
        render_speech(speech, console)


SPEECH_ROWS = 50  # calls listed on the terminal; --json has every one
SPEECH_TEXTS = 10  # calls whose words (said, heard) are printed in full


def render_speech(summary: dict[str, Any], console: Console) -> None:
    """Per-call word error rate and sentiment, what the first calls said and what was heard, then the mean."""
    rows: list[dict[str, Any]] = summary["by_call"]
    # The runner names calls <run prefix>-<n>: the prefix goes in the title, the rows keep <n>.
    prefixes = {row["call_id"].rpartition("-")[0] for row in rows}
    prefix = f"{prefixes.pop()}-" if len(prefixes) == 1 else ""
    table = Table(title=f"Speech: transcripts vs the texts spoken, calls {prefix}N")
    for column in ("call", "source", "s", "state", "WER", "label", "expected"):
        table.add_column(column, no_wrap=True, min_width=len(column), overflow="fold")
    for row in rows[:SPEECH_ROWS]:
        table.add_row(
            row["call_id"][len(prefix) :],
            row["source"],
            f"{row['audio_s']:.2f}",
            str(row["state"]),
            "-" if row["wer"] is None else f"{row['wer']:.3f}",
            str(row["sentiment"] or "-"),
            str(row["expected_sentiment"] or "-"),
        )
    console.print(table)
    if len(rows) > SPEECH_ROWS:
        console.print(f"({len(rows) - SPEECH_ROWS} more calls in --json)")
    for row in rows[:SPEECH_TEXTS]:
        console.print(f"{row['call_id'][len(prefix) :]}  said:  {row['reference']}", markup=False, highlight=False)
        heard = "(no transcript)" if row["transcript"] is None else repr(row["transcript"])
        console.print(f"{' ' * len(row['call_id'][len(prefix) :])}  heard: {heard}", markup=False, highlight=False)
    if len(rows) > SPEECH_TEXTS:
        console.print(f"(the words of {len(rows) - SPEECH_TEXTS} more calls in --json)")
    mean, pooled = summary["mean_wer"], summary["pooled_wer"]
    line = f"mean WER over {summary['calls_with_transcript']} of {summary['calls']} calls with a transcript: "
    line += "-" if mean is None else f"{mean:.3f} (pooled: {pooled:.3f})"
    if summary["sentiment_compared"]:
        agreed = round(summary["sentiment_agreement"] * summary["sentiment_compared"])
        line += f"; sentiment as expected in {agreed} of {summary['sentiment_compared']}"
    console.print(line)


def main(argv: list[str] | None = None) -> int:
    cli = parse_cli(argv)
    options, json_path = cli.options, cli.json_path
    if cli.speech is not None:
        try:
            speeches = tuple(cli.speech.load())
        except SpeechError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        options = replace(options, speech=speeches)
        pace = "as fast as answered" if not options.interval_s else f"{FRAME_S / options.interval_s:g}x real time"
        print(
            f"speech: {options.calls} calls over {len(speeches)} speeches "
            f"({min(s.duration_s for s in speeches):.1f} to {max(s.duration_s for s in speeches):.1f} s), {pace}",
            file=sys.stderr,
        )
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

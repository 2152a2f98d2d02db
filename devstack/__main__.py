"""`python -m devstack`: the local stack in the foreground, until Ctrl-C or SIGTERM.

moto server (child process) <- tables and queues from template.yaml <- the ingest app on uvicorn.

Ctrl-C or SIGTERM stops it in order: the pollers stop receiving and let the handler
invocations in flight finish (for up to DRAIN_S; Ctrl-C again abandons them), then uvicorn
stops, then the moto server. Each step logs a line: "pollers stopped", "API stopped",
"moto server stopped", then "stopped". The exit status is then 0; it is 1 if the moto
server exited on its own or the stack could not start, 2 on a configuration error.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
from collections.abc import Iterator
from types import FrameType
from typing import Any

import boto3
import uvicorn

from callcore.settings import Settings, SettingsError
from devstack.aws_env import point_sdks_at
from devstack.function_logs import LogMeter
from devstack.moto_process import MotoProcess
from devstack.poller import SqsPoller, build_pollers, load_handler, run_on_schedule
from devstack.provision import provision
from devstack.template import ScheduleSource, load_template, schedule_sources
from devstack.ttl import TTL_SWEEP_S, TtlSweeper, ttl_tables
from devstack.usage import FunctionClock

HOST = "127.0.0.1"
# How long the handler invocations in flight get to finish once the stack is asked to stop:
# the mock AI's and the offline AI's calls take seconds; a caller waiting for the stack to
# exit (devstack.child.ChildStack) waits 30 s.
DRAIN_S = 10.0
logger = logging.getLogger("devstack")


class StackServer(uvicorn.Server):
    """uvicorn without signal handlers of its own: the stack stops it, after the pollers."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class Shutdown:
    """SIGINT and SIGTERM, as each phase of the stack takes them.

    Starting up, the first one unwinds like Ctrl-C. Running, the first one asks for the
    orderly stop, and a second Ctrl-C abandons the handler invocations in flight; a second
    SIGTERM does not (make passes its own SIGTERM on to the stack, so a SIGTERM to the group
    arrives twice). Once the event loop is done, they are ignored: stopping moto is bounded
    anyway (SIGTERM, then SIGKILL).
    """

    def __init__(self) -> None:
        self.requested = asyncio.Event()
        self.hurry = asyncio.Event()
        self.moto_exited = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._interrupted = False
        self._done = False

    def install(self) -> None:
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, self._on_signal)

    @contextlib.contextmanager
    def running(self, loop: asyncio.AbstractEventLoop) -> Iterator[None]:
        self._loop = loop
        try:
            yield
        finally:
            # From now on a signal would find the loop closing: nothing is left for it to stop.
            self.ignore_signals()

    def ignore_signals(self) -> None:
        self._done = True

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        if self._done:
            return
        if self._loop is None:
            if not self._interrupted:
                self._interrupted = True
                raise KeyboardInterrupt
            return
        # This runs in the loop's thread, maybe while the loop sleeps in epoll: the threadsafe
        # call wakes it.
        self._loop.call_soon_threadsafe(self._signalled, signal.Signals(signum))

    def _signalled(self, sig: signal.Signals) -> None:
        if not self.requested.is_set():
            logger.info("%s: stopping the pollers, then the API, then the moto server", sig.name)
            self.requested.set()
        elif sig == signal.SIGINT:
            self.hurry.set()

    def moto_gone(self) -> None:
        logger.error("the moto server exited; stopping the stack")
        self.moto_exited = True
        self.requested.set()


async def _watch_moto(moto: MotoProcess, shutdown: Shutdown) -> None:
    while moto.alive():
        await asyncio.sleep(0.5)
    shutdown.moto_gone()


async def _serve_api(server: uvicorn.Server) -> None:
    try:
        await server.serve()
    except SystemExit as exc:
        # How uvicorn says it could not start (it logged why): an error of the stack, which
        # then stops in order, rather than an exit that unwinds the event loop under the pollers.
        raise RuntimeError(f"the API did not start (uvicorn exited with {exc.code})") from None


async def _stop_pollers(
    tasks: list[asyncio.Task[None]], pollers: list[SqsPoller], stop: asyncio.Event, hurry: asyncio.Event
) -> bool:
    """Stop receiving and wait for the invocations in flight, up to DRAIN_S or a hurry; True if some were abandoned."""
    stop.set()
    if in_flight := sum(p.in_flight for p in pollers):
        logger.info(
            "pollers: waiting for %d handler invocation(s) in flight (up to %g s; Ctrl-C again abandons them)",
            in_flight,
            DRAIN_S,
        )
    finished = asyncio.gather(*tasks, return_exceptions=True)
    hurried = asyncio.create_task(hurry.wait())
    either: list[asyncio.Future[Any]] = [finished, hurried]
    await asyncio.wait(either, timeout=DRAIN_S, return_when=asyncio.FIRST_COMPLETED)
    hurried.cancel()
    abandoned = not finished.done()
    if abandoned:
        logger.info(
            "pollers: abandoning %d handler invocation(s) in flight (%s)",
            sum(p.in_flight for p in pollers),
            "Ctrl-C again" if hurry.is_set() else f"still running after {DRAIN_S:g} s",
        )
        for task in tasks:
            task.cancel()
    for result in await finished:
        if isinstance(result, Exception):
            logger.error("a poller failed", exc_info=result)
    logger.info("pollers stopped")
    return abandoned


async def _serve(
    server: uvicorn.Server,
    pollers: list[SqsPoller],
    schedules: list[ScheduleSource],
    moto: MotoProcess,
    shutdown: Shutdown,
) -> bool:
    """Serve until asked to stop, then stop in order; True if handler invocations were abandoned."""
    stop = asyncio.Event()
    with shutdown.running(asyncio.get_running_loop()):
        tasks = [asyncio.create_task(p.run(stop)) for p in pollers]
        tasks += [asyncio.create_task(run_on_schedule(s, load_handler(s.handler), stop)) for s in schedules]
        api = asyncio.create_task(_serve_api(server))
        requested = asyncio.create_task(shutdown.requested.wait())
        helpers: list[asyncio.Task[Any]] = [asyncio.create_task(_watch_moto(moto, shutdown)), requested]
        try:
            # uvicorn returning by itself (it could not start) stops the stack as well.
            await asyncio.wait([api, requested], return_when=asyncio.FIRST_COMPLETED)
            abandoned = await _stop_pollers(tasks, pollers, stop, shutdown.hurry)
            server.should_exit = True
            await api
            logger.info("API stopped")
            return abandoned
        finally:
            for helper in helpers:
                helper.cancel()
            await asyncio.gather(*helpers, return_exceptions=True)


def _start_logs() -> LogMeter:
    # Before any handler holds sys.stdout or sys.stderr: what each function logs is counted.
    logs = LogMeter().install()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("botocore").setLevel(logging.WARNING)
    return logs


def main() -> int:
    logs = _start_logs()
    shutdown = Shutdown()
    shutdown.install()
    try:
        settings = Settings.from_env()
    except SettingsError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    moto = MotoProcess(HOST, settings.moto_port, own_session=True)
    ttl: TtlSweeper | None = None
    abandoned = False
    code = 0
    try:
        moto.start()
        logger.info("moto server on %s", moto.endpoint)
        point_sdks_at(moto.endpoint)
        template = load_template()
        session = boto3.session.Session()
        stack = provision(template, session.client("dynamodb"), session.client("sqs"), s3=session.client("s3"))
        os.environ.update(stack.function_environment(template))
        logger.info("created from template.yaml: tables %s, queues %s", sorted(stack.tables), sorted(stack.queue_urls))

        from ingest.app import app  # reads the environment set above

        ttl = _start_ttl(moto.endpoint, template)

        pollers = build_pollers(template, stack, session.client("sqs"))
        schedules = schedule_sources(template)
        _log_sources(pollers, schedules)

        # Timed as Lambda bills it, for the bench's cost model (GET /_local_usage).
        clock = FunctionClock("IngestFunction", pollers, logs)
        config = uvicorn.Config(
            clock.asgi(app),
            host=HOST,
            port=settings.api_port,
            log_level="info",
            access_log=False,
            # Requests in flight get as long as handler invocations to finish (not forced:
            # uvicorn's force_exit skips the app's shutdown, which then logs a traceback).
            timeout_graceful_shutdown=int(DRAIN_S),
        )
        server = StackServer(config)
        print(
            f"\n  PBX AI Call Processor: http://{HOST}:{settings.api_port}  (docs: http://{HOST}:{settings.api_port}/docs)\n",
            flush=True,
        )
        # uvicorn's own loop (uvloop when installed), as `uvicorn.run` would pick.
        with asyncio.Runner(loop_factory=config.get_loop_factory()) as runner:
            abandoned = runner.run(_serve(server, pollers, schedules, moto, shutdown))
        code = 1 if shutdown.moto_exited else 0
    except KeyboardInterrupt:
        code = 0
    except (RuntimeError, SettingsError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        code = 1
    finally:
        shutdown.ignore_signals()
        if ttl is not None:
            ttl.stop()
        if moto.alive():
            moto.stop()
            logger.info("moto server stopped")
        logger.info("stopped")
    if abandoned:
        _exit_now(code)
    return code


def _start_ttl(moto_endpoint: str, template: dict[str, Any]) -> TtlSweeper:
    """DynamoDB's TTL, which moto does not run: packets leave after their expiry here too."""
    tables = ttl_tables(template)
    ttl = TtlSweeper(moto_endpoint)
    ttl.start()
    logger.info("TTL of %s, every %.0f s", ", ".join(sorted(tables)), TTL_SWEEP_S)
    return ttl


def _log_sources(pollers: list[SqsPoller], schedules: list[ScheduleSource]) -> None:
    for sched in schedules:
        logger.info("schedule %s every %ss", sched.handler, sched.every_s)
    for p in pollers:
        src = p.source
        logger.info(
            "event source %s -> %s (batch %d, window %ss, concurrency %d)",
            src.queue,
            src.handler,
            src.batch_size,
            src.batching_window_s,
            src.maximum_concurrency,
        )


def _exit_now(code: int) -> None:
    # The abandoned invocations' threads would hold the interpreter's exit until their
    # handlers return (it joins executor threads): leave now, as Lambda ends a sandbox.
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    sys.exit(main())

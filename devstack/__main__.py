"""`python -m devstack`: the local stack in the foreground, until Ctrl-C or SIGTERM.

moto server (child process) <- tables and queues from template.yaml <- the ingest app on uvicorn.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
from types import FrameType

import boto3
import uvicorn

from callcore.settings import Settings, SettingsError
from devstack.aws_env import point_sdks_at
from devstack.moto_process import MotoProcess
from devstack.poller import SqsPoller, build_pollers, load_handler, run_on_schedule
from devstack.provision import provision
from devstack.template import ScheduleSource, load_template, schedule_sources
from devstack.usage import FunctionClock

HOST = "127.0.0.1"
logger = logging.getLogger("devstack")


def _terminate(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


async def _serve(
    server: uvicorn.Server, pollers: list[SqsPoller], schedules: list[ScheduleSource], moto: MotoProcess
) -> None:
    stop = asyncio.Event()

    async def watch_moto() -> None:
        while moto.alive() and not stop.is_set():
            await asyncio.sleep(0.5)
        if not stop.is_set():
            logger.error("the moto server exited; stopping the stack")
            server.should_exit = True

    tasks = [asyncio.create_task(p.run(stop)) for p in pollers]
    tasks += [asyncio.create_task(run_on_schedule(s, load_handler(s.handler), stop)) for s in schedules]
    watcher = asyncio.create_task(watch_moto())
    try:
        await server.serve()
    finally:
        stop.set()  # pollers finish the batches in flight, then return
        await asyncio.gather(*tasks, watcher, return_exceptions=True)


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("botocore").setLevel(logging.WARNING)
    # Until uvicorn takes the signals over, SIGTERM unwinds like Ctrl-C so moto is stopped too.
    signal.signal(signal.SIGTERM, _terminate)
    try:
        settings = Settings.from_env()
    except SettingsError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    moto = MotoProcess(HOST, settings.moto_port)
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

        pollers = build_pollers(template, stack, session.client("sqs"))
        schedules = schedule_sources(template)
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

        # Timed as Lambda bills it, for the bench's cost model (GET /_local_usage).
        clock = FunctionClock("IngestFunction", pollers)
        config = uvicorn.Config(clock.asgi(app), host=HOST, port=settings.api_port, log_level="info", access_log=False)
        server = uvicorn.Server(config)
        print(
            f"\n  PBX AI Call Processor: http://{HOST}:{settings.api_port}  (docs: http://{HOST}:{settings.api_port}/docs)\n",
            flush=True,
        )
        # uvicorn's own loop (uvloop when installed), as `uvicorn.run` would pick.
        with asyncio.Runner(loop_factory=config.get_loop_factory()) as runner:
            runner.run(_serve(server, pollers, schedules, moto))
        return 0
    except KeyboardInterrupt:
        return 0
    except (RuntimeError, SettingsError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        moto.stop()
        logger.info("stopped")


if __name__ == "__main__":
    sys.exit(main())

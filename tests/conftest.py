"""Fixtures for integration tests: a real moto server (child process), resources from
template.yaml, and the real app served by uvicorn over HTTP."""

from __future__ import annotations

import asyncio
import os
import re
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import boto3
import httpx
import pytest
import uvicorn

from callcore.bootstrap import AwsClients, Ports, build_clients, build_ports
from callcore.settings import Settings
from devstack.aws_env import point_sdks_at
from devstack.moto_process import MotoProcess, free_port
from devstack.provision import Stack, bucket_name, parameters, provision
from devstack.template import load_template

# The session's moto server gets its port now, before any test module is imported:
# the handler modules build their clients at import, as Lambda does at init, from the
# environment. So the environment is the one the session stack will have, from the
# start; no test can reach real AWS (fake credentials, a local endpoint).
SESSION_MOTO_PORT = free_port()
SESSION_ENDPOINT = f"http://127.0.0.1:{SESSION_MOTO_PORT}"
point_sdks_at(SESSION_ENDPOINT, os.environ)


# The tests' stacks run the seed's mock provider (the packets' own text, no speech
# recognition), unless a test chooses another: most tests stream text, not speech.
TEST_PARAMETERS_ENV = {"AI_PROVIDER": "mock"}


def _expected_function_env(endpoint: str) -> dict[str, str]:
    """What provisioning the template on a fresh moto server at ``endpoint`` will give the functions."""
    template = load_template()
    names = [name for name, res in template["Resources"].items() if res["Type"] == "AWS::SQS::Queue"]
    stack = Stack(
        parameters=parameters(template, TEST_PARAMETERS_ENV),
        tables={n: n for n, r in template["Resources"].items() if r["Type"] == "AWS::DynamoDB::Table"},
        buckets={n: bucket_name(n) for n, r in template["Resources"].items() if r["Type"] == "AWS::S3::Bucket"},
        queue_urls={n: f"{endpoint}/123456789012/{n}" for n in names},
        queue_arns={n: f"arn:aws:sqs:us-east-1:123456789012:{n}" for n in names},
    )
    return stack.function_environment(template)


os.environ.update(_expected_function_env(SESSION_ENDPOINT))


@dataclass(frozen=True)
class MotoStack:
    moto: MotoProcess
    stack: Stack
    env: dict[str, str]

    def settings(self, **overrides: Any) -> Settings:
        return Settings.from_env({**os.environ, **self.env, **{k: str(v) for k, v in overrides.items()}})


def start_moto_stack(env_overrides: dict[str, str] | None = None, port: int | None = None) -> MotoStack:
    """A moto server with the template's tables and queues, and the env the functions would get."""
    moto = MotoProcess("127.0.0.1", port or free_port()).start()
    aws_env: dict[str, str] = {}
    point_sdks_at(moto.endpoint, aws_env)
    session = boto3.session.Session(
        aws_access_key_id="testing", aws_secret_access_key="testing", region_name="us-east-1"
    )
    template = load_template()
    stack = provision(
        template,
        session.client("dynamodb", endpoint_url=moto.endpoint),
        session.client("sqs", endpoint_url=moto.endpoint),
        env={**TEST_PARAMETERS_ENV, **(env_overrides or {})},
        s3=session.client("s3", endpoint_url=moto.endpoint),
    )
    return MotoStack(moto=moto, stack=stack, env={**aws_env, **stack.function_environment(template)})


@pytest.fixture(scope="session")
def moto_stack() -> Iterator[MotoStack]:
    ms = start_moto_stack(port=SESSION_MOTO_PORT)
    try:
        mismatched = {k: (os.environ.get(k), v) for k, v in ms.env.items() if os.environ.get(k) != v}
        assert not mismatched, f"the session environment did not foresee the stack: {mismatched}"
        yield ms
    finally:
        ms.moto.stop()


@pytest.fixture(scope="session")
def aws_clients(moto_stack: MotoStack) -> AwsClients:
    """The raw SDK clients behind the session's ports, for what a test reads or counts directly."""
    return build_clients(endpoint_url=moto_stack.moto.endpoint)


@pytest.fixture(scope="session")
def ports(moto_stack: MotoStack, aws_clients: AwsClients) -> Ports:
    return build_ports(moto_stack.settings(), aws_clients)


class LiveServer:
    """The app on uvicorn in a background thread, on a free port."""

    def __init__(self, app: Any) -> None:
        self.port = free_port()
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> LiveServer:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.01)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


@pytest.fixture(scope="session")
def live_api(ports: Ports) -> Iterator[str]:
    from ingest.app import create_app

    with LiveServer(create_app(ports)) as server:
        yield server.url


@pytest.fixture
def api(live_api: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=live_api, timeout=30) as client:
        yield client


_counter = iter(range(1_000_000))


@pytest.fixture
def call_id(request: pytest.FixtureRequest) -> str:
    """A call id of its own for every test, so tests sharing the stack never meet."""
    name = re.sub(r"[^A-Za-z0-9._:-]", ".", request.node.name[:80])
    return f"{name}-{os.getpid()}-{next(_counter)}"


@pytest.fixture
def lambda_loop() -> Iterator[None]:
    """A current event loop in the main thread, as a Lambda sandbox has for Mangum.

    Tests that used asyncio.run() leave the main thread without one.
    """
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        yield
    finally:
        asyncio.set_event_loop(None)
        loop.close()

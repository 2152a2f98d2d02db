"""`python -m devstack` (what `make run` starts) as a child process, for the bench and tests."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import IO

import httpx

from devstack.moto_process import free_port

# Variables of the parent that must not leak into a child stack unless given on purpose.
FAULT_VARIABLES = ("LOCAL_FAULTS", "LOCAL_FAULTS_SEED")


class ChildStack:
    """The local stack on free ports, with the parent's environment (minus injected faults)
    and ``env`` on top; its output goes to ``log``. Ready once it answers /healthz.

    ``own_process_group`` starts it in a session of its own, as a shell starts `make run`:
    a signal to its process group (``os.killpg(stack.proc.pid, ...)``) reaches it, not the caller.
    """

    def __init__(
        self,
        env: dict[str, str] | None,
        log: IO[str],
        start_timeout_s: float = 60,
        *,
        own_process_group: bool = False,
    ) -> None:
        self.api_port, self.moto_port = free_port(), free_port()
        self.url = f"http://127.0.0.1:{self.api_port}"
        self.moto_endpoint = f"http://127.0.0.1:{self.moto_port}"
        self.log = log
        full_env = {
            **{k: v for k, v in os.environ.items() if k not in FAULT_VARIABLES},
            "API_PORT": str(self.api_port),
            "MOTO_PORT": str(self.moto_port),
            **(env or {}),
        }
        root = Path(__file__).resolve().parent.parent
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "devstack"],
            env=full_env,
            stdout=log,
            stderr=log,
            cwd=root,
            start_new_session=own_process_group,
        )
        deadline = time.monotonic() + start_timeout_s
        while True:
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"the local stack did not start; see {getattr(log, 'name', 'its log')}")
            time.sleep(0.2)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
        self.proc.wait(timeout=30)

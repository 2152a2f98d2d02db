"""Start and stop the moto server as a child process, so it does not share the app's GIL."""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

_ROOT = Path(__file__).resolve().parent.parent


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port


def _die_with_parent() -> None:
    # If the parent is killed outright (SIGKILL), the kernel sends the child SIGTERM.
    with contextlib.suppress(OSError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class MotoProcess:
    """The moto server as a child process.

    ``own_session``: on Linux, in a session of its own. Ctrl-C (and `kill -TERM -<pgid>`)
    signals the whole foreground process group: moto, in it, would stop at once, under the
    pollers and the requests still in flight. In its own session only its parent stops it,
    last (the local stack's ordered stop). It still never outlives its parent:
    PR_SET_PDEATHSIG sends it SIGTERM if the parent dies. Elsewhere (no PR_SET_PDEATHSIG) it
    stays in the parent's group, so that Ctrl-C still reaches it if the parent dies.
    """

    def __init__(self, host: str, port: int, *, own_session: bool = False) -> None:
        self.host, self.port = host, port
        self._own_session = own_session and sys.platform == "linux"
        self._proc: subprocess.Popen[str] | None = None

    @property
    def endpoint(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, timeout_s: float = 30.0) -> MotoProcess:
        with socket.socket() as probe:
            if probe.connect_ex((self.host, self.port)) == 0:
                raise RuntimeError(f"port {self.port} on {self.host} is in use; set MOTO_PORT to a free port")
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(_ROOT), os.environ.get("PYTHONPATH", "")])}
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "devstack.moto_server", "--host", self.host, "--port", str(self.port)],
            stdout=subprocess.PIPE,
            text=True,
            env=env,
            start_new_session=self._own_session,
            preexec_fn=_die_with_parent if sys.platform == "linux" else None,  # noqa: PLW1509
        )
        assert self._proc.stdout is not None
        line = self._proc.stdout.readline()  # blocks until "ready" or the child exits
        if line.strip() != "ready":
            self.stop()
            raise RuntimeError(f"moto server did not start on {self.endpoint} (exit code {self._proc.returncode})")
        return self

    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def stop(self, timeout_s: float = 10.0) -> None:
        if self._proc is None or self._proc.poll() is not None:
            return
        self._proc.terminate()
        try:
            self._proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()

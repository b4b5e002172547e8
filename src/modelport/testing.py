"""Helpers for your own tests: run a real modelport server on a free port.

with run_server("models") as server:
    httpx.get(f"{server.url}/v2/health/ready")
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import ssl


@dataclass
class RunningServer:
    """A ``modelport serve`` process; its logs go to files you can read while it runs."""

    url: str
    port: int
    process: subprocess.Popen[bytes]
    log_folder: Path

    def stop(self, timeout_s: float = 30.0) -> int:
        """SIGTERM, then wait for the exit code (the graceful path)."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout_s)

    @property
    def access_log(self) -> str:
        """What the server wrote to stdout so far: the JSON-lines access log."""
        return (self.log_folder / "stdout").read_text()

    def access_entry(self, request_id: str, timeout_s: float = 5.0) -> dict[str, Any]:
        """The access-log entry of one request (written just after its response is sent)."""
        deadline = time.monotonic() + timeout_s
        while True:
            for line in self.access_log.splitlines():
                entry: dict[str, Any] = json.loads(line)
                if entry.get("request_id") == request_id:
                    return entry
            if time.monotonic() > deadline:
                raise LookupError(f"no access-log entry for request {request_id}")
            time.sleep(0.02)

    @property
    def log(self) -> str:
        """What the server wrote to stderr so far."""
        return (self.log_folder / "stderr").read_text()


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free now."""
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _wait_until_ready(server: RunningServer, timeout_s: float, tls: ssl.SSLContext | None) -> None:
    import httpx

    deadline = time.monotonic() + timeout_s
    verify = True if tls is None else tls
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(f"the server exited with {server.process.returncode}:\n{server.log}")
        try:
            ready = httpx.get(f"{server.url}/v2/health/ready", timeout=1, verify=verify)
            if ready.status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    raise TimeoutError(f"the server at {server.url} was not ready within {timeout_s} s")


@contextmanager
def run_server(
    source: str | os.PathLike[str],
    *args: str,
    timeout_s: float = 60.0,
    tls: ssl.SSLContext | None = None,
) -> Iterator[RunningServer]:
    """Start ``modelport serve SOURCE ARGS`` on a free loopback port; stop it afterwards.

    For a server given ``--tls-cert`` and ``--tls-key``, pass ``tls``, a context that trusts
    that certificate: the url is then https, and readiness is checked through the context.
    """
    port = free_port()
    command = [sys.executable, "-m", "modelport", "serve", str(source), "--port", str(port)]
    # Files, not pipes: a full pipe would block a chatty server in the middle of a test.
    with tempfile.TemporaryDirectory(prefix="modelport-server-") as folder:
        logs = Path(folder)
        with (logs / "stdout").open("wb") as out, (logs / "stderr").open("wb") as err:
            process = subprocess.Popen([*command, *args], stdout=out, stderr=err)
        scheme = "http" if tls is None else "https"
        server = RunningServer(f"{scheme}://127.0.0.1:{port}", port, process, logs)
        try:
            _wait_until_ready(server, timeout_s, tls)
            yield server
        finally:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(30)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()

"""A small Lambda Runtime API on 127.0.0.1, for awslambdaric to talk to as it talks to Lambda.

The four documented endpoints (AWS Lambda developer guide, "Using the Lambda runtime API for
custom runtimes"): GET /2018-06-01/runtime/invocation/next hands out the next event (it waits
until there is one), POST .../invocation/{id}/response and .../invocation/{id}/error take its
outcome, POST .../runtime/init/error takes a failed init.

    with LambdaRuntime() as runtime:
        process = subprocess.Popen([..., "-m", "awslambdaric", HANDLER],
                                   env={"AWS_LAMBDA_RUNTIME_API": runtime.address, ...})
        reply = runtime.invoke(event)        # what the handler returned
        runtime.init_s(started)              # from process start to its first /next call
"""

from __future__ import annotations

import json
import queue
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

PREFIX = "/2018-06-01/runtime"


class _Server(ThreadingHTTPServer):
    def handle_error(self, *_: Any) -> None:
        pass  # the client process was stopped mid-connection: that is how a test ends


class InvocationError(Exception):
    """The handler raised: what awslambdaric posted to .../error."""


class LambdaRuntime:
    def __init__(self) -> None:
        self._events: queue.Queue[tuple[str, bytes]] = queue.Queue()
        self._outcomes: dict[str, queue.Queue[tuple[str, Any]]] = {}
        self.init_error: dict[str, Any] | None = None
        self.first_next: float | None = None  # time.monotonic() of the first /next
        self.init_failed = threading.Event()
        self._server = _Server(("127.0.0.1", 0), self._handler_class())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> LambdaRuntime:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def invoke(self, event: Any, timeout_s: float = 60) -> Any:
        """Queue ``event``; the handler's result (InvocationError if it raised)."""
        request_id = str(uuid.uuid4())
        outcome: queue.Queue[tuple[str, Any]] = queue.Queue()
        self._outcomes[request_id] = outcome
        self._events.put((request_id, json.dumps(event).encode()))
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                kind, value = outcome.get(timeout=0.1)
                break
            except queue.Empty:
                if self.init_failed.is_set():
                    raise InvocationError(f"init failed: {self.init_error}") from None
                if time.monotonic() > deadline:
                    raise TimeoutError(f"no answer to {request_id} in {timeout_s} s") from None
        if kind == "error":
            raise InvocationError(value)
        return value

    def wait_init_error(self, timeout_s: float = 60) -> dict[str, Any]:
        assert self.init_failed.wait(timeout_s), "no init error was posted"
        assert self.init_error is not None
        return self.init_error

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        runtime = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # awslambdaric keeps its connection open
            disable_nagle_algorithm = True  # else each answer waits out a delayed ACK (40 ms)

            def log_message(self, *_: Any) -> None:
                pass

            def do_GET(self) -> None:
                if self.path != f"{PREFIX}/invocation/next":
                    return self._reply(404, {"errorMessage": "no such endpoint"})
                if runtime.first_next is None:
                    runtime.first_next = time.monotonic()
                request_id, body = runtime._events.get()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Lambda-Runtime-Aws-Request-Id", request_id)
                deadline_ms = int((time.time() + 30) * 1000)
                self.send_header("Lambda-Runtime-Deadline-Ms", str(deadline_ms))
                arn = "arn:aws:lambda:us-east-1:123456789012:function:modelport-test"
                self.send_header("Lambda-Runtime-Invoked-Function-Arn", arn)
                self.send_header("Lambda-Runtime-Trace-Id", "Root=1-5759e988-bd862e3fe1be46a9")
                self.end_headers()
                self.wfile.write(body)

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                parts = self.path.removeprefix(PREFIX).strip("/").split("/")
                if parts == ["init", "error"]:
                    runtime.init_error = json.loads(body or b"{}")
                    runtime.init_failed.set()
                elif len(parts) == 3 and parts[0] == "invocation" and parts[2] in (
                    "response", "error",
                ):  # fmt: skip
                    outcome = runtime._outcomes.get(parts[1])
                    if outcome is None:
                        return self._reply(400, {"errorMessage": "unknown request id"})
                    kind = "result" if parts[2] == "response" else "error"
                    outcome.put((kind, json.loads(body) if body else None))
                else:
                    return self._reply(404, {"errorMessage": "no such endpoint"})
                self._reply(202, {"status": "OK"})

            def _reply(self, status: int, payload: dict[str, Any]) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        return Handler

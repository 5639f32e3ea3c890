"""ASGI middleware in front of the service: body-size limit, ``GET /metadata``, malformed headers,
and the corrected OpenAPI document (see :mod:`serve.openapi`)."""

from __future__ import annotations

import json
import logging
import signal
import threading
from http import HTTPStatus
from typing import Any, Callable

import bentoml

from .bentoml_patches import SERVE_LOGGER
from .openapi import openapi_send

logger = logging.getLogger(SERVE_LOGGER)


class RequestGuard:
    """ASGI middleware: rejects request bodies over ``max_bytes`` with 413 and answers ``GET /metadata``.

    * A ``Content-Length`` above ``max_bytes`` is answered 413 at once (the body is drained, up to
      ``drain_bytes``, so that the client reads the answer instead of a reset connection); the
      body is never parsed.
    * A chunked body is counted as it arrives; past ``max_bytes`` the endpoint gets a 413 error.
    * An invalid ``Content-Length`` gets 400; so does a ``multipart/*`` body without a boundary (it made
      BentoML's form parser fail with a 500).
    * ``GET /metadata`` is answered with ``metadata()`` (503 while it returns None: model not loaded);
      other methods than GET/POST on ``/metadata`` get 405 with ``Allow``.
    * It counts the HTTP requests that reached the worker (``received``) and those answered with a
      complete response (``answered``), and when the worker shuts down (ASGI lifespan shutdown, which
      uvicorn runs after the requests in flight have finished) it logs both: equal counts prove that
      a SIGTERM drained every request the worker had taken. A request that a client writes onto an idle
      keep-alive connection just as the worker closes it never reaches the worker (the client sees a
      connection error and may safely send it again); that is HTTP/1.1, not a lost request.
    * Once the worker has a SIGTERM or SIGINT (the server's own handler still runs), every response carries
      ``Connection: close``, so the client's keep-alive connection closes after it (what Go's
      ``Server.Shutdown`` and nginx do). uvicorn asks only the connections open at the signal to close;
      a connection it accepted in that instant would otherwise stay open as long as its client keeps
      sending, and hold the worker, and so ``bentoml serve``, from exiting (seen on 2 loaded cores).

    Args:
        app: the wrapped ASGI app.
        max_bytes: largest accepted body (bytes).
        metadata: returns the ``/metadata`` answer of this worker's loaded service, or None.
        limit_hint: appended to the 413 message (e.g. "at most 64 texts of at most 10000 characters").
        drain_bytes: most bytes read and discarded from an oversized body before answering.
    """

    def __init__(self, app, max_bytes: int, metadata: Callable[[], dict | None] = lambda: None,
                 limit_hint: str = "", drain_bytes: int = 256 * 2**20):
        self.app = app
        self.max_bytes = int(max_bytes)
        self.metadata = metadata
        self.limit_hint = limit_hint
        self.drain_bytes = int(drain_bytes)
        self.received = 0
        self.answered = 0
        self.draining = False

    def drain_summary(self) -> str:
        """The shutdown log line: requests received and answered by this worker."""
        lost = self.received - self.answered
        return (f"shutting down: {self.received} HTTP requests received, {self.answered} answered"
                + (f"; {lost} got no complete response from the service (an error, or cut off)" if lost else
                   ", none left unanswered"))

    async def __call__(self, scope, receive, send):
        if scope.get("type") == "lifespan":
            return await self.app(scope, receive, self._lifespan_send(send))
        if scope.get("type") != "http":
            return await self.app(scope, receive, send)
        self.received += 1
        send = self._counting_send(send)
        method, path = scope.get("method"), scope.get("path", "").rstrip("/")
        if method == "GET" and path == "/docs.json":
            return await self.app(scope, receive, openapi_send(send))  # the spec says what we answer
        if path == "/metadata" and method not in ("GET", "POST"):
            return await send_json(send, 405, {"error": "use GET or POST on /metadata"},
                                   [(b"allow", b"GET, POST")])
        if method == "GET" and path == "/metadata":
            meta = self.metadata()
            if meta is None:
                return await send_json(send, 503, {"error": "model not loaded yet"})
            return await send_json(send, 200, meta)
        length = None
        for k, v in scope.get("headers", ()):
            if k == b"content-type" and v.lower().startswith(b"multipart/") and b"boundary=" not in v.lower():
                # starlette's form parser raises on it inside BentoML, which answered 500
                return await send_json(send, 400, {
                    "error": "multipart body without a boundary; send JSON with Content-Type: application/json"})
            if k == b"content-length":
                try:
                    length = int(v)
                    if length < 0:
                        raise ValueError
                except ValueError:
                    return await send_json(send, 400, {"error": "invalid Content-Length header"})
        if length is not None and length > self.max_bytes:
            if length <= self.drain_bytes:
                more = True
                while more:
                    msg = await receive()
                    if msg.get("type") != "http.request":
                        return
                    more = msg.get("more_body", False)
            hint = f" ({self.limit_hint})" if self.limit_hint else ""
            return await send_json(send, 413, {
                "error": f"request body of {length} bytes is over the limit of {self.max_bytes} bytes{hint}"})
        seen = 0

        async def counting_receive():
            nonlocal seen
            msg = await receive()
            if msg.get("type") == "http.request":
                seen += len(msg.get("body", b""))
                if seen > self.max_bytes:
                    raise bentoml.exceptions.BentoMLException(
                        f"request body is over the limit of {self.max_bytes} bytes",
                        error_code=HTTPStatus.REQUEST_ENTITY_TOO_LARGE)
            return msg

        return await self.app(scope, counting_receive, send)

    def watch_shutdown_signals(self) -> None:
        """Set ``draining`` when the process gets SIGTERM or SIGINT, then call the handler that was there
        (the server's). Runs when lifespan startup completes, in the main thread, after uvicorn installed its
        handlers (which it restores when it exits); a signal nobody handles (default or ignored) is left alone."""
        if threading.current_thread() is not threading.main_thread():
            return
        for sig in (signal.SIGTERM, signal.SIGINT):
            prev = signal.getsignal(sig)
            if not callable(prev):
                continue

            def hook(signum, frame, prev=prev):
                self.draining = True
                prev(signum, frame)
            signal.signal(sig, hook)

    def _counting_send(self, send):
        async def counting_send(msg):
            if self.draining and msg.get("type") == "http.response.start":
                headers = list(msg.get("headers", []))
                if not any(k.lower() == b"connection" for k, _ in headers):
                    msg = dict(msg, headers=headers + [(b"connection", b"close")])
            await send(msg)
            if msg.get("type") == "http.response.body" and not msg.get("more_body", False):
                self.answered += 1
        return counting_send

    def _lifespan_send(self, send):
        async def lifespan_send(msg):
            if msg.get("type") == "lifespan.startup.complete":
                self.watch_shutdown_signals()
            elif msg.get("type") == "lifespan.shutdown.complete":
                logger.log(logging.INFO if self.received == self.answered else logging.WARNING, self.drain_summary())
            await send(msg)
        return lifespan_send


async def send_json(send, status: int, obj: Any, headers: list | None = None) -> None:
    """Send a complete JSON response (``status``, body ``obj``) through an ASGI ``send``."""
    body = json.dumps(obj).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
                + list(headers or [])})
    await send({"type": "http.response.body", "body": body})

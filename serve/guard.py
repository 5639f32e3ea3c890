"""ASGI middleware in front of the service: body-size limit, ``GET /metadata``, malformed headers,
and the corrected OpenAPI document (see :mod:`serve.openapi`)."""

from __future__ import annotations

import json
from http import HTTPStatus
from typing import Any, Callable

import bentoml

from .openapi import openapi_send


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

    async def __call__(self, scope, receive, send):
        if scope.get("type") != "http":
            return await self.app(scope, receive, send)
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


async def send_json(send, status: int, obj: Any, headers: list | None = None) -> None:
    """Send a complete JSON response (``status``, body ``obj``) through an ASGI ``send``."""
    body = json.dumps(obj).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
                + list(headers or [])})
    await send({"type": "http.response.body", "body": body})

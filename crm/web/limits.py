"""Plain ASGI middleware for the admin pages and the JSON API: a request-body size limit, and no caching.

A declared Content-Length over the limit is refused before the body is read; a chunked body is counted
as it streams and cut off once it passes the limit, so neither can make the server buffer megabytes.

Staff pages and API answers are marked `Cache-Control: no-store` (RFC 9111): otherwise
the browser's Back button, after signing out, would show the bookings and transcripts again from its
cache, and a shared cache could keep them.
"""

from __future__ import annotations

import json
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send


class BodySizeLimit:
    def __init__(self, app: ASGIApp, *, max_bytes: int, path_prefixes: tuple[str, ...]) -> None:
        self._app = app
        self._max_bytes = max_bytes
        self._prefixes = path_prefixes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not str(scope.get("path", "")).startswith(self._prefixes):
            await self._app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is not None and declared > self._max_bytes:
            await self._refuse(send)
            return
        seen = 0
        response_started = False
        refused = False

        async def counting_receive() -> Message:
            # Past the limit, answer 413 at once and tell the app the client went away: raising here
            # would not work, because FastAPI turns any error while reading a body into its own 400.
            nonlocal seen, refused
            if refused:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self._max_bytes and not response_started:
                    refused = True
                    await self._refuse(send)
                    return {"type": "http.disconnect"}
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal response_started
            if refused:
                return  # the 413 has been sent; whatever the app answers now goes nowhere
            if message["type"] == "http.response.start":
                response_started = True
            await send(message)

        try:
            await self._app(scope, counting_receive, guarded_send)
        except Exception:
            if not refused:
                raise

    async def _refuse(self, send: Send) -> None:
        body = json.dumps({"detail": f"request body larger than {self._max_bytes} bytes"}).encode()
        headers: list[Any] = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"connection", b"close"),
        ]
        await send({"type": "http.response.start", "status": 413, "headers": headers})
        await send({"type": "http.response.body", "body": body})


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", []):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


class NoStore:
    def __init__(
        self, app: ASGIApp, *, path_prefixes: tuple[str, ...], except_prefixes: tuple[str, ...] = ()
    ) -> None:
        self._app = app
        self._prefixes = path_prefixes
        self._except = except_prefixes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = str(scope.get("path", ""))
        if scope["type"] != "http" or not path.startswith(self._prefixes) or path.startswith(self._except):
            await self._app(scope, receive, send)
            return

        async def marked_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [
                    (name, value) for name, value in message.get("headers", []) if name != b"cache-control"
                ]
                message = {**message, "headers": [*headers, (b"cache-control", b"no-store")]}
            await send(message)

        await self._app(scope, receive, marked_send)

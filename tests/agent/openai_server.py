"""A local OpenAI-compatible chat-completions server for the tests of the language-model path.

A model cannot run here, so this stands in for vLLM's `/v1/chat/completions` with scripted replies, and
speaks the wire protocol as vLLM and OpenAI do: a real HTTP/1.1 server (uvicorn + Starlette on a free
loopback port, in a thread), `text/event-stream` responses of `data: <chat.completion.chunk>` events
separated by blank lines, a first delta carrying the role, tool calls streamed by `index` (id, type and
function name first, then the arguments cut into fragments), a last chunk with `finish_reason` and an
empty delta, then `data: [DONE]`. Errors use OpenAI's body `{"error": {"message", "type", "param",
"code"}}`; with an API key configured, a wrong key gets vLLM's 401 `{"error": "Unauthorized"}`.

It also checks each request the way the real server would reject it (model name, message roles and
tool-call ids, tool definitions, tool_choice, stream) and records it, so tests can assert exactly what
the client sent.

Each request takes the next scripted reply: a `Completion` (text and/or tool calls, with optional
slowness, a gate, a clean early end or a dropped connection), an `HttpError`, or a `RawStream` of
bytes for protocol violations.
"""

from __future__ import annotations

import asyncio
import collections
import json
import socket
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

ROLES = frozenset({"system", "user", "assistant", "tool", "developer"})


@dataclass(frozen=True)
class ScriptedToolCall:
    name: str
    arguments: str  # JSON text as a model writes it (invalid on purpose in some tests)
    id: str | None = None  # default: a fresh "chatcmpl-tool-..." id, as vLLM makes


@dataclass(frozen=True)
class Completion:
    """One streamed reply."""

    text: Sequence[str] = ()  # content pieces, one chunk each
    tool_calls: Sequence[ScriptedToolCall] = ()
    finish_reason: str | None = None  # default: "tool_calls" when there are tool calls, else "stop"
    argument_fragment_chars: int = 5
    interleave_tool_calls: bool = False  # fragments of parallel calls alternate (allowed by the protocol)
    first_token_delay_s: float = 0.0  # between the role chunk and the first token
    keepalive_every_s: float | None = None  # ": keep-alive" comments while the first token is delayed
    chunk_delay_s: float = 0.0  # before every chunk after the first token
    gate: threading.Event | None = None  # everything after the first content piece waits for it
    end_after_chunks: int | None = None  # the body ends cleanly after N chunks: no finish, no [DONE]
    drop_after_chunks: int | None = None  # the connection is dropped after N chunks (incomplete body)
    line_ending: str = "\n"


@dataclass(frozen=True)
class HttpError:
    status: int
    message: str
    type: str = "BadRequestError"
    code: str | int | None = None


@dataclass(frozen=True)
class RawStream:
    """Bytes sent verbatim as a 200 event stream."""

    parts: Sequence[bytes]
    content_type: str = "text/event-stream; charset=utf-8"


Script = Completion | HttpError | RawStream


@dataclass
class RecordedRequest:
    headers: dict[str, str]
    body: dict[str, Any]
    chunks_sent: int = 0


class _DropConnection(Exception):
    """Raised inside the response body: the server closes the socket without ending the body."""


def _error(
    status: int, message: str, kind: str = "BadRequestError", param: str | None = None
) -> JSONResponse:
    body = {"error": {"message": message, "type": kind, "param": param, "code": status}}
    return JSONResponse(body, status_code=status)


class RequestRejected(Exception):
    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


def check_chat_request(body: object, model: str) -> None:
    """What vLLM/OpenAI would refuse with a 400 (the model name is checked separately: 404)."""
    if not isinstance(body, dict):
        raise RequestRejected("request body must be a JSON object")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise RequestRejected("messages must be a non-empty list", "messages")
    open_calls: set[str] = set()
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(message, dict) or message.get("role") not in ROLES:
            raise RequestRejected(f"{where}: unknown role", where)
        role, content = message["role"], message.get("content")
        if role == "assistant" and message.get("tool_calls") is not None:
            calls = message["tool_calls"]
            if not isinstance(calls, list) or not calls:
                raise RequestRejected(f"{where}.tool_calls must be a non-empty list", where)
            for call in calls:
                function = call.get("function") if isinstance(call, dict) else None
                if (
                    not isinstance(call.get("id"), str)
                    or call.get("type") != "function"
                    or not isinstance(function, dict)
                    or not isinstance(function.get("name"), str)
                    or not isinstance(function.get("arguments"), str)
                ):
                    raise RequestRejected(f"{where}: malformed tool call {call!r}", where)
                open_calls.add(call["id"])
            if content is not None and not isinstance(content, str):
                raise RequestRejected(f"{where}.content must be a string or null", where)
            continue
        if not isinstance(content, str):
            raise RequestRejected(f"{where}.content must be a string", where)
        if role == "tool":
            call_id = message.get("tool_call_id")
            if call_id not in open_calls:
                raise RequestRejected(f"{where}: tool_call_id {call_id!r} answers no tool call", where)
    tools = body.get("tools")
    if tools is not None:
        if not isinstance(tools, list) or not tools:
            raise RequestRejected("tools must be a non-empty list", "tools")
        for tool in tools:
            function = tool.get("function") if isinstance(tool, dict) else None
            if (
                tool.get("type") != "function"
                or not isinstance(function, dict)
                or not isinstance(function.get("name"), str)
                or not isinstance(function.get("parameters", {}), dict)
            ):
                raise RequestRejected(f"malformed tool {tool!r:.120}", "tools")
    tool_choice = body.get("tool_choice")
    if tool_choice is not None:
        if tools is None:
            raise RequestRejected("tool_choice is only allowed when tools are specified", "tool_choice")
        if tool_choice not in ("auto", "none", "required") and not isinstance(tool_choice, dict):
            raise RequestRejected(f"unknown tool_choice {tool_choice!r}", "tool_choice")
    if body.get("stream") is not True:
        raise RequestRejected("this test server only streams: send stream=true", "stream")
    temperature = body.get("temperature", 1.0)
    if not isinstance(temperature, int | float) or not 0 <= temperature <= 2:
        raise RequestRejected("temperature must be between 0 and 2", "temperature")
    max_tokens = body.get("max_tokens", 1)
    if not isinstance(max_tokens, int) or max_tokens < 1:
        raise RequestRejected("max_tokens must be a positive integer", "max_tokens")


class OpenAIServer:
    """Start with `with OpenAIServer() as server:`; script replies with `server.script(...)`."""

    def __init__(self, model: str = "test-model", api_key: str | None = None) -> None:
        self.model = model
        self.api_key = api_key
        self.requests: list[RecordedRequest] = []
        self._scripts: collections.deque[Script] = collections.deque()
        self._lock = threading.Lock()
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", 0))
        self.port: int = self._sock.getsockname()[1]
        app = Starlette(routes=[Route("/v1/chat/completions", self._chat, methods=["POST"])])
        config = uvicorn.Config(app, log_level="critical", lifespan="off", access_log=False)
        config.timeout_graceful_shutdown = 1
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [self._sock]}, daemon=True
        )

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> OpenAIServer:
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("the OpenAI test server did not start")
            time.sleep(0.01)
        return self

    def __exit__(self, *_: object) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=5)
        self._sock.close()

    def script(self, *replies: Script) -> None:
        with self._lock:
            self._scripts.extend(replies)

    def reset(self) -> None:
        with self._lock:
            self._scripts.clear()
            self.requests.clear()

    @property
    def unused_scripts(self) -> int:
        return len(self._scripts)

    # --- the endpoint -----------------------------------------------------------------------------

    async def _chat(self, request: Request) -> Response:
        if self.api_key is not None and request.headers.get("authorization") != f"Bearer {self.api_key}":
            return JSONResponse({"error": "Unauthorized"}, status_code=401)
        try:
            body = json.loads(await request.body())
        except ValueError:
            return _error(400, "request body is not valid JSON")
        recorded = RecordedRequest(dict(request.headers), body if isinstance(body, dict) else {})
        with self._lock:
            self.requests.append(recorded)
            script = self._scripts.popleft() if self._scripts else None
        if isinstance(body, dict) and body.get("model") != self.model:
            return _error(404, f"The model `{body.get('model')}` does not exist.", "NotFoundError", "model")
        try:
            check_chat_request(body, self.model)
        except RequestRejected as exc:
            return _error(400, str(exc), param=exc.param)
        if script is None:
            return _error(500, "the test did not script a reply for this request", "InternalServerError")
        if isinstance(script, HttpError):
            error = {"message": script.message, "type": script.type, "param": None, "code": script.code}
            return JSONResponse({"error": error}, status_code=script.status)
        if isinstance(script, RawStream):
            return StreamingResponse(self._raw(script, recorded), media_type=script.content_type)
        return StreamingResponse(
            self._completion(script, recorded), media_type="text/event-stream; charset=utf-8"
        )

    async def _raw(self, script: RawStream, recorded: RecordedRequest) -> AsyncIterator[bytes]:
        for part in script.parts:
            recorded.chunks_sent += 1
            yield part
            await asyncio.sleep(0.001)  # separate writes, so the client really reads them apart

    async def _completion(self, script: Completion, recorded: RecordedRequest) -> AsyncIterator[bytes]:
        completion_id = f"chatcmpl-{uuid.uuid4().hex}"
        created = int(time.time())
        end = script.line_ending

        def event(delta: dict[str, Any], finish_reason: str | None = None) -> bytes:
            chunk = {
                "id": completion_id,
                "object": "chat.completion.chunk",
                "created": created,
                "model": self.model,
                "system_fingerprint": None,
                "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}],
            }
            return f"data: {json.dumps(chunk)}{end}{end}".encode()

        events = list(self._deltas(script))
        first_content = next((i for i, (delta, _) in enumerate(events) if delta.get("content")), None)
        for i, (delta, finish) in enumerate(events):
            if script.drop_after_chunks is not None and recorded.chunks_sent >= script.drop_after_chunks:
                raise _DropConnection
            if script.end_after_chunks is not None and recorded.chunks_sent >= script.end_after_chunks:
                return
            if i == 1:
                # Waiting for the first token: silence, or comment lines if the script asks for them.
                remaining = script.first_token_delay_s
                while remaining > 0:
                    pause = min(remaining, script.keepalive_every_s or remaining)
                    await asyncio.sleep(pause)
                    remaining -= pause
                    if script.keepalive_every_s:
                        yield f": keep-alive{end}{end}".encode()
            elif i > 1 and script.chunk_delay_s:
                await asyncio.sleep(script.chunk_delay_s)
            if script.gate is not None and first_content is not None and i == first_content + 1:
                while not script.gate.is_set():
                    await asyncio.sleep(0.005)
            recorded.chunks_sent += 1
            yield event(delta, finish)
        yield f"data: [DONE]{end}{end}".encode()

    @staticmethod
    def _deltas(script: Completion) -> Iterator[tuple[dict[str, Any], str | None]]:
        yield {"role": "assistant", "content": ""}, None
        for text in script.text:
            yield {"content": text}, None
        per_call: list[list[dict[str, Any]]] = []
        for index, call in enumerate(script.tool_calls):
            call_id = call.id or f"chatcmpl-tool-{uuid.uuid4().hex[:16]}"
            pieces: list[dict[str, Any]] = [
                {
                    "index": index,
                    "id": call_id,
                    "type": "function",
                    "function": {"name": call.name, "arguments": ""},
                }
            ]
            size = script.argument_fragment_chars
            for start in range(0, len(call.arguments), size):
                fragment = call.arguments[start : start + size]
                pieces.append({"index": index, "function": {"arguments": fragment}})
            per_call.append(pieces)
        if script.interleave_tool_calls:
            ordered = [p for group in _round_robin(per_call) for p in group]
        else:
            ordered = [p for pieces in per_call for p in pieces]
        for piece in ordered:
            yield {"tool_calls": [piece]}, None
        reason = script.finish_reason or ("tool_calls" if script.tool_calls else "stop")
        yield {}, reason


def _round_robin(groups: list[list[dict[str, Any]]]) -> Iterator[list[dict[str, Any]]]:
    """The first piece of every group, then the second of every group, and so on."""
    for i in range(max((len(g) for g in groups), default=0)):
        yield [g[i] for g in groups if i < len(g)]

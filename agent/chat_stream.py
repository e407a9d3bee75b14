"""The OpenAI chat-completions streaming protocol (as vLLM and OpenAI serve it), parsed without I/O.

With `stream: true`, POST /v1/chat/completions answers 200 with `Content-Type: text/event-stream`:
server-sent events whose `data:` is one `chat.completion.chunk` object each, then `data: [DONE]`.
Comment lines (`: keep-alive`, sent by some proxies) may appear anywhere. Each chunk carries
`choices[{index, delta, finish_reason}]`; the first delta brings `role`, later ones `content` pieces or
`tool_calls` pieces. A tool call arrives by `index`: its `id`, `type` and `function.name` first, then
`function.arguments` as JSON text cut anywhere. The last choice chunk sets `finish_reason` ("stop",
"tool_calls", "length"). vLLM reports an error found after the 200 went out as a chunk
`{"error": {"message", "type", "code"}}`.

Two sans-IO layers, in the manner of h11: `SseDecoder` turns bytes cut anywhere into event payloads,
`ChatStreamAssembler` turns payloads into typed events (`TextDelta`, `ToolCall`, `Finished`). Both
are fed by `agent.llm.ChatClient` and tested by feeding them bytes. Every way the peer can get the
protocol wrong is an `LlmProtocolError`, never a KeyError or a JSONDecodeError.
"""

from __future__ import annotations

import codecs
import json
import re
from dataclasses import dataclass, field
from typing import Any, Final

DONE: Final = "[DONE]"
_LINE_BREAK = re.compile(r"\r\n|\r|\n")


# --- errors -------------------------------------------------------------------------------------


class LlmError(Exception):
    """Base of everything the language-model path reports; the router answers with the policy instead."""


class LlmUnavailable(LlmError):
    """The server could not be reached: connection refused, name not resolved, connect timeout."""


class LlmStatusError(LlmError):
    """The server refused or failed the request: an HTTP error status with OpenAI's error body, or an
    error object inside the stream (`status` None). `message` is the server's own words."""

    def __init__(
        self,
        message: str,
        *,
        status: int | None,
        error_type: str | None = None,
        code: str | int | None = None,
    ) -> None:
        super().__init__(f"HTTP {status}: {message}" if status is not None else f"in stream: {message}")
        self.message = message
        self.status = status
        self.error_type = error_type
        self.code = code


class LlmTimeout(LlmError):
    """The model did not answer in time."""


class FirstTokenTimeout(LlmTimeout):
    """Nothing but headers, role or keep-alives before the first-token limit: the model is overloaded."""


class TotalTimeout(LlmTimeout):
    """The reply was still streaming when the turn's time was up."""


class StreamStalled(LlmTimeout):
    """The stream went silent after the first token for longer than the first-token limit."""


class LlmProtocolError(LlmError):
    """The peer sent something that is not the chat-completions stream protocol."""


class MalformedChunk(LlmProtocolError):
    """A payload that is not JSON, or not shaped like a chat.completion.chunk."""


class BadToolArguments(LlmProtocolError):
    """The model called a tool with arguments that are not a JSON object."""

    def __init__(self, tool: str, arguments: str) -> None:
        super().__init__(f"arguments of {tool} are not a JSON object: {arguments[:200]!r}")
        self.tool = tool
        self.arguments = arguments


class StreamInterrupted(LlmProtocolError):
    """The stream ended (or the connection dropped) before `[DONE]` or a finish_reason."""


def error_from_body(body: object, *, status: int | None) -> LlmStatusError | None:
    """The error an OpenAI-style body reports, or None when it reports none.

    Accepts OpenAI's `{"error": {"message", "type", "code"}}`, older vLLM's flat
    `{"object": "error", "message", "type", "code"}` and vLLM's API-key check `{"error": "Unauthorized"}`.
    """
    if not isinstance(body, dict):
        return None
    error = body.get("error")
    if error is None and body.get("object") == "error":
        error = body
    if isinstance(error, str):
        return LlmStatusError(error, status=status)
    if not isinstance(error, dict):
        return None
    message = error.get("message")
    error_type = error.get("type")
    code = error.get("code")
    return LlmStatusError(
        str(message) if message else "error without a message",
        status=status,
        error_type=error_type if isinstance(error_type, str) else None,
        code=code if isinstance(code, str | int) and not isinstance(code, bool) else None,
    )


# --- events ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TextDelta:
    text: str


@dataclass(frozen=True, slots=True)
class ToolCall:
    id: str
    name: str
    arguments: dict[str, Any]
    raw_arguments: str  # as the model wrote them; sent back verbatim in the assistant message


@dataclass(frozen=True, slots=True)
class Finished:
    reason: str | None  # "stop", "tool_calls", "length"...; None when [DONE] came without one


ChatEvent = TextDelta | ToolCall | Finished


# --- server-sent events ---------------------------------------------------------------------------


class SseDecoder:
    """Server-sent events (WHATWG HTML, "Parsing an event stream") from bytes cut anywhere.

    `feed` returns the data of each event completed by a blank line; multi-line data is joined with
    "\\n"; comment lines and the fields other than `data` are ignored. A UTF-8 character or a CRLF split
    between two reads is reassembled."""

    def __init__(self) -> None:
        self._utf8 = codecs.getincrementaldecoder("utf-8")()
        self._pending = ""  # text after the last line break
        self._data: list[str] | None = None
        self._at_start = True

    def feed(self, data: bytes) -> list[str]:
        return self._take(self._decode(data, final=False), final=False)

    def close(self) -> list[str]:
        """End of stream: an event not closed by a blank line is dropped, as the spec says."""
        return self._take(self._decode(b"", final=True), final=True)

    def _decode(self, data: bytes, *, final: bool) -> str:
        try:
            text = self._utf8.decode(data, final)
        except UnicodeDecodeError as exc:
            raise MalformedChunk(f"event stream is not UTF-8: {exc}") from exc
        if self._at_start and text:
            self._at_start = False
            text = text.removeprefix("\ufeff")
        return text

    def _take(self, text: str, *, final: bool) -> list[str]:
        text = self._pending + text
        hold = ""
        if not final and text.endswith("\r"):  # maybe the first half of a CRLF
            text, hold = text[:-1], "\r"
        lines = _LINE_BREAK.split(text)
        self._pending = lines.pop() + hold
        if final:
            self._pending = ""
        events: list[str] = []
        for line in lines:
            if not line:
                if self._data is not None:
                    events.append("\n".join(self._data))
                self._data = None
                continue
            if line.startswith(":"):
                continue
            name, _, value = line.partition(":")
            if name == "data":
                if self._data is None:
                    self._data = []
                self._data.append(value.removeprefix(" "))
        return events


# --- chunks ---------------------------------------------------------------------------------------


@dataclass(slots=True)
class _PartialCall:
    id: str = ""
    name: str = ""
    arguments: list[str] = field(default_factory=list)


def _expect(value: object, kind: type | tuple[type, ...], what: str) -> Any:
    if value is not None and not isinstance(value, kind):
        raise MalformedChunk(f"{what} has the wrong type: {value!r:.100}")
    return value


class ChatStreamAssembler:
    """chat.completion.chunk payloads in, `ChatEvent`s out: text as it comes, then each complete tool
    call (ordered by index), then `Finished`. Only choice 0 is read (we never ask for n > 1)."""

    def __init__(self) -> None:
        self._calls: dict[int, _PartialCall] = {}
        self.saw_token = False  # any content, tool call or finish_reason yet
        self.finished = False  # finish_reason seen
        self.done = False  # [DONE] seen

    def feed(self, payload: str) -> list[ChatEvent]:
        if self.done or not payload.strip():
            return []
        if payload.strip() == DONE:
            self.done = True
            return [] if self.finished else self._finish(None)
        try:
            chunk = json.loads(payload)
        except ValueError as exc:
            raise MalformedChunk(f"chunk is not JSON: {payload[:200]!r}") from exc
        if not isinstance(chunk, dict):
            raise MalformedChunk(f"chunk is not an object: {payload[:200]!r}")
        error = error_from_body(chunk, status=None)
        if error is not None:
            raise error
        choices = chunk.get("choices")
        if not isinstance(choices, list):
            raise MalformedChunk(f"chunk without a choices list: {payload[:200]!r}")
        events: list[ChatEvent] = []
        for choice in choices:
            if not isinstance(choice, dict):
                raise MalformedChunk(f"choice is not an object: {choice!r:.100}")
            if choice.get("index", 0) == 0 and not self.finished:
                events.extend(self._choice(choice))
        return events

    def end_of_stream(self) -> list[ChatEvent]:
        """The transport ended. Fine after a finish_reason or [DONE]; otherwise the reply was cut off."""
        if not (self.finished or self.done):
            raise StreamInterrupted("the stream ended before [DONE] or a finish_reason")
        return []

    def _choice(self, choice: dict[str, Any]) -> list[ChatEvent]:
        delta = _expect(choice.get("delta"), dict, "delta") or {}
        events: list[ChatEvent] = []
        content = _expect(delta.get("content"), str, "delta.content")
        if content:
            self.saw_token = True
            events.append(TextDelta(content))
        for piece in _expect(delta.get("tool_calls"), list, "delta.tool_calls") or []:
            self.saw_token = True
            self._tool_call_piece(piece)
        reason = _expect(choice.get("finish_reason"), str, "finish_reason")
        if reason:
            events.extend(self._finish(reason))
        return events

    def _tool_call_piece(self, piece: object) -> None:
        if not isinstance(piece, dict):
            raise MalformedChunk(f"tool call delta is not an object: {piece!r:.100}")
        index = piece.get("index")
        if not isinstance(index, int) or isinstance(index, bool):
            raise MalformedChunk(f"tool call delta without an integer index: {piece!r:.100}")
        call = self._calls.setdefault(index, _PartialCall())
        call_id = _expect(piece.get("id"), str, "tool_calls.id")
        if call_id and not call.id:
            call.id = call_id
        function = _expect(piece.get("function"), dict, "tool_calls.function") or {}
        name = _expect(function.get("name"), str, "function.name")
        if name and not call.name:
            call.name = name
        arguments = _expect(function.get("arguments"), str, "function.arguments")
        if arguments:
            call.arguments.append(arguments)

    def _finish(self, reason: str | None) -> list[ChatEvent]:
        self.saw_token = True
        self.finished = True
        events: list[ChatEvent] = []
        for index in sorted(self._calls):
            call = self._calls[index]
            if not call.name:
                raise MalformedChunk(f"tool call {index} never got a function name")
            raw = "".join(call.arguments)
            try:
                arguments = json.loads(raw) if raw.strip() else {}
            except ValueError as exc:
                raise BadToolArguments(call.name, raw) from exc
            if not isinstance(arguments, dict):
                raise BadToolArguments(call.name, raw)
            events.append(ToolCall(call.id or f"call_{index}", call.name, arguments, raw or "{}"))
        self._calls.clear()
        events.append(Finished(reason))
        return events

"""The language-model path of the dialogue: a streaming OpenAI-compatible chat client (vLLM serves the
same protocol) and the turn loop that lets the model call the CRM tools.

The model answers the open-ended questions the deterministic policy has no rule for; the router
(`agent.router`) decides which path a turn takes and falls back to the policy on any `LlmError`.
Everything here is synchronous because the call session runs dialogue turns in a worker thread.

Streaming matters for latency, not for throughput: the first clause of a reply can be synthesised
while the model is still writing the second (`LlmDialogue.stream_clauses`), and a model that has not
produced its first token within `first_token_timeout_s` is given up on while the caller can still be
answered by the policy without a noticeable gap.

The protocol itself is parsed by the sans-IO layers in `agent.chat_stream`; `ChatClient` is the httpx
shell around them and the one place where httpx exceptions become `LlmError`s.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import logging
import re
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Executor, ThreadPoolExecutor
from decimal import Decimal
from typing import Any, Final

import httpx

from agent.booking_flow import AgentReply
from agent.chat_stream import (
    BadToolArguments,
    ChatEvent,
    ChatStreamAssembler,
    Finished,
    FirstTokenTimeout,
    LlmError,
    LlmProtocolError,
    LlmStatusError,
    LlmTimeout,
    LlmUnavailable,
    MalformedChunk,
    SseDecoder,
    StreamInterrupted,
    StreamStalled,
    TextDelta,
    ToolCall,
    TotalTimeout,
    error_from_body,
)
from agent.memory import ConversationMemory
from tools.api import BookingInfo, CustomerInfo, InvalidRequest, OrderInfo, ToolBox, ToolError
from tools.schemas import TOOL_DEFINITIONS, ToolDefinition, parse_arguments

__all__ = [
    "DEFAULT_SYSTEM_PROMPT",
    "BadToolArguments",
    "ChatClient",
    "ChatEvent",
    "ClauseSplitter",
    "EmptyReply",
    "Finished",
    "FirstTokenTimeout",
    "LlmDialogue",
    "LlmError",
    "LlmProtocolError",
    "LlmStatusError",
    "LlmTimeout",
    "LlmUnavailable",
    "MalformedChunk",
    "StreamInterrupted",
    "StreamStalled",
    "TextDelta",
    "ToolCall",
    "ToolLoopExceeded",
    "TotalTimeout",
    "jsonable",
]

log = logging.getLogger(__name__)

DEFAULT_SYSTEM_PROMPT: Final = (
    "You are the receptionist of a car service garage, answering the phone. Your words are spoken by a "
    "speech synthesiser: reply in one to three short plain sentences, no lists, no markdown, no emoji. "
    "Use the tools for anything about bookings, orders, stock or the business; never invent prices, "
    "times or statuses. Times are business-local. If you cannot help, offer to connect the caller to "
    "someone from the team."
)
_ERROR_BODY_LIMIT: Final = 64 * 1024


class EmptyReply(LlmError):
    """The model finished without saying anything."""


class ToolLoopExceeded(LlmError):
    """The model kept calling tools after its last allowed round."""


# --- the HTTP client ------------------------------------------------------------------------------


class ChatClient:
    """POST /v1/chat/completions with `stream: true`, yielding `ChatEvent`s as they arrive.

    Time limits: connecting takes at most `connect_timeout_s`; the first token (content, a tool call or
    a finish) must arrive within `first_token_timeout_s` of sending; the whole reply within
    `total_timeout_s` (or an earlier `deadline` a caller gives). The total limit is checked after every
    read, and every read is itself bounded by the first-token limit, so a silent server is noticed one
    first-token period at the latest: after the first token such a silence is `StreamStalled`.

    Thread-safe: the underlying httpx.Client pools connections across calls.
    """

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        api_key: str | None = None,
        connect_timeout_s: float = 1.0,
        first_token_timeout_s: float = 1.5,
        total_timeout_s: float = 6.0,
        temperature: float = 0.3,
        max_tokens: int = 200,
        clock: Callable[[], float] = time.monotonic,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        root = base_url.rstrip("/")
        root = root.removesuffix("/v1")
        self.url = f"{root}/v1/chat/completions"
        self.model = model
        self.temperature = temperature
        self.max_tokens = max_tokens
        self._connect_timeout_s = connect_timeout_s
        self._first_token_timeout_s = first_token_timeout_s
        self._total_timeout_s = total_timeout_s
        self._clock = clock
        headers = {"Accept": "text/event-stream"}
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        self._http = httpx.Client(headers=headers, transport=transport)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> ChatClient:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def request_body(
        self,
        messages: Sequence[Mapping[str, Any]],
        tools: Sequence[ToolDefinition] = (),
        *,
        tool_choice: str = "auto",
    ) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self.model,
            "messages": list(messages),
            "stream": True,
            "temperature": self.temperature,
            "max_tokens": self.max_tokens,
        }
        if tools:  # OpenAI rejects an empty tools list, and tool_choice without tools
            body["tools"] = [{"type": "function", "function": d.as_function_spec()} for d in tools]
            body["tool_choice"] = tool_choice
        return body

    def stream(
        self,
        messages: Sequence[Mapping[str, Any]],
        tools: Sequence[ToolDefinition] = (),
        *,
        tool_choice: str = "auto",
        deadline: float | None = None,
    ) -> Iterator[ChatEvent]:
        """Events of one completion: `TextDelta`s as they come, then complete `ToolCall`s, then
        `Finished`. Raises only `LlmError`s. Closing the iterator early closes the connection."""
        started = self._clock()
        total_deadline = started + self._total_timeout_s
        if deadline is not None:
            total_deadline = min(total_deadline, deadline)
        first_token_deadline = min(started + self._first_token_timeout_s, total_deadline)
        remaining = total_deadline - started
        if remaining <= 0:
            raise TotalTimeout("no time left for the model in this turn")
        timeout = httpx.Timeout(
            connect=min(self._connect_timeout_s, remaining),
            read=min(self._first_token_timeout_s, remaining),
            write=remaining,
            pool=min(self._connect_timeout_s, remaining),
        )
        body = self.request_body(messages, tools, tool_choice=tool_choice)
        assembler = ChatStreamAssembler()
        try:
            with self._http.stream("POST", self.url, json=body, timeout=timeout) as response:
                if response.status_code != 200:
                    raise self._status_error(response)
                content_type = response.headers.get("content-type", "")
                if not content_type.startswith("text/event-stream"):
                    raise MalformedChunk(f"expected an event stream, got {content_type or 'no content type'}")
                decoder = SseDecoder()
                for data in response.iter_bytes():
                    now = self._clock()
                    if now > total_deadline:
                        raise TotalTimeout(f"reply still streaming after {now - started:.2f} s")
                    if not assembler.saw_token and now > first_token_deadline:
                        raise FirstTokenTimeout(f"no token after {now - started:.2f} s (keep-alives only)")
                    for payload in decoder.feed(data):
                        yield from assembler.feed(payload)
                    if assembler.done:
                        return
                for payload in decoder.close():
                    yield from assembler.feed(payload)
                yield from assembler.end_of_stream()
        except httpx.ReadTimeout as exc:
            waited = self._clock() - started
            if not assembler.saw_token:
                raise FirstTokenTimeout(f"no token after {waited:.2f} s") from exc
            if self._clock() >= total_deadline:
                raise TotalTimeout(f"reply still streaming after {waited:.2f} s") from exc
            raise StreamStalled(f"stream silent for {self._first_token_timeout_s} s") from exc
        except (
            httpx.ConnectError,
            httpx.ConnectTimeout,
            httpx.PoolTimeout,
            httpx.UnsupportedProtocol,
        ) as exc:
            raise LlmUnavailable(f"cannot reach {self.url}: {exc}") from exc
        except (httpx.RemoteProtocolError, httpx.ReadError) as exc:
            raise StreamInterrupted(f"connection dropped mid-stream: {exc}") from exc
        except httpx.HTTPError as exc:  # write errors, decoding errors: the exchange failed
            raise LlmUnavailable(f"request to {self.url} failed: {exc!r}") from exc

    @staticmethod
    def _status_error(response: httpx.Response) -> LlmStatusError:
        raw = b""
        for data in response.iter_bytes():
            raw += data
            if len(raw) > _ERROR_BODY_LIMIT:
                break
        try:
            body: object = json.loads(raw)
        except ValueError:
            body = None
        error = error_from_body(body, status=response.status_code)
        if error is not None:
            return error
        text = raw.decode("utf-8", "replace").strip()[:200] or response.reason_phrase
        return LlmStatusError(text, status=response.status_code)


# --- clauses ----------------------------------------------------------------------------------------

# Words whose trailing period does not end a sentence ("Dr. Lee", "10 a.m. tomorrow").
_ABBREVIATIONS = frozenset(
    {"mr", "mrs", "ms", "dr", "st", "jr", "sr", "vs", "approx", "e.g", "i.e", "a.m", "p.m"}
)
_BOUNDARY = re.compile(r"[.!?]+[\"')\]]*\s|[,;:]\s")


class ClauseSplitter:
    """Complete clauses of streamed text, each as soon as it is known to be complete.

    A sentence ends at . ! or ? followed by whitespace (so "$49.99" and "3.5" never split); a clause
    that is already `min_clause_chars` long also ends at , ; or :, so a long first sentence does not
    hold back the first audio, while a short lead-in ("Sure, ...") is not spoken as a fragment."""

    def __init__(self, min_clause_chars: int = 40) -> None:
        self._buffer = ""
        self._min = min_clause_chars

    def feed(self, text: str) -> list[str]:
        self._buffer += text
        clauses: list[str] = []
        start = 0
        for match in _BOUNDARY.finditer(self._buffer):
            candidate = self._buffer[start : match.end()].strip()
            mark = match.group(0)[0]
            if mark in ",;:" and len(candidate) < self._min:
                continue
            if mark == "." and self._abbreviation(self._buffer[start : match.start()]):
                continue
            if candidate:
                clauses.append(candidate)
            start = match.end()
        self._buffer = self._buffer[start:]
        return clauses

    def flush(self) -> str | None:
        rest, self._buffer = self._buffer.strip(), ""
        return rest or None

    @staticmethod
    def _abbreviation(before: str) -> bool:
        words = before.split()
        if not words:
            return False
        word = words[-1].lower().lstrip("(\"'")
        return word in _ABBREVIATIONS or (len(word) == 1 and word.isalpha() and word != "i")


# --- the dialogue turn --------------------------------------------------------------------------------

# Tools run here so a call can stop waiting at the tool's time limit (threads start on first use).
_TOOL_THREADS: Final = ThreadPoolExecutor(max_workers=4, thread_name_prefix="llm-tool")


def jsonable(value: object) -> Any:
    """A tool result as JSON values: dataclasses as objects, dates ISO 8601, prices as exact strings."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, list | tuple):
        return [jsonable(item) for item in value]
    if isinstance(value, dt.date | dt.time):  # datetime is a date
        return value.isoformat()
    if isinstance(value, Decimal):
        return str(value)
    return value


def _error_object(kind: str, message: str) -> str:
    return json.dumps({"error": {"type": kind, "message": message}})


class LlmDialogue:
    """One caller turn answered by the model, which may call the CRM tools up to `max_tool_rounds`
    times before it must answer in words.

    It reads the call's context from `memory` but does not record the turn itself: whoever owns the
    conversation (the router) records what the caller said and what the caller heard."""

    def __init__(
        self,
        client: ChatClient,
        tools: ToolBox,
        *,
        system_prompt: str,
        memory: ConversationMemory,
        max_tool_rounds: int = 3,
        definitions: Sequence[ToolDefinition] = TOOL_DEFINITIONS,
        tool_executor: Executor | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._client = client
        self._tools = tools
        self._system_prompt = system_prompt
        self._memory = memory
        self._max_tool_rounds = max_tool_rounds
        self._definitions = tuple(definitions)
        self._by_name = {d.name: d for d in self._definitions}
        self._executor = tool_executor
        self._clock = clock

    @property
    def memory(self) -> ConversationMemory:
        return self._memory

    def respond(self, text: str, *, deadline: float | None = None) -> AgentReply:
        """The model's whole reply to `text`; raises `LlmError` (the router then falls back)."""
        return AgentReply(" ".join(self.stream_clauses(text, deadline=deadline)), intent="llm")

    def stream_clauses(self, text: str, *, deadline: float | None = None) -> Iterator[str]:
        """The reply to `text` one clause at a time, each as soon as the model has finished it, for
        per-clause synthesis. Words the model says before a tool call ("let me check") come first.
        Raises `LlmError`, possibly after some clauses were yielded."""
        messages: list[dict[str, Any]] = list(self._memory.context_messages(self._system_prompt))
        messages.append({"role": "user", "content": text})
        spoke = False
        for round_number in range(self._max_tool_rounds + 1):
            last_round = round_number == self._max_tool_rounds
            splitter = ClauseSplitter()
            said: list[str] = []
            calls: list[ToolCall] = []
            events = self._client.stream(
                messages, self._definitions, tool_choice="none" if last_round else "auto", deadline=deadline
            )
            for event in events:
                if isinstance(event, TextDelta):
                    said.append(event.text)
                    for clause in splitter.feed(event.text):
                        spoke = True
                        yield clause
                elif isinstance(event, ToolCall):
                    calls.append(event)
            if tail := splitter.flush():
                spoke = True
                yield tail
            if not calls:
                if not spoke:
                    raise EmptyReply("the model finished without a word")
                return
            if last_round:
                raise ToolLoopExceeded(f"still calling tools after {self._max_tool_rounds} rounds")
            messages.append(
                {
                    "role": "assistant",
                    "content": "".join(said) or None,
                    "tool_calls": [
                        {
                            "id": c.id,
                            "type": "function",
                            "function": {"name": c.name, "arguments": c.raw_arguments},
                        }
                        for c in calls
                    ],
                }
            )
            for call in calls:
                messages.append(
                    {"role": "tool", "tool_call_id": call.id, "content": self._run_tool(call, deadline)}
                )

    def _run_tool(self, call: ToolCall, deadline: float | None) -> str:
        """The tool's result as JSON, or an error object the model can read and explain."""
        definition = self._by_name.get(call.name)
        timeout = definition.timeout_s if definition is not None else 0.0
        if deadline is not None:
            timeout = max(0.0, min(timeout, deadline - self._clock()))
        try:
            if definition is None:
                raise InvalidRequest(f"unknown tool {call.name!r}")
            kwargs = parse_arguments(call.name, call.arguments)
            method = getattr(self._tools, definition.method)
            future = (self._executor or _TOOL_THREADS).submit(method, **kwargs)
            result = future.result(timeout=timeout)
        except ToolError as exc:
            log.info("tool %s(%s) refused: %r", call.name, call.raw_arguments, exc)
            return _error_object(type(exc).__name__, str(exc))
        except TimeoutError:
            log.warning("tool %s took longer than %.2f s", call.name, timeout)
            return _error_object("Timeout", f"{call.name} did not answer within {timeout:.1f} s")
        except Exception:
            log.exception("tool %s(%s) failed", call.name, call.raw_arguments)
            return _error_object("InternalError", f"{call.name} failed")
        self._note_facts(result)
        return json.dumps(jsonable(result))

    def _note_facts(self, result: object) -> None:
        """Slots a tool result settles, so later turns (and a long call's summary) keep them."""
        memory = self._memory
        if isinstance(result, BookingInfo):
            memory.update_facts(
                {
                    "booking_id": result.id,
                    "service": result.service,
                    "date": result.start.date().isoformat(),
                    "time": result.start.time().isoformat(timespec="minutes"),
                    "booking_status": result.status,
                }
            )
        elif isinstance(result, OrderInfo):
            memory.update_facts({"order_number": result.number, "order_status": result.status})
        elif isinstance(result, CustomerInfo):
            memory.update_facts({"customer_id": result.id, "customer_name": result.name})

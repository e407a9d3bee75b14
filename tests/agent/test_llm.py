# ruff: noqa: F811  (pytest fixtures imported from llm_fixtures are used as parameters)
"""The streaming chat client and the model's dialogue turn, against a real local HTTP server speaking the
OpenAI chat-completions streaming protocol (tests/agent/openai_server.py) and a seeded SQLite CRM.

Timeouts are set short here (a few hundred ms) so the error paths run fast; what is asserted is which
error comes out, never how long something took.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import itertools
import json
import threading
from collections.abc import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from agent.chat_stream import ChatStreamAssembler, SseDecoder
from agent.llm import (
    DEFAULT_SYSTEM_PROMPT,
    BadToolArguments,
    ChatClient,
    ClauseSplitter,
    EmptyReply,
    Finished,
    FirstTokenTimeout,
    LlmDialogue,
    LlmStatusError,
    LlmUnavailable,
    MalformedChunk,
    StreamInterrupted,
    StreamStalled,
    TextDelta,
    ToolCall,
    ToolLoopExceeded,
    TotalTimeout,
    jsonable,
)
from agent.memory import ConversationMemory
from crm.models import Booking, Customer, Service
from tests.agent.llm_fixtures import (  # noqa: F401 (fixtures)
    DANA,
    MODEL,
    NOW,
    crm_sessions,
    llm_server,
    openai_backend,
    seeded_crm_file,
    toolbox,
)
from tests.agent.openai_server import (
    Completion,
    HttpError,
    OpenAIServer,
    RawStream,
    ScriptedToolCall,
)
from tests.services import free_port
from tools.api import BusinessInfo
from tools.schemas import TOOL_DEFINITIONS, TOOLS_BY_NAME
from tools.toolbox import DatabaseToolBox

HELLO = [{"role": "user", "content": "hello"}]


@pytest.fixture
def client(llm_server: OpenAIServer) -> Iterator[ChatClient]:
    with ChatClient(
        llm_server.base_url, MODEL, first_token_timeout_s=0.4, total_timeout_s=1.5, connect_timeout_s=0.5
    ) as chat:
        yield chat


def chunk(delta: dict[str, object], finish_reason: str | None = None) -> dict[str, object]:
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "created": 1_700_000_000,
        "model": MODEL,
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}],
    }


def sse(obj: object, end: str = "\n") -> bytes:
    return f"data: {json.dumps(obj)}{end}{end}".encode()


# --- the client: what it sends and what it parses ------------------------------------------------


def test_text_arrives_as_deltas_and_the_request_is_an_openai_streaming_request(
    client: ChatClient, llm_server: OpenAIServer
) -> None:
    llm_server.script(Completion(text=["We're ", "open ", "until six."]))
    events = list(client.stream(HELLO, TOOL_DEFINITIONS))
    assert events == [TextDelta("We're "), TextDelta("open "), TextDelta("until six."), Finished("stop")]
    (request,) = llm_server.requests
    assert request.body["model"] == MODEL
    assert request.body["stream"] is True
    assert request.body["messages"] == HELLO
    assert request.body["tool_choice"] == "auto"
    assert request.body["tools"] == [
        {"type": "function", "function": d.as_function_spec()} for d in TOOL_DEFINITIONS
    ]
    assert request.headers["accept"] == "text/event-stream"
    assert "authorization" not in request.headers


def test_no_tools_sends_neither_tools_nor_tool_choice(client: ChatClient, llm_server: OpenAIServer) -> None:
    llm_server.script(Completion(text=["Hi."]))
    assert list(client.stream(HELLO)) == [TextDelta("Hi."), Finished("stop")]
    assert "tools" not in llm_server.requests[0].body
    assert "tool_choice" not in llm_server.requests[0].body


@pytest.mark.parametrize("suffix", ["", "/", "/v1", "/v1/"])
def test_base_url_with_or_without_v1(llm_server: OpenAIServer, suffix: str) -> None:
    llm_server.script(Completion(text=["ok"]))
    with ChatClient(llm_server.base_url + suffix, MODEL) as chat:
        assert chat.url == f"{llm_server.base_url}/v1/chat/completions"
        assert list(chat.stream(HELLO)) == [TextDelta("ok"), Finished("stop")]


def test_tool_call_arguments_are_reassembled_from_many_chunks(
    client: ChatClient, llm_server: OpenAIServer
) -> None:
    arguments = json.dumps({"service": "oil change", "day": "2026-11-24", "after": "10:00"})
    llm_server.script(
        Completion(
            tool_calls=[ScriptedToolCall("find_slots", arguments, id="call_7")], argument_fragment_chars=1
        )
    )
    events = list(client.stream(HELLO, TOOL_DEFINITIONS))
    assert events == [
        ToolCall("call_7", "find_slots", json.loads(arguments), arguments),
        Finished("tool_calls"),
    ]
    # One chunk per character of the arguments, plus role, name and finish chunks.
    assert llm_server.requests[0].chunks_sent == len(arguments) + 3


@pytest.mark.parametrize("interleave", [False, True], ids=["one-after-the-other", "interleaved"])
def test_two_parallel_tool_calls(client: ChatClient, llm_server: OpenAIServer, interleave: bool) -> None:
    first = ScriptedToolCall("order_status", json.dumps({"order_number": "A1042"}), id="call_a")
    second = ScriptedToolCall("check_inventory", json.dumps({"spoken_name": "wiper blades"}), id="call_b")
    llm_server.script(
        Completion(text=["Let me check both."], tool_calls=[first, second], interleave_tool_calls=interleave)
    )
    events = list(client.stream(HELLO, TOOL_DEFINITIONS))
    assert events == [
        TextDelta("Let me check both."),
        ToolCall("call_a", "order_status", {"order_number": "A1042"}, first.arguments),
        ToolCall("call_b", "check_inventory", {"spoken_name": "wiper blades"}, second.arguments),
        Finished("tool_calls"),
    ]


def test_comments_crlf_and_a_missing_done_after_finish_are_accepted(
    client: ChatClient, llm_server: OpenAIServer
) -> None:
    llm_server.script(
        RawStream(
            [
                b": keep-alive\r\n\r\n",
                sse(chunk({"role": "assistant", "content": ""}), "\r\n"),
                sse(chunk({"content": "Caf\u00e9 opens at eight."}), "\r\n")[:20],
                sse(chunk({"content": "Caf\u00e9 opens at eight."}), "\r\n")[20:],
                sse(chunk({}, "stop"), "\r\n"),
            ]
        )
    )
    assert list(client.stream(HELLO)) == [TextDelta("Caf\u00e9 opens at eight."), Finished("stop")]


def test_api_key_is_sent_as_bearer_and_a_wrong_one_is_refused() -> None:
    with OpenAIServer(model=MODEL, api_key="sekret") as server:
        server.script(Completion(text=["in"]))
        with ChatClient(server.base_url, MODEL, api_key="sekret") as chat:
            assert list(chat.stream(HELLO)) == [TextDelta("in"), Finished("stop")]
        assert server.requests[0].headers["authorization"] == "Bearer sekret"
        with (
            ChatClient(server.base_url, MODEL, api_key="wrong") as chat,
            pytest.raises(LlmStatusError) as err,
        ):
            list(chat.stream(HELLO))
    assert err.value.status == 401
    assert err.value.message == "Unauthorized"


# --- the client: every error path ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "message", "kind"),
    [
        (400, "This model's maximum context length is 4096 tokens.", "BadRequestError"),
        (500, "The engine died while generating.", "InternalServerError"),
        (503, "The server is overloaded.", "ServiceUnavailableError"),
    ],
)
def test_http_error_keeps_the_servers_message(
    client: ChatClient, llm_server: OpenAIServer, status: int, message: str, kind: str
) -> None:
    llm_server.script(HttpError(status, message, kind, status))
    with pytest.raises(LlmStatusError) as err:
        list(client.stream(HELLO))
    assert (err.value.status, err.value.message, err.value.error_type, err.value.code) == (
        status,
        message,
        kind,
        status,
    )


def test_unknown_model_is_a_404_with_the_servers_message(llm_server: OpenAIServer) -> None:
    with ChatClient(llm_server.base_url, "no-such-model") as chat, pytest.raises(LlmStatusError) as err:
        list(chat.stream(HELLO))
    assert err.value.status == 404
    assert "no-such-model" in err.value.message


def test_nothing_listening_is_unavailable() -> None:
    with ChatClient(f"http://127.0.0.1:{free_port()}", MODEL) as chat, pytest.raises(LlmUnavailable):
        list(chat.stream(HELLO))


def test_slow_first_token(client: ChatClient, llm_server: OpenAIServer) -> None:
    llm_server.script(Completion(text=["too late"], first_token_delay_s=1.2))
    with pytest.raises(FirstTokenTimeout):
        list(client.stream(HELLO))


def test_keep_alives_are_not_a_first_token(client: ChatClient, llm_server: OpenAIServer) -> None:
    llm_server.script(Completion(text=["too late"], first_token_delay_s=1.2, keepalive_every_s=0.05))
    with pytest.raises(FirstTokenTimeout, match="keep-alives"):
        list(client.stream(HELLO))


def test_total_timeout_after_some_text(llm_server: OpenAIServer) -> None:
    llm_server.script(Completion(text=[f"word{i} " for i in range(40)], chunk_delay_s=0.05))
    received: list[object] = []
    with (
        ChatClient(llm_server.base_url, MODEL, first_token_timeout_s=0.4, total_timeout_s=0.5) as chat,
        pytest.raises(TotalTimeout),
    ):
        for event in chat.stream(HELLO):
            received.append(event)
    assert received and all(isinstance(event, TextDelta) for event in received)


def test_a_stream_that_goes_silent_after_the_first_token(
    client: ChatClient, llm_server: OpenAIServer
) -> None:
    llm_server.script(Completion(text=["Let me see", " what we have."], chunk_delay_s=1.2))
    received: list[object] = []
    with pytest.raises(StreamStalled):
        for event in client.stream(HELLO):
            received.append(event)
    assert received == [TextDelta("Let me see")]


def test_a_turn_deadline_shorter_than_the_total_limit_wins(llm_server: OpenAIServer) -> None:
    with ChatClient(llm_server.base_url, MODEL, total_timeout_s=30.0) as chat, pytest.raises(TotalTimeout):
        list(chat.stream(HELLO, deadline=0.0))  # monotonic time 0 is long past
    assert llm_server.requests == []  # nothing was sent


@pytest.mark.parametrize(
    "bad",
    [
        b'data: {"id": "chatcmpl-1", "choices": [\n\n',
        b'data: {"id": "chatcmpl-1", "choices": {"index": 0}}\n\n',
        sse(chunk({"content": 42})),
        sse(chunk({"tool_calls": [{"function": {"name": "order_status"}}]})),  # no index
        sse([1, 2, 3]),
        b"data: \xff\xfe\n\n",
    ],
    ids=[
        "not-json",
        "choices-not-a-list",
        "content-not-text",
        "tool-call-without-index",
        "array",
        "not-utf8",
    ],
)
def test_malformed_chunks(client: ChatClient, llm_server: OpenAIServer, bad: bytes) -> None:
    llm_server.script(RawStream([sse(chunk({"role": "assistant", "content": ""})), bad, b"data: [DONE]\n\n"]))
    with pytest.raises(MalformedChunk):
        list(client.stream(HELLO))


def test_a_json_reply_instead_of_a_stream_is_malformed(client: ChatClient, llm_server: OpenAIServer) -> None:
    llm_server.script(RawStream([b'{"choices": []}'], content_type="application/json"))
    with pytest.raises(MalformedChunk, match="event stream"):
        list(client.stream(HELLO))


def test_tool_arguments_that_are_not_json(client: ChatClient, llm_server: OpenAIServer) -> None:
    llm_server.script(Completion(tool_calls=[ScriptedToolCall("order_status", '{"order_number": A1042}')]))
    with pytest.raises(BadToolArguments) as err:
        list(client.stream(HELLO, TOOL_DEFINITIONS))
    assert err.value.tool == "order_status"
    assert err.value.arguments == '{"order_number": A1042}'


def test_stream_that_ends_without_done_or_finish_reason(client: ChatClient, llm_server: OpenAIServer) -> None:
    llm_server.script(Completion(text=["Your order ", "is ", "ready."], end_after_chunks=3))
    received: list[object] = []
    with pytest.raises(StreamInterrupted, match="before"):
        for event in client.stream(HELLO):
            received.append(event)
    assert received == [TextDelta("Your order "), TextDelta("is ")]


def test_connection_dropped_mid_stream(client: ChatClient, llm_server: OpenAIServer) -> None:
    llm_server.script(Completion(text=["Your order ", "is ", "ready."], drop_after_chunks=2))
    with pytest.raises(StreamInterrupted, match="dropped"):
        list(client.stream(HELLO))


def test_error_object_inside_the_stream(client: ChatClient, llm_server: OpenAIServer) -> None:
    # vLLM reports an engine error found after the 200 went out like this, then sends [DONE].
    error = {"error": {"message": "engine aborted the request", "type": "InternalServerError", "code": 500}}
    llm_server.script(
        RawStream(
            [sse(chunk({"role": "assistant", "content": ""})), sse(chunk({"content": "Hm"})), sse(error)]
        )
    )
    with pytest.raises(LlmStatusError) as err:
        list(client.stream(HELLO))
    assert err.value.message == "engine aborted the request"
    assert err.value.status is None


# --- the sans-IO layers ----------------------------------------------------------------------------

_RECORDED = (
    "\ufeff: comment\r\n"
    + 'data: {"a": "caf\u00e9 \U0001f697"}\r\n\r\n'
    + "event: message\nid: 7\ndata: line one\ndata: line two\n\n"
    + "retry: 100\r"
    + "data: [DONE]\r\r"
).encode()


@settings(max_examples=150, deadline=None)
@given(cuts=st.lists(st.integers(min_value=0, max_value=len(_RECORDED)), max_size=12))
def test_sse_decoder_gives_the_same_events_however_the_bytes_are_cut(cuts: list[int]) -> None:
    decoder = SseDecoder()
    events: list[str] = []
    bounds = [0, *sorted(cuts), len(_RECORDED)]
    for start, end in itertools.pairwise(bounds):
        events += decoder.feed(_RECORDED[start:end])
    events += decoder.close()
    assert events == ['{"a": "caf\u00e9 \U0001f697"}', "line one\nline two", "[DONE]"]


def test_done_without_finish_reason_still_finishes_pending_tool_calls() -> None:
    assembler = ChatStreamAssembler()
    piece = {
        "index": 0,
        "id": "c1",
        "type": "function",
        "function": {"name": "business_details", "arguments": "{}"},
    }
    assert assembler.feed(json.dumps(chunk({"tool_calls": [piece]}))) == []
    assert assembler.feed("[DONE]") == [ToolCall("c1", "business_details", {}, "{}"), Finished(None)]
    assert assembler.end_of_stream() == []


def test_clauses_come_out_as_soon_as_they_are_complete() -> None:
    splitter = ClauseSplitter()
    text = "Sure. We're open until 6 p.m. on Saturday and an oil change is $49.99 there! Anything else?"
    out: list[list[str]] = []
    first, *rest = text.split(" ")
    for token in [first, *(f" {word}" for word in rest)]:  # as a tokenizer cuts it: space first
        out.append(splitter.feed(token))
    tail = splitter.flush()
    clauses = [c for group in out for c in group] + ([tail] if tail else [])
    assert clauses == [
        "Sure.",
        "We're open until 6 p.m. on Saturday and an oil change is $49.99 there!",
        "Anything else?",
    ]
    assert out[0] == [] and out[1] == ["Sure."]  # "Sure." is out once the next word starts


def test_a_long_clause_splits_at_a_comma_but_a_short_lead_in_does_not() -> None:
    splitter = ClauseSplitter(min_clause_chars=40)
    parts = splitter.feed("Okay, the front brake pads for your car came in this morning, so you can ")
    assert parts == ["Okay, the front brake pads for your car came in this morning,"]
    assert splitter.flush() == "so you can"


# --- the dialogue turn with real tools -----------------------------------------------------------


def dialogue(
    llm_server: OpenAIServer,
    tools: object,
    memory: ConversationMemory | None = None,
    **kwargs: object,
) -> LlmDialogue:
    chat = ChatClient(llm_server.base_url, MODEL, first_token_timeout_s=1.0, total_timeout_s=3.0)
    return LlmDialogue(
        chat,
        tools,  # type: ignore[arg-type]
        system_prompt=DEFAULT_SYSTEM_PROMPT,
        memory=memory or ConversationMemory(),
        **kwargs,  # type: ignore[arg-type]
    )


def test_the_model_runs_a_real_tool_and_answers_with_its_result(
    llm_server: OpenAIServer, toolbox: DatabaseToolBox
) -> None:
    memory = ConversationMemory()
    memory.add_agent("Hi, thanks for calling Riverside Auto Care. How can I help you today?")
    memory.set_fact("customer_name", "Dana Whitfield")
    llm_server.script(
        Completion(
            text=["Let me check."],
            tool_calls=[ScriptedToolCall("order_status", '{"order_number": "A1042"}', id="call_1")],
        ),
        Completion(text=["Your front brake pads ", "are ready for pickup."]),
    )
    reply = dialogue(llm_server, toolbox, memory).respond("any news on my order a one zero four two")
    assert reply.text == "Let me check. Your front brake pads are ready for pickup."
    assert reply.intent == "llm"

    first, second = (r.body["messages"] for r in llm_server.requests)
    assert first[0]["role"] == "system"
    assert first[0]["content"].startswith(DEFAULT_SYSTEM_PROMPT)
    assert "customer_name: Dana Whitfield" in first[0]["content"]
    assert first[1:] == [
        {
            "role": "assistant",
            "content": "Hi, thanks for calling Riverside Auto Care. How can I help you today?",
        },
        {"role": "user", "content": "any news on my order a one zero four two"},
    ]
    assert second[: len(first)] == first
    assistant, tool = second[len(first) :]
    assert assistant == {
        "role": "assistant",
        "content": "Let me check.",
        "tool_calls": [
            {
                "id": "call_1",
                "type": "function",
                "function": {"name": "order_status", "arguments": '{"order_number": "A1042"}'},
            }
        ],
    }
    assert tool["role"] == "tool" and tool["tool_call_id"] == "call_1"
    assert json.loads(tool["content"]) == jsonable(toolbox.order_status("A1042"))
    assert memory.facts["order_status"] == toolbox.order_status("A1042").status


def test_the_model_books_through_the_tool(
    llm_server: OpenAIServer, toolbox: DatabaseToolBox, crm_sessions: sessionmaker[Session]
) -> None:
    dana = toolbox.lookup_customer(DANA)
    assert dana is not None
    slot = toolbox.find_slots("oil change", NOW.date() + dt.timedelta(days=1))[0]
    arguments = {
        "customer_id": dana.id,
        "service": "oil change",
        "start": slot.start.isoformat(timespec="minutes"),
    }
    llm_server.script(
        Completion(tool_calls=[ScriptedToolCall("book", json.dumps(arguments), id="call_b")]),
        Completion(text=["You're booked."]),
    )
    memory = ConversationMemory()
    assert dialogue(llm_server, toolbox, memory).respond("book me the first oil change tomorrow").text == (
        "You're booked."
    )
    with crm_sessions() as session:
        starts = session.scalars(
            select(Booking.start)
            .join(Service, Service.id == Booking.service_id)
            .join(Customer, Customer.id == Booking.customer_id)
            .where(Customer.phone == DANA, Service.name == "oil change")
        ).all()
    assert slot.start in starts
    result = json.loads(llm_server.requests[1].body["messages"][-1]["content"])
    assert result["id"] == memory.facts["booking_id"]
    assert result["start"] == slot.start.isoformat()


def test_tool_errors_reach_the_model_as_error_objects(
    llm_server: OpenAIServer, toolbox: DatabaseToolBox
) -> None:
    llm_server.script(
        Completion(
            tool_calls=[
                ScriptedToolCall("order_status", '{"order_number": "Z9999"}', id="missing"),
                ScriptedToolCall("order_status", "{}", id="no_args"),
                ScriptedToolCall("launch_rocket", "{}", id="unknown"),
                ScriptedToolCall("cancel", '{"booking_id": 0}', id="bad_value"),
            ]
        ),
        Completion(text=["Sorry, I couldn't find that order."]),
    )
    reply = dialogue(llm_server, toolbox).respond("where is order z nine nine nine nine")
    assert reply.text == "Sorry, I couldn't find that order."
    results = {
        m["tool_call_id"]: json.loads(m["content"])["error"]
        for m in llm_server.requests[1].body["messages"]
        if m["role"] == "tool"
    }
    assert results["missing"]["type"] == "NotFound"
    assert results["no_args"] == {
        "type": "InvalidRequest",
        "message": "order_status: missing argument(s) order_number",
    }
    assert results["unknown"] == {"type": "InvalidRequest", "message": "unknown tool 'launch_rocket'"}
    assert results["bad_value"]["type"] == "InvalidRequest"


class SlowBusinessTools:
    """Implements only what the test calls: a business_details lookup that hangs until released."""

    def __init__(self) -> None:
        self.release = threading.Event()

    def business_info(self) -> BusinessInfo:
        self.release.wait(5)
        return BusinessInfo("Riverside Auto Care", "221 River Road", "eight to six")


def test_a_tool_slower_than_its_time_limit_is_reported_as_a_timeout(llm_server: OpenAIServer) -> None:
    slow = SlowBusinessTools()
    quick = dataclasses.replace(TOOLS_BY_NAME["business_details"], timeout_s=0.05)
    llm_server.script(
        Completion(tool_calls=[ScriptedToolCall("business_details", "{}", id="t")]),
        Completion(text=["Sorry, I can't look that up right now."]),
    )
    try:
        reply = dialogue(llm_server, slow, definitions=[quick]).respond("where are you")
    finally:
        slow.release.set()
    assert reply.text == "Sorry, I can't look that up right now."
    tool_message = llm_server.requests[1].body["messages"][-1]
    assert json.loads(tool_message["content"])["error"]["type"] == "Timeout"
    assert [t["function"]["name"] for t in llm_server.requests[0].body["tools"]] == ["business_details"]


def test_after_the_last_tool_round_the_model_must_answer_in_words(
    llm_server: OpenAIServer, toolbox: DatabaseToolBox
) -> None:
    call = ScriptedToolCall("business_details", "{}")
    llm_server.script(Completion(tool_calls=[call]), Completion(tool_calls=[call]))
    with pytest.raises(ToolLoopExceeded):
        dialogue(llm_server, toolbox, max_tool_rounds=1).respond("tell me everything")
    assert [r.body["tool_choice"] for r in llm_server.requests] == ["auto", "none"]


def test_a_reply_without_words_is_an_error(llm_server: OpenAIServer, toolbox: DatabaseToolBox) -> None:
    llm_server.script(Completion(text=[]))
    with pytest.raises(EmptyReply):
        dialogue(llm_server, toolbox).respond("hmm")


def test_server_errors_propagate_as_llm_errors(llm_server: OpenAIServer, toolbox: DatabaseToolBox) -> None:
    llm_server.script(HttpError(500, "out of memory", "InternalServerError", 500))
    with pytest.raises(LlmStatusError, match="out of memory"):
        dialogue(llm_server, toolbox).respond("hello")


def test_the_first_clause_is_out_before_the_model_has_written_the_second(
    llm_server: OpenAIServer, toolbox: DatabaseToolBox
) -> None:
    gate = threading.Event()
    llm_server.script(Completion(text=["Sure thing. ", "We close at six ", "on weekdays."], gate=gate))
    clauses = dialogue(llm_server, toolbox).stream_clauses("when do you close")
    # The server holds everything after "Sure thing. " until the gate opens: a client that waited for
    # the whole reply would stall here instead of returning the first clause.
    assert next(clauses) == "Sure thing."
    sent_before_gate = llm_server.requests[0].chunks_sent
    gate.set()
    assert list(clauses) == ["We close at six on weekdays."]
    assert sent_before_gate == 2  # the role chunk and "Sure thing. "

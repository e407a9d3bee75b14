# ruff: noqa: F811  (pytest fixtures imported from llm_fixtures are used as parameters)
"""Routing between the deterministic policy and the model, the fallback and the circuit breaker.

The policy and its tools are real (seeded SQLite CRM); the model is the scripted OpenAI-protocol server.
A twin policy on the same CRM, fed the same turns, says what the policy alone would have answered, so
fallback replies are compared with the policy's own words rather than with copied strings.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest

from agent.dialogue import DialoguePolicy
from agent.llm import DEFAULT_SYSTEM_PROMPT, ChatClient, LlmDialogue
from agent.memory import ConversationMemory
from agent.router import BreakerState, CircuitBreaker, Route, RoutedDialogue
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
from tests.agent.openai_server import Completion, HttpError, OpenAIServer
from tools.toolbox import DatabaseToolBox

OPEN_ENDED = "do you offer a warranty on repairs"


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def state(breaker: CircuitBreaker) -> BreakerState:
    return breaker.state  # a call, so mypy does not keep an earlier narrowing of the property


def route(dialogue: RoutedDialogue) -> Route | None:
    return dialogue.last_route


# --- circuit breaker -------------------------------------------------------------------------------


def test_breaker_opens_after_consecutive_failures_only() -> None:
    breaker = CircuitBreaker(failure_threshold=3, reset_after_s=30.0, clock=FakeClock())
    breaker.record_failure()
    breaker.record_failure()
    breaker.record_success()  # the count is of consecutive failures
    breaker.record_failure()
    breaker.record_failure()
    assert state(breaker) is BreakerState.CLOSED and breaker.allow()
    breaker.record_failure()
    assert state(breaker) is BreakerState.OPEN
    assert not breaker.allow()


def test_breaker_half_opens_after_the_cool_down_and_a_successful_trial_closes_it() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(failure_threshold=1, reset_after_s=30.0, clock=clock)
    breaker.record_failure()
    clock.now += 29.9
    assert not breaker.allow()
    clock.now += 0.1
    assert state(breaker) is BreakerState.HALF_OPEN
    assert breaker.allow()  # the one trial
    assert not breaker.allow()  # nobody else while it is in flight
    breaker.record_success()
    assert state(breaker) is BreakerState.CLOSED
    assert breaker.allow() and breaker.allow()


def test_a_failed_trial_reopens_for_another_cool_down() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(failure_threshold=2, reset_after_s=30.0, clock=clock)
    breaker.record_failure()
    breaker.record_failure()
    clock.now += 30
    assert breaker.allow()
    breaker.record_failure()
    assert state(breaker) is BreakerState.OPEN
    clock.now += 29
    assert not breaker.allow()
    clock.now += 1
    assert breaker.allow()


def test_only_one_thread_gets_the_half_open_trial() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(failure_threshold=1, reset_after_s=1.0, clock=clock)
    breaker.record_failure()
    clock.now += 1
    start = threading.Barrier(8)
    results: list[bool] = []

    def attempt() -> None:
        start.wait()
        results.append(breaker.allow())

    threads = [threading.Thread(target=attempt) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(results) == [False] * 7 + [True]


# --- routing -----------------------------------------------------------------------------------------


def new_policy(toolbox: DatabaseToolBox) -> DialoguePolicy:
    return DialoguePolicy(toolbox, caller_phone=DANA, call_id="call-1", now=lambda: NOW)


@pytest.fixture
def chat(llm_server: OpenAIServer) -> Iterator[ChatClient]:
    with ChatClient(llm_server.base_url, MODEL, first_token_timeout_s=1.0, total_timeout_s=3.0) as client:
        yield client


def routed(
    toolbox: DatabaseToolBox,
    chat: ChatClient,
    breaker: CircuitBreaker | None = None,
    llm_timeout_s: float = 3.0,
) -> RoutedDialogue:
    llm = LlmDialogue(chat, toolbox, system_prompt=DEFAULT_SYSTEM_PROMPT, memory=ConversationMemory())
    return RoutedDialogue(new_policy(toolbox), llm, breaker or CircuitBreaker(), llm_timeout_s=llm_timeout_s)


def memory_of(dialogue: RoutedDialogue) -> ConversationMemory:
    assert dialogue._llm is not None
    return dialogue._llm.memory


def test_domain_turns_go_to_the_policy(
    toolbox: DatabaseToolBox, chat: ChatClient, llm_server: OpenAIServer
) -> None:
    dialogue, twin = routed(toolbox, chat), new_policy(toolbox)
    assert dialogue.greet() == twin.greet()
    for line in (
        "what are your opening hours",
        "do you have wiper blades in stock",
        "can i talk to a person",
    ):
        assert dialogue.respond(line) == twin.respond(line)
        assert route(dialogue) is Route.POLICY
        assert dialogue.last_llm_ms is None
    assert llm_server.requests == []


def test_open_ended_requests_go_to_the_model_with_the_call_so_far(
    toolbox: DatabaseToolBox, chat: ChatClient, llm_server: OpenAIServer
) -> None:
    dialogue = routed(toolbox, chat)
    greeting = dialogue.greet()
    hours = dialogue.respond("what are your opening hours")
    llm_server.script(Completion(text=["Yes, ", "all repairs carry a twelve month warranty."]))
    reply = dialogue.respond(OPEN_ENDED)
    assert reply.text == "Yes, all repairs carry a twelve month warranty."
    assert reply.intent == "llm"
    assert route(dialogue) is Route.LLM
    assert dialogue.last_llm_ms is not None and dialogue.last_llm_ms > 0
    (request,) = llm_server.requests
    messages = request.body["messages"]
    assert "customer_name: Dana Whitfield" in messages[0]["content"]  # the policy's session facts
    assert messages[1:] == [
        {"role": "assistant", "content": greeting.text},
        {"role": "user", "content": "what are your opening hours"},
        {"role": "assistant", "content": hours.text},
        {"role": "user", "content": OPEN_ENDED},
    ]
    assert [t.text for t in memory_of(dialogue).recent][-2:] == [hours.text, OPEN_ENDED]


def test_a_booking_interrupted_by_an_open_question_carries_on_with_the_policy(
    toolbox: DatabaseToolBox, chat: ChatClient, llm_server: OpenAIServer
) -> None:
    dialogue, twin = routed(toolbox, chat), new_policy(toolbox)
    dialogue.greet(), twin.greet()
    assert dialogue.respond("i'd like to book an oil change") == twin.respond(
        "i'd like to book an oil change"
    )
    llm_server.script(Completion(text=["It takes about half an hour."]))
    assert dialogue.respond("can my kids wait in the lobby").intent == "llm"
    # The policy still expects a day for the oil change, and gets it.
    assert dialogue.respond("tomorrow") == twin.respond("tomorrow")
    assert route(dialogue) is Route.POLICY


def test_an_answer_to_the_policys_question_is_the_policys(
    toolbox: DatabaseToolBox, chat: ChatClient, llm_server: OpenAIServer
) -> None:
    """A bare name means nothing out of context; after "Can I have your name?" the policy takes it."""
    stranger = "+15550109999"
    policy = DialoguePolicy(toolbox, caller_phone=stranger, call_id="call-2", now=lambda: NOW)
    twin = DialoguePolicy(toolbox, caller_phone=stranger, call_id="call-3", now=lambda: NOW)
    llm = LlmDialogue(chat, toolbox, system_prompt=DEFAULT_SYSTEM_PROMPT, memory=ConversationMemory())
    dialogue = RoutedDialogue(policy, llm, CircuitBreaker(), llm_timeout_s=3.0)
    assert not policy.understands("priya raman")
    dialogue.greet(), twin.greet()
    asked = dialogue.respond("i'd like an oil change tomorrow at ten")
    assert asked == twin.respond("i'd like an oil change tomorrow at ten")
    assert asked.text.endswith("Can I have your name for the booking, please?")
    assert policy.understands("priya raman")
    assert dialogue.respond("priya raman").text.startswith("Thanks, Priya")
    assert route(dialogue) is Route.POLICY
    assert llm_server.requests == []


@pytest.mark.parametrize(
    "failure",
    [
        HttpError(500, "CUDA out of memory", "InternalServerError", 500),
        Completion(text=["never heard"], first_token_delay_s=2.0),
        Completion(text=["cut ", "off"], drop_after_chunks=2),
    ],
    ids=["http-500", "timeout", "dropped"],
)
def test_a_failing_model_is_answered_by_the_policys_recovery(
    toolbox: DatabaseToolBox,
    chat: ChatClient,
    llm_server: OpenAIServer,
    failure: HttpError | Completion,
) -> None:
    dialogue, twin = routed(toolbox, chat, llm_timeout_s=0.3), new_policy(toolbox)
    dialogue.greet(), twin.greet()
    llm_server.script(failure)
    reply = dialogue.respond(OPEN_ENDED)
    assert reply == twin.respond(OPEN_ENDED)
    assert reply.text.startswith("Sorry, I didn't get that.")
    assert route(dialogue) is Route.FALLBACK
    assert dialogue.last_llm_ms is not None
    assert len(llm_server.requests) == 1


def test_an_open_breaker_skips_the_model_and_a_trial_after_the_cool_down_closes_it(
    toolbox: DatabaseToolBox, chat: ChatClient, llm_server: OpenAIServer
) -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(failure_threshold=3, reset_after_s=30.0, clock=clock)
    dialogue = routed(toolbox, chat, breaker)
    dialogue.greet()
    llm_server.script(*[HttpError(503, "overloaded", "ServiceUnavailableError", 503)] * 3)
    for _ in range(3):
        dialogue.respond(OPEN_ENDED)
        assert route(dialogue) is Route.FALLBACK
    assert state(breaker) is BreakerState.OPEN

    reply = dialogue.respond("what is your refund policy")
    assert route(dialogue) is Route.FALLBACK and dialogue.last_llm_ms is None
    assert reply.text  # the policy answered at once (here: the offer of a person after 3 misses)
    assert len(llm_server.requests) == 3  # the model was not asked

    clock.now += 30
    llm_server.script(Completion(text=["Refunds are given within thirty days."]))
    assert dialogue.respond("what is your refund policy").text == "Refunds are given within thirty days."
    assert route(dialogue) is Route.LLM
    assert state(breaker) is BreakerState.CLOSED


def test_without_a_model_the_router_is_the_policy(toolbox: DatabaseToolBox) -> None:
    dialogue = RoutedDialogue(new_policy(toolbox), None, CircuitBreaker(), llm_timeout_s=1.0)
    twin = new_policy(toolbox)
    assert dialogue.greet() == twin.greet()
    assert dialogue.respond(OPEN_ENDED) == twin.respond(OPEN_ENDED)
    assert dialogue.on_silence(1) == twin.on_silence(1)
    assert dialogue.on_dtmf("0") == twin.on_dtmf("0")
    assert dialogue.facts == twin.facts


class CrashingDialogue(LlmDialogue):
    """A bug on the model path (not an LlmError): the router must still answer."""

    def stream_clauses(self, text: str, *, deadline: float | None = None) -> Iterator[str]:
        raise RuntimeError("bug")


def test_a_bug_on_the_model_path_never_reaches_the_caller(toolbox: DatabaseToolBox, chat: ChatClient) -> None:
    llm = CrashingDialogue(chat, toolbox, system_prompt="", memory=ConversationMemory())
    breaker = CircuitBreaker()
    dialogue = RoutedDialogue(new_policy(toolbox), llm, breaker, llm_timeout_s=1.0)
    dialogue.greet()
    assert dialogue.respond(OPEN_ENDED).text.startswith("Sorry")
    assert route(dialogue) is Route.FALLBACK


def test_a_barge_in_records_only_what_the_caller_heard(
    toolbox: DatabaseToolBox, chat: ChatClient, llm_server: OpenAIServer
) -> None:
    dialogue = routed(toolbox, chat)
    dialogue.greet()
    llm_server.script(
        Completion(text=["Yes, every repair has a twelve month warranty. It covers parts and labour."])
    )
    dialogue.respond(OPEN_ENDED)
    dialogue.heard("Yes, every repair has a twelve")
    dialogue.respond("what are your opening hours")
    texts = [t.text for t in memory_of(dialogue).recent]
    assert texts[-2:] == ["Yes, every repair has a twelve", "what are your opening hours"]


def test_facts_combine_the_policy_and_the_models_tools(
    toolbox: DatabaseToolBox, chat: ChatClient, llm_server: OpenAIServer
) -> None:
    dialogue = routed(toolbox, chat)
    dialogue.greet()
    memory_of(dialogue).set_fact("order_status", "ready for pickup")
    facts = dialogue.facts
    assert facts["customer_name"] == "Dana Whitfield"
    assert facts["order_status"] == "ready for pickup"


# --- streaming the model's reply clause by clause ------------------------------------------------------


def test_stream_hands_over_the_first_clause_before_the_model_has_finished(
    toolbox: DatabaseToolBox, chat: ChatClient, llm_server: OpenAIServer
) -> None:
    gate = threading.Event()
    llm_server.script(
        Completion(
            text=("Yes, every repair carries a twelve month warranty. ", "Parts and labour both."), gate=gate
        )
    )
    dialogue = routed(toolbox, chat)
    dialogue.greet()
    assert dialogue.stream("what are your opening hours") is None  # the policy's turn
    clauses = dialogue.stream(OPEN_ENDED)
    assert clauses is not None
    assert next(clauses) == "Yes, every repair carries a twelve month warranty."  # the rest is held back
    gate.set()
    assert list(clauses) == ["Parts and labour both."]
    assert route(dialogue) is Route.LLM and dialogue.last_reply is not None
    assert dialogue.last_reply.intent == "llm"
    assert dialogue.last_llm_ms is not None and dialogue.last_llm_ms > 0


def test_stream_falls_back_to_the_policy_when_the_model_fails_before_a_word(
    toolbox: DatabaseToolBox, chat: ChatClient, llm_server: OpenAIServer
) -> None:
    llm_server.script(HttpError(500, "engine overloaded", type="InternalServerError"))
    dialogue, twin = routed(toolbox, chat), new_policy(toolbox)
    dialogue.greet(), twin.greet()
    clauses = dialogue.stream(OPEN_ENDED)
    assert clauses is not None
    assert list(clauses) == [twin.respond(OPEN_ENDED).text]
    assert route(dialogue) is Route.FALLBACK


def test_stream_apologises_when_the_model_drops_mid_reply(
    toolbox: DatabaseToolBox, chat: ChatClient, llm_server: OpenAIServer
) -> None:
    llm_server.script(
        Completion(text=("We do offer a warranty. ", "It covers ", "parts"), drop_after_chunks=3)
    )
    dialogue = routed(toolbox, chat)
    dialogue.greet()
    clauses = dialogue.stream(OPEN_ENDED)
    assert clauses is not None
    said = list(clauses)
    assert said[0] == "We do offer a warranty." and said[-1].startswith("Sorry, I lost my train of thought")
    assert route(dialogue) is Route.FALLBACK


def test_a_stream_cut_by_barge_in_is_remembered_as_far_as_it_went(
    toolbox: DatabaseToolBox, chat: ChatClient, llm_server: OpenAIServer
) -> None:
    llm_server.script(Completion(text=("We do offer a warranty. ", "It covers parts and labour for a year.")))
    dialogue = routed(toolbox, chat)
    dialogue.greet()
    clauses = dialogue.stream(OPEN_ENDED)
    assert clauses is not None
    assert next(clauses) == "We do offer a warranty."
    clauses.close()  # what the session does when the caller talks over the reply
    dialogue.heard("We do offer a ...")
    dialogue.respond("what are your opening hours")
    recent = [turn.text for turn in memory_of(dialogue).recent]
    assert "We do offer a ..." in recent and OPEN_ENDED in recent

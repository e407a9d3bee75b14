"""Conversation memory: what the model is told stays bounded however long the call, and keeps the facts."""

from __future__ import annotations

import itertools

from agent.memory import ConversationMemory

SYSTEM = "You are the receptionist of a garage."

CALLER = (
    "um how much would a brake inspection cost",
    "yes",
    "what about on saturday morning i work during the week",
    "okay thanks",
    "is the warranty on the brake pads transferable if i sell the car next year",
    "and could you also look at a rattling noise from the back when i go over bumps",
)
AGENT = (
    "A brake inspection takes about 45 minutes and costs $79. Would you like to book one?",
    "Sure. What day would you like to come in?",
    "On Saturday I can do nine AM or ten AM. What time works for you?",
    "Our parts warranty covers the car, not the owner, so it stays with the car. Anything else?",
)


def context_chars(memory: ConversationMemory) -> int:
    return sum(len(m["content"]) for m in memory.context_messages(SYSTEM))


def test_recent_turns_are_kept_verbatim_and_older_ones_fold_into_the_summary() -> None:
    memory = ConversationMemory(recent_turns=3)
    memory.add_agent("Hi, thanks for calling. How can I help you today?")
    memory.add_caller("I'd like to book a brake inspection.")
    memory.add_agent("Sure. What day would you like to come in?")
    memory.add_caller("yes")
    memory.add_agent("What day would you like?")
    memory.add_caller("Saturday morning please.")
    memory.add_agent("On Saturday I can do nine AM or ten AM. What time works for you?")

    messages = memory.context_messages(SYSTEM)
    assert [m["role"] for m in messages] == ["system", "assistant", "user", "assistant"]
    assert messages[-1]["content"] == "On Saturday I can do nine AM or ten AM. What time works for you?"
    assert messages[2]["content"] == "Saturday morning please."
    summary = memory.summary
    # The opening request is pinned, agent turns keep their first sentence, a bare "yes" is dropped.
    assert "caller: I'd like to book a brake inspection." in summary
    assert "agent: Hi, thanks for calling." in summary
    assert "How can I help you today?" not in summary
    assert "agent: Sure." in summary
    assert "caller: yes" not in summary
    system = messages[0]["content"]
    assert system.startswith(SYSTEM) and summary in system


def test_slot_values_the_caller_says_become_facts() -> None:
    memory = ConversationMemory()
    memory.add_caller("hi this is priya raman")
    memory.add_caller("i'm calling about order b as in bravo two zero seven seven")
    memory.add_caller("and i need an oil change")
    assert memory.facts == {"caller_name": "Priya Raman", "order_number": "B2077", "service": "oil change"}
    assert "- caller_name: Priya Raman" in memory.context_messages(SYSTEM)[0]["content"]


def test_one_system_message_and_alternating_roles() -> None:
    memory = ConversationMemory()
    memory.add_agent("Are you still there? How can I help you?")
    memory.add_agent("Sorry, I can't hear anything. How can I help you?")
    memory.add_caller("sorry i was driving")
    memory.add_caller("what time do you close")
    messages = memory.context_messages(SYSTEM)
    assert [m["role"] for m in messages] == ["system", "assistant", "user"]
    assert messages[2]["content"] == "sorry i was driving what time do you close"


def test_only_what_was_heard_is_recorded_and_blank_turns_are_ignored() -> None:
    memory = ConversationMemory()
    memory.add_agent("   ")
    memory.add_caller("")
    memory.add_agent("We have two openings")  # the caller barged in after these words
    assert [t.text for t in memory.recent] == ["We have two openings"]


def test_a_huge_utterance_is_clipped() -> None:
    memory = ConversationMemory(max_turn_chars=200)
    memory.add_caller("blah " * 10_000)
    (turn,) = memory.recent
    assert len(turn.text) <= 200
    assert context_chars(memory) <= memory.max_context_chars(SYSTEM)


def test_facts_are_bounded_in_number_and_length() -> None:
    memory = ConversationMemory(max_facts=3, max_fact_chars=20)
    memory.update_facts({"customer_name": "Dana Whitfield", "booking_id": 7, "service": "oil change"})
    memory.set_fact("note", "x" * 500)
    assert list(memory.facts) == ["booking_id", "service", "note"]  # the oldest made room
    assert len(str(memory.facts["note"])) <= 20
    memory.set_fact("booking_id", 8)  # an update is not a new slot
    assert memory.facts["booking_id"] == 8 and len(memory.facts) == 3


def test_a_thousand_turn_call_stays_bounded_and_keeps_its_facts() -> None:
    memory = ConversationMemory(recent_turns=6, max_summary_chars=600)
    memory.update_facts({"customer_id": 1, "customer_name": "Dana Whitfield"})
    memory.add_caller("my name is dana whitfield and i want to book a full service")
    memory.update_facts({"booking_id": 42, "date": "2026-11-24", "time": "10:00"})
    bound = memory.max_context_chars(SYSTEM)
    sizes = []
    callers, agents = itertools.cycle(CALLER), itertools.cycle(AGENT)
    for turn in range(1000):
        memory.add_agent(f"{next(agents)} (reply {turn})")
        memory.add_caller(f"{next(callers)} number {turn}")
        sizes.append(context_chars(memory))
    assert memory.turn_count == 2001
    assert max(sizes) <= bound
    assert max(sizes[100:]) <= max(sizes[:100]) + 50  # no growth with length, only turn-text jitter
    assert len(memory.summary) <= 600
    assert len(memory.context_messages(SYSTEM)) <= 1 + 6
    facts = memory.facts
    assert facts["customer_name"] == "Dana Whitfield"
    assert facts["booking_id"] == 42 and facts["time"] == "10:00"
    assert facts["caller_name"] == "Dana Whitfield"
    system = memory.context_messages(SYSTEM)[0]["content"]
    assert "booking_id: 42" in system
    assert "caller: my name is dana whitfield and i want to book a full service" in system  # pinned
    assert "number 999" in memory.context_messages(SYSTEM)[-1]["content"]

"""What the language model is told about the call so far, in a size that does not grow with the call.

A phone call can run for an hour; resending every turn would make each request slower and, past the
model's context window, fail. So the context is built from three bounded parts:

- session facts: structured slots (the caller's name, the service, the day and time, order number,
  booking id...), set by the deterministic policy, by the tools the model ran and by light extraction
  from what the caller said. These are what a long call must never forget, so they are kept whole.
- working memory: the last few turns verbatim (each clipped), because the model needs the exact words
  to resolve "that one" or "the second".
- an extractive summary of older turns: the first sentence of each, low-information acknowledgements
  ("yes", "okay", "thanks") left out, the opening request pinned and the oldest of the rest dropped
  when the summary outgrows its budget. Extractive on purpose: it costs nothing, invents nothing and
  needs no second model call.

Agent turns are recorded as the caller heard them: after a barge-in only the part that played.
"""

from __future__ import annotations

import collections
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final, Literal

from agent import nlu

Role = Literal["caller", "agent"]
FactValue = str | int

MAX_FACT_KEY_CHARS: Final = 32
_SUMMARY_HEADER: Final = "Earlier in this call (oldest first):"
_FACTS_HEADER: Final = "Known facts about this call:"
_ACKNOWLEDGEMENTS = frozenset({nlu.Intent.AFFIRM, nlu.Intent.DENY, nlu.Intent.THANKS, nlu.Intent.GREETING})
_SENTENCE_END = re.compile(r"(?<=[.!?])\s")


@dataclass(frozen=True, slots=True)
class Turn:
    role: Role
    text: str


def _clip(text: str, limit: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: max(0, limit - 1)].rstrip() + "…"


class ConversationMemory:
    """Working memory, session facts and a bounded summary of one call. Not thread-safe: one call's
    turns are sequential."""

    def __init__(
        self,
        recent_turns: int = 6,
        max_summary_chars: int = 600,
        *,
        max_turn_chars: int = 500,
        max_facts: int = 24,
        max_fact_chars: int = 80,
    ) -> None:
        if recent_turns < 1 or max_summary_chars < 40:
            raise ValueError("memory needs at least one recent turn and a 40-character summary")
        self.recent_turns = recent_turns
        self.max_summary_chars = max_summary_chars
        self.max_turn_chars = max_turn_chars
        self.max_facts = max_facts
        self.max_fact_chars = max_fact_chars
        self._recent: collections.deque[Turn] = collections.deque()
        self._opening: str | None = None  # the caller's first request, pinned in the summary
        self._snippets: collections.deque[str] = collections.deque()
        self._facts: dict[str, FactValue] = {}
        self.turn_count = 0

    # --- recording ------------------------------------------------------------------------------

    def add_caller(self, text: str) -> None:
        """What the caller said (the recogniser's transcript); slot values in it become facts."""
        text = _clip(text, self.max_turn_chars)  # before parsing too: bounded work per turn
        if not text:
            return
        self._add(Turn("caller", text))
        name = nlu.parse_name(text)
        if name:
            self.set_fact("caller_name", name)
        order_number = nlu.parse_order_number(text)
        if order_number:
            self.set_fact("order_number", order_number)
        service = nlu.parse_service(text)
        if service:
            self.set_fact("service", service)

    def add_agent(self, text_heard: str) -> None:
        """What the caller actually heard of our reply: all of it, or the part before a barge-in."""
        text = " ".join(text_heard.split())
        if text:
            self._add(Turn("agent", _clip(text, self.max_turn_chars)))

    def set_fact(self, key: str, value: FactValue) -> None:
        key = key[:MAX_FACT_KEY_CHARS]
        if isinstance(value, str):
            value = _clip(value, self.max_fact_chars)
        if key not in self._facts and len(self._facts) >= self.max_facts:
            del self._facts[next(iter(self._facts))]  # the oldest slot makes room
        self._facts[key] = value

    def update_facts(self, facts: Mapping[str, FactValue]) -> None:
        for key, value in facts.items():
            self.set_fact(key, value)

    # --- reading --------------------------------------------------------------------------------

    @property
    def facts(self) -> dict[str, FactValue]:
        return dict(self._facts)

    @property
    def recent(self) -> tuple[Turn, ...]:
        return tuple(self._recent)

    @property
    def summary(self) -> str:
        lines = ([self._opening] if self._opening else []) + list(self._snippets)
        if not lines:
            return ""
        return "\n".join([_SUMMARY_HEADER, *(f"- {line}" for line in lines)])

    def context_messages(self, system_prompt: str) -> list[dict[str, str]]:
        """OpenAI chat messages: one system message (prompt, facts, summary), then the recent turns.

        One system message, not three: several chat templates (Mistral's, for one) reject a system
        message anywhere but first. Consecutive turns of one role are merged for the same reason
        (two reprompts in a row would otherwise break user/assistant alternation)."""
        parts = [system_prompt.strip()]
        if self._facts:
            parts.append(_FACTS_HEADER + "\n" + "\n".join(f"- {k}: {v}" for k, v in self._facts.items()))
        if summary := self.summary:
            parts.append(summary)
        messages: list[dict[str, str]] = [{"role": "system", "content": "\n\n".join(p for p in parts if p)}]
        for turn in self._recent:
            role = "user" if turn.role == "caller" else "assistant"
            if messages[-1]["role"] == role:
                messages[-1] = {"role": role, "content": f"{messages[-1]['content']} {turn.text}"}
            else:
                messages.append({"role": role, "content": turn.text})
        return messages

    def max_context_chars(self, system_prompt: str) -> int:
        """An upper bound on the characters `context_messages` can hold, whatever the call's length."""
        facts = len(_FACTS_HEADER) + self.max_facts * (MAX_FACT_KEY_CHARS + self.max_fact_chars + 6)
        turns = self.recent_turns * (self.max_turn_chars + 1)
        return len(system_prompt) + facts + self.max_summary_chars + turns + 4

    # --- folding ----------------------------------------------------------------------------------

    def _add(self, turn: Turn) -> None:
        self.turn_count += 1
        self._recent.append(turn)
        while len(self._recent) > self.recent_turns:
            self._fold(self._recent.popleft())

    def _fold(self, turn: Turn) -> None:
        """Move a turn out of working memory into the summary, keeping the summary within budget."""
        if turn.role == "caller":
            words = nlu.normalise(turn.text).split()
            if len(words) <= 3 and nlu.classify_intent(turn.text) in _ACKNOWLEDGEMENTS:
                return  # "yes" without the question means nothing; the facts hold what it settled
        first_sentence = _SENTENCE_END.split(turn.text, maxsplit=1)[0]
        snippet = f"{turn.role}: {_clip(first_sentence, self.max_summary_chars // 4)}"
        if turn.role == "caller" and self._opening is None:
            self._opening = snippet
            return
        if snippet == self._opening or (self._snippets and self._snippets[-1] == snippet):
            return
        self._snippets.append(snippet)
        while self._snippets and len(self.summary) > self.max_summary_chars:
            self._snippets.popleft()
        if len(self.summary) > self.max_summary_chars and self._opening is not None:
            self._opening = _clip(self._opening, self.max_summary_chars - len(_SUMMARY_HEADER) - 4)

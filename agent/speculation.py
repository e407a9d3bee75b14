"""Speculative replies: work out what the agent would say to a stable partial transcript before the
caller's turn has officially ended, so the reply can start the moment it does.

The dialogue policy is stateful (it remembers what it asked, the booking being drafted...), and a reply
may write to the CRM. A speculation therefore runs on a copy of the policy whose toolbox only reads: the
first write (booking, cancelling, creating a customer) aborts the speculation, and the turn is answered the
ordinary way once the caller has finished. If the caller goes on talking, the copy is simply dropped; if
the final transcript matches, the copy's state becomes the policy's state (`adopt`).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Final, Protocol, cast

from agent.booking_flow import AgentReply
from tools.api import ToolBox

__all__ = ["ReadOnlyTools", "Speculation", "WouldWrite", "adopt", "speculate"]

# ToolBox methods that change the CRM; everything else only reads.
WRITE_METHODS: Final = frozenset({"create_customer", "book", "cancel_booking", "reschedule"})


class WouldWrite(BaseException):
    """Raised by `ReadOnlyTools` on a write.

    A BaseException on purpose: the policy turns every `Exception` from a turn into a spoken apology, and
    a speculation that reaches a write must stop right there instead, whatever handlers lie in between.
    """


class ReadOnlyTools:
    """A toolbox that passes reads through and refuses writes (for speculative turns)."""

    def __init__(self, tools: ToolBox) -> None:
        self._tools = tools

    def __getattr__(self, name: str) -> Any:
        if name in WRITE_METHODS:
            raise WouldWrite(name)
        return getattr(self._tools, name)


class SpeculativePolicy(Protocol):
    """What a dialogue needs to be speculated on: a per-turn `respond` and its tools in `_tools`."""

    def respond(self, text: str) -> AgentReply: ...


@dataclass(slots=True)
class Speculation:
    text: str  # the transcript the reply was prepared for
    reply: AgentReply
    state: object  # the policy copy that produced it


_KEEP: Final = frozenset({"_tools", "_now"})


def speculate(policy: object, text: str) -> Speculation | None:
    """The reply `policy` would give to `text`, computed on a read-only copy; None if it would write."""
    tools = getattr(policy, "_tools", None)
    if tools is None:
        return None
    memo: dict[int, Any] = {id(tools): ReadOnlyTools(cast(ToolBox, tools))}
    for name in _KEEP - {"_tools"}:
        shared = getattr(policy, name, None)
        if shared is not None:
            memo[id(shared)] = shared
    clone = copy.deepcopy(policy, memo)
    try:
        reply = cast(SpeculativePolicy, clone).respond(text)
    except WouldWrite:
        return None
    return Speculation(text=text, reply=reply, state=clone)


def adopt(policy: object, speculation: Speculation) -> None:
    """Make the speculative copy's conversation state the policy's own (its tools stay the real ones)."""
    state = {k: v for k, v in vars(speculation.state).items() if k not in _KEEP}
    vars(policy).update(state)

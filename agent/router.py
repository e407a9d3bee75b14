"""Which path answers a turn: the deterministic policy or the language model, and what happens when the
model fails.

The policy is exact and fast for what it knows (bookings, orders, stock, hours, the answers to its own
questions), so it keeps those turns; the model takes only the open-ended requests the policy has no
rule for. Whatever goes wrong on the model's side (an `LlmError`, a timeout, an open circuit breaker)
the caller hears the policy's own recovery for the turn instead, at once: no dead air and never an
exception into the call session.

The breaker is meant to be shared by every call of a process: when the model server is down, the
second and later calls should not each wait out its timeouts.
"""

from __future__ import annotations

import enum
import logging
import threading
import time
from collections.abc import Callable, Generator

from agent.dialogue import AgentReply, DialoguePolicy
from agent.llm import LlmDialogue, LlmError
from agent.speculation import Speculation, adopt, speculate

log = logging.getLogger(__name__)


class BreakerState(enum.Enum):
    CLOSED = "closed"  # requests go through; consecutive failures are counted
    OPEN = "open"  # requests are refused at once until the cool-down has passed
    HALF_OPEN = "half_open"  # one trial request is in flight; its outcome closes or reopens


class CircuitBreaker:
    """closed -> open after `failure_threshold` consecutive failures; open refuses for `reset_after_s`;
    then half-open lets exactly one trial through: success closes, failure reopens for another
    cool-down. Thread-safe (calls run their turns in worker threads); the clock is injected."""

    def __init__(
        self,
        failure_threshold: int = 3,
        reset_after_s: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if failure_threshold < 1:
            raise ValueError("failure_threshold must be at least 1")
        self.failure_threshold = failure_threshold
        self.reset_after_s = reset_after_s
        self._clock = clock
        self._lock = threading.Lock()
        self._state = BreakerState.CLOSED
        self._failures = 0
        self._opened_at = 0.0

    @property
    def state(self) -> BreakerState:
        with self._lock:
            if self._state is BreakerState.OPEN and self._cooled_down():
                return BreakerState.HALF_OPEN  # the next allow() is the trial
            return self._state

    def allow(self) -> bool:
        """May a request go to the model now? In half-open, True exactly once until it is reported."""
        with self._lock:
            if self._state is BreakerState.CLOSED:
                return True
            if self._state is BreakerState.OPEN and self._cooled_down():
                self._state = BreakerState.HALF_OPEN
                return True
            return False  # open and cooling down, or the half-open trial is still in flight

    def record_success(self) -> None:
        with self._lock:
            self._state = BreakerState.CLOSED
            self._failures = 0

    def record_failure(self) -> None:
        with self._lock:
            self._failures += 1
            if self._state is BreakerState.HALF_OPEN or self._failures >= self.failure_threshold:
                if self._state is not BreakerState.OPEN:
                    log.warning("circuit breaker opens after %d failure(s)", self._failures)
                self._state = BreakerState.OPEN
                self._opened_at = self._clock()

    def _cooled_down(self) -> bool:
        return self._clock() - self._opened_at >= self.reset_after_s


class Route(enum.StrEnum):
    POLICY = "policy"  # the policy understood the turn
    LLM = "llm"  # the model answered
    FALLBACK = "fallback"  # the model was asked for (or would have been) but the policy answered


class RoutedDialogue:
    """The call's dialogue with the same public API as `DialoguePolicy`, routing each caller turn.

    Every turn, whichever path answers it, is recorded in the model's memory, together with the
    policy's session facts, so the model sees the whole conversation. A reply is recorded as heard in
    full unless the session reports, through `heard`, that the caller barged in part-way."""

    def __init__(
        self,
        policy: DialoguePolicy,
        llm: LlmDialogue | None,
        breaker: CircuitBreaker,
        *,
        llm_timeout_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._policy = policy
        self._llm = llm
        self._breaker = breaker
        self._llm_timeout_s = llm_timeout_s
        self._clock = clock
        self._unheard: str | None = None  # the last reply, until the next turn confirms what was heard
        self.last_route: Route | None = None
        self.last_llm_ms: float | None = None  # time the model took on the last turn; None if not asked
        self.last_reply: AgentReply | None = None

    @property
    def facts(self) -> dict[str, str | int]:
        """The policy's slots plus what the model's tools settled, for telemetry."""
        memory = self._llm.memory.facts if self._llm is not None else {}
        return {**memory, **self._policy.facts}

    def greet(self) -> AgentReply:
        self._commit_heard()
        return self._said(self._policy.greet(), Route.POLICY)

    def respond(self, text: str) -> AgentReply:
        self._commit_heard()
        if self._llm is None or self._policy.understands(text):
            reply, route = self._policy.respond(text), Route.POLICY
        else:
            reply, route = self._ask_model(self._llm, text)
        if self._llm is not None:
            self._llm.memory.add_caller(text)
        return self._said(reply, route)

    def on_silence(self, count: int) -> AgentReply:
        self._commit_heard()
        return self._said(self._policy.on_silence(count), Route.POLICY)

    def on_dtmf(self, digit: str) -> AgentReply:
        self._commit_heard()
        return self._said(self._policy.on_dtmf(digit), Route.POLICY)

    def stream(self, text: str) -> Generator[str, None, None] | None:
        """The model's reply to `text` clause by clause as it is generated, for turns the model takes (so
        the first clause can be spoken while the rest is written); None for turns the policy keeps or
        while the breaker is open -- then `respond` answers. Never raises: a failure before the first
        clause yields the policy's recovery instead, a failure after it a short apology."""
        if self._llm is None or self._policy.understands(text) or not self._breaker.allow():
            return None
        return self._stream_model(self._llm, text)

    def _stream_model(self, llm: LlmDialogue, text: str) -> Generator[str, None, None]:
        self._commit_heard()
        started = self._clock()
        said: list[str] = []
        failed = True
        try:
            llm.memory.update_facts(self._policy.facts)
            for clause in llm.stream_clauses(text, deadline=started + self._llm_timeout_s):
                said.append(clause)
                yield clause
            failed = False
        except GeneratorExit:  # the caller barged in: the session stopped asking for clauses
            self._breaker.record_success()
            llm.memory.add_caller(text)
            self._said(AgentReply(" ".join(said), intent="llm"), Route.LLM)
            raise
        except LlmError as exc:
            log.warning("model failed mid-reply, the policy answers: %r", exc)
        except Exception:  # a bug on the model path must not take the call down either
            log.exception("model path crashed, the policy answers")
        finally:
            self.last_llm_ms = (self._clock() - started) * 1000
        if failed:
            self._breaker.record_failure()
            if said:
                apology = "Sorry, I lost my train of thought there. Could you say that again?"
                said.append(apology)
                yield apology
                reply, route = AgentReply(" ".join(said), intent="llm"), Route.FALLBACK
            else:
                reply, route = self._policy.respond(text), Route.FALLBACK
                yield reply.text
        else:
            self._breaker.record_success()
            reply, route = AgentReply(" ".join(said), intent="llm"), Route.LLM
        llm.memory.add_caller(text)
        self._said(reply, route)

    def speculate(self, text: str) -> Speculation | None:
        """A reply to `text` prepared ahead (see agent.speculation), only for turns the policy keeps: the
        model's turns are not worth guessing at (slow, costly, and its tools may write)."""
        if self._llm is not None and not self._policy.understands(text):
            return None
        return speculate(self._policy, text)

    def adopt(self, speculation: Speculation) -> AgentReply:
        """The caller said what was speculated on: make that turn happen, as `respond` would have."""
        self._commit_heard()
        adopt(self._policy, speculation)
        if self._llm is not None:
            self._llm.memory.add_caller(speculation.text)
        return self._said(speculation.reply, Route.POLICY)

    def heard(self, text_heard: str) -> None:
        """The caller interrupted the last reply: only `text_heard` of it was played."""
        if self._unheard is not None:
            self._unheard = text_heard

    # --- internals --------------------------------------------------------------------------------

    def _ask_model(self, llm: LlmDialogue, text: str) -> tuple[AgentReply, Route]:
        if not self._breaker.allow():
            log.info("model skipped: circuit breaker is %s", self._breaker.state.value)
            return self._policy.respond(text), Route.FALLBACK
        started = self._clock()
        try:  # from here on the breaker must hear the outcome, or a half-open trial never ends
            llm.memory.update_facts(self._policy.facts)
            reply = llm.respond(text, deadline=started + self._llm_timeout_s)
        except LlmError as exc:
            log.warning("model failed, the policy answers: %r", exc)
            failed = True
        except Exception:  # a bug on the model path must not take the call down either
            log.exception("model path crashed, the policy answers")
            failed = True
        else:
            failed = False
        finally:
            self.last_llm_ms = (self._clock() - started) * 1000
        if failed:
            self._breaker.record_failure()
            return self._policy.respond(text), Route.FALLBACK
        self._breaker.record_success()
        return reply, Route.LLM

    def _said(self, reply: AgentReply, route: Route) -> AgentReply:
        self.last_route = route
        self.last_reply = reply
        self._unheard = reply.text
        return reply

    def _commit_heard(self) -> None:
        """A new turn starts: the previous reply goes into memory as the caller heard it."""
        self.last_llm_ms = None
        if self._llm is not None and self._unheard is not None:
            self._llm.memory.add_agent(self._unheard)
        self._unheard = None

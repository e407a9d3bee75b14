"""RFC 4028 session timers, sans-IO: the Session-Expires / Min-SE negotiation and each dialog's deadline.

The negotiation is pure functions over messages. `negotiate_as_uas` reads an INVITE we answer (initial or
re-INVITE: every re-INVITE is a session refresh, section 9) and says what our 2xx carries, or that the
interval is too small (422 with our Min-SE). `offer_headers` is what our own INVITEs carry and
`read_answer` reads the 2xx to one of them (section 7.2).

`SessionTimers` keeps one deadline per dialog and is driven by the user agent's clock like the transaction
layer: `tick(now)` says when we must refresh (at half the interval, section 10) and when a session the peer
should have refreshed has run out. The non-refresher gives up "slightly before the session expiration",
interval - min(32, interval / 3) seconds after the last refresh (section 10), so that its BYE still finds
the session up. `after_refused_refresh` and `refresh_retry_at` say what a refused refresh of ours leads to.

A refresh is a re-INVITE or an UPDATE (RFC 3311); everything here reads both the same way.

"uac" and "uas" in the refresher parameter always name the client or server of the transaction that
carries the header (section 4): in our own refresh re-INVITE we are the uac, even on a call we answered.
"""

from __future__ import annotations

import heapq
import itertools
from dataclasses import dataclass, field
from typing import Literal

from telephony.sip.dialog import DialogId
from telephony.sip.errors import SipParseError
from telephony.sip.message import SipRequest, SipResponse

__all__ = [
    "MIN_SE_FLOOR",
    "REFRESH_RETRY_MARGIN_S",
    "TIMER_OPTION",
    "IntervalTooSmall",
    "RefreshDue",
    "SessionAgreement",
    "SessionExpired",
    "SessionExpires",
    "SessionTimerConfig",
    "SessionTimerEvent",
    "SessionTimers",
    "after_refused_refresh",
    "expiry_margin",
    "negotiate_as_uas",
    "offer_headers",
    "parse_min_se",
    "read_answer",
    "refresh_retry_at",
    "response_headers",
    "supports_timer",
]

Refresher = Literal["uac", "uas"]
RefusedRefresh = Literal["end", "reinvite", "glare", "later"]

TIMER_OPTION = "timer"  # the option tag in Supported / Require (section 13)
MIN_SE_FLOOR = 90  # sections 4 and 5: no Min-SE below this on the wire; settings enforce it, tests go lower
_MAX_DELTA_SECONDS = 2**32 - 1  # RFC 3261 delta-seconds
REFRESH_RETRY_MARGIN_S = 2.0  # a refused refresh is tried again only while this much of the session is left


@dataclass(frozen=True, slots=True)
class SessionTimerConfig:
    """What we ask for (`interval`) and the shortest interval we accept (`min_se`), in seconds."""

    interval: int = 1800
    min_se: int = MIN_SE_FLOOR

    def __post_init__(self) -> None:
        if self.min_se < 1 or self.interval < self.min_se:
            raise ValueError(f"session interval {self.interval} s must be >= Min-SE {self.min_se} s >= 1")


def _delta_seconds(text: str, what: str) -> int:
    text = text.strip()
    if not text.isdigit() or int(text) > _MAX_DELTA_SECONDS:
        raise SipParseError(400, f"Bad {what}")
    return int(text)


@dataclass(frozen=True, slots=True)
class SessionExpires:
    """A Session-Expires value: `1800;refresher=uac` (section 4; compact form `x`)."""

    interval: int
    refresher: Refresher | None = None

    @classmethod
    def parse(cls, value: str) -> SessionExpires:
        number, *params = value.split(";")
        interval = _delta_seconds(number, "Session-Expires")
        if interval == 0:
            raise SipParseError(400, "Bad Session-Expires")
        refresher: Refresher | None = None
        for param in params:
            name, _, param_value = param.partition("=")
            if name.strip().lower() != "refresher":
                continue  # generic parameters are allowed and mean nothing to us
            lowered = param_value.strip().lower()
            if lowered == "uac":
                refresher = "uac"
            elif lowered == "uas":
                refresher = "uas"
            else:
                raise SipParseError(400, "Bad Session-Expires refresher")
        return cls(interval, refresher)

    def __str__(self) -> str:
        return str(self.interval) if self.refresher is None else f"{self.interval};refresher={self.refresher}"


def parse_min_se(value: str) -> int:
    """A Min-SE value: delta-seconds, then generic parameters (section 5)."""
    return _delta_seconds(value.split(";", 1)[0], "Min-SE")


def supports_timer(message: SipRequest | SipResponse) -> bool:
    """Whether the sender lists the extension in Supported (or already requires it)."""
    tags = [*message.headers.get_all("Supported"), *message.headers.get_all("Require")]
    return any(tag.lower() == TIMER_OPTION for tag in tags)


@dataclass(frozen=True, slots=True)
class SessionAgreement:
    """What a 2xx settled for the session: its interval and which of the two ends refreshes it."""

    interval: int
    we_refresh: bool
    # Whether the peer knows the extension. A peer that does not cannot refresh, so we do; its 2xx to our
    # refreshes then carry no Session-Expires, which must not switch our timer off (see read_answer).
    peer_supports: bool
    # The Min-SE our refreshes carry: the largest we required or were told of in this dialog (section 7.4).
    min_se: int


@dataclass(frozen=True, slots=True)
class IntervalTooSmall:
    """Refuse the INVITE with 422 carrying our Min-SE (section 6)."""

    min_se: int

    @property
    def headers(self) -> list[tuple[str, str]]:
        return [("Min-SE", str(self.min_se))]


def negotiate_as_uas(request: SipRequest, config: SessionTimerConfig) -> SessionAgreement | IntervalTooSmall:
    """Section 9: the session interval and refresher our 2xx to this INVITE carries, or a 422.

    SipParseError(400) for a malformed Session-Expires or Min-SE.
    """
    supported = supports_timer(request)
    min_se_value = request.headers.get("Min-SE")
    peer_min = parse_min_se(min_se_value) if min_se_value is not None else 0
    floor = max(config.min_se, peer_min)
    se_value = request.headers.get("Session-Expires")
    asked = SessionExpires.parse(se_value) if se_value is not None else None
    if asked is None:
        interval = max(config.interval, peer_min)  # we may ask for a timer the UAC did not (section 9)
    elif asked.interval < config.min_se:
        if supported:
            return IntervalTooSmall(floor)
        # A UAC that does not know the extension cannot act on a 422 (a proxy put the header in): raise the
        # interval instead of failing the call (RFC 4028 erratum 1687, as section 8.1 says for proxies).
        interval = floor
    else:
        # We may lower the interval to what we want, never below a Min-SE, and never raise it.
        interval = min(asked.interval, max(config.interval, peer_min))
    refresher: Refresher
    if not supported:
        refresher = "uas"  # the UAC would not know it was meant to refresh
    elif asked is not None and asked.refresher is not None:
        refresher = asked.refresher
    else:
        # Our choice (section 9 leaves it to us): the UAC that offers the extension refreshes; we still
        # notice a dead peer, by its refreshes stopping.
        refresher = "uac"
    return SessionAgreement(interval, refresher == "uas", supported, floor)


def response_headers(agreement: SessionAgreement) -> list[tuple[str, str]]:
    """Session-Expires (with refresher, always, section 9) for our 2xx; Require: timer when the UAC
    understands it, which it must when it is the refresher."""
    refresher: Refresher = "uas" if agreement.we_refresh else "uac"
    headers = [("Session-Expires", str(SessionExpires(agreement.interval, refresher)))]
    if agreement.peer_supports:
        headers.append(("Require", TIMER_OPTION))
    return headers


def offer_headers(interval: int, min_se: int, refresher: Refresher | None = None) -> list[tuple[str, str]]:
    """What our INVITEs carry (section 7.1). The initial one names no refresher, leaving the choice to the
    UAS as section 7.1 recommends; a refresh names whoever refreshes now, keeping the role (section 7.4)."""
    return [
        ("Supported", TIMER_OPTION),
        ("Session-Expires", str(SessionExpires(interval, refresher))),
        ("Min-SE", str(min_se)),
    ]


def read_answer(
    response: SipResponse, *, min_se: int, previous: SessionAgreement | None = None
) -> SessionAgreement | None:
    """Section 7.2: the session a 2xx to our INVITE settles; None: no session timer.

    A 2xx without Session-Expires turns the timer off, unless the peer never supported the extension and
    we refreshed on our own (the 2xx of such a peer never carries it). SipParseError for a bad value.
    """
    value = response.headers.get("Session-Expires")
    if value is None:
        if previous is not None and not previous.peer_supports:
            return previous
        return None
    answered = SessionExpires.parse(value)
    # The UAS must name the refresher; if it did not, we refresh: a session kept up by an extra re-INVITE
    # beats one ended for want of one.
    we_refresh = answered.refresher != "uas"
    return SessionAgreement(answered.interval, we_refresh, True, min_se)


def after_refused_refresh(status: int, method: str) -> RefusedRefresh:
    """What a final non-2xx to our refresh (`method` INVITE or UPDATE) leads to; 408 and 503 also stand for
    no answer at all and for a transport failure.

    "end": the peer is unreachable or has lost the dialog: BYE (RFC 4028 10, RFC 3261 12.2.1.2).
    "reinvite": the UPDATE the peer listed in Allow is refused as unknown after all: re-INVITE, at once.
    "glare": 491, our request crossed one of the peer's: again after RFC 3261 14.1's random wait.
    "later": any other refusal: again halfway to the expiry.
    """
    if status in (408, 481, 503):
        return "end"
    if method == "UPDATE" and status in (405, 501):
        return "reinvite"
    return "glare" if status == 491 else "later"


def refresh_retry_at(now: float, expires_at: float, wait: float | None) -> float | None:
    """When to send a refused refresh again: `wait` seconds from now (the glare wait), or halfway to the
    expiry when `wait` is None. None when that leaves less than REFRESH_RETRY_MARGIN_S of the session: the
    session then expires, and SessionExpired ends the call."""
    at = now + wait if wait is not None else (now + expires_at) / 2
    return at if expires_at - at >= REFRESH_RETRY_MARGIN_S else None


def expiry_margin(interval: float) -> float:
    """How long before the session expires the non-refresher sends its BYE (section 10)."""
    return min(32.0, interval / 3)


# --- the per-dialog clock --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RefreshDue:
    """Half the interval is gone: send the refresh (UPDATE or re-INVITE) now."""

    dialog: DialogId


@dataclass(frozen=True, slots=True)
class SessionExpired:
    """No refresh came in time (or ours failed): end the call with BYE (section 10)."""

    dialog: DialogId


SessionTimerEvent = RefreshDue | SessionExpired


@dataclass(slots=True)
class _Session:
    agreement: SessionAgreement
    refreshed_at: float
    refresh_at: float | None  # None: not ours to refresh, or our refresh is under way
    expires_at: float

    @property
    def deadline(self) -> float:
        return self.refresh_at if self.refresh_at is not None else self.expires_at


@dataclass(slots=True)
class SessionTimers:
    """Each dialog's next session-timer deadline; `tick(now)` returns what fell due."""

    _sessions: dict[DialogId, _Session] = field(default_factory=dict)
    _heap: list[tuple[float, int, DialogId]] = field(default_factory=list)
    _sequence: itertools.count[int] = field(default_factory=itertools.count)

    def __len__(self) -> int:
        return len(self._sessions)

    def start(self, dialog: DialogId, agreement: SessionAgreement, now: float) -> None:
        """The session was (re)freshed now: a 2xx we sent or received for an INVITE of this dialog."""
        interval = float(agreement.interval)
        session = _Session(
            agreement,
            refreshed_at=now,
            refresh_at=now + interval / 2 if agreement.we_refresh else None,
            expires_at=now + interval - expiry_margin(interval),
        )
        self._sessions[dialog] = session
        self._push(dialog, session)

    def stop(self, dialog: DialogId) -> None:
        self._sessions.pop(dialog, None)

    def agreement(self, dialog: DialogId) -> SessionAgreement | None:
        session = self._sessions.get(dialog)
        return session.agreement if session is not None else None

    def expires_at(self, dialog: DialogId) -> float | None:
        session = self._sessions.get(dialog)
        return session.expires_at if session is not None else None

    def refresh_later(self, dialog: DialogId, at: float) -> bool:
        """Our refresh could not be sent or was refused for now (glare, 491): try again at `at`. False when
        that is too late: the session expires first, and SessionExpired follows."""
        session = self._sessions.get(dialog)
        if session is None or not session.agreement.we_refresh or at >= session.expires_at:
            return False
        session.refresh_at = at
        self._push(dialog, session)
        return True

    def _push(self, dialog: DialogId, session: _Session) -> None:
        heapq.heappush(self._heap, (session.deadline, next(self._sequence), dialog))

    def _current(self, deadline: float, dialog: DialogId) -> _Session | None:
        session = self._sessions.get(dialog)
        return session if session is not None and session.deadline == deadline else None

    def next_timer(self) -> float | None:
        while self._heap:
            deadline, _, dialog = self._heap[0]
            if self._current(deadline, dialog) is not None:
                return deadline
            heapq.heappop(self._heap)  # superseded by a later refresh, or stopped
        return None

    def tick(self, now: float) -> list[SessionTimerEvent]:
        events: list[SessionTimerEvent] = []
        while self._heap and self._heap[0][0] <= now:
            deadline, _, dialog = heapq.heappop(self._heap)
            session = self._current(deadline, dialog)
            if session is None:
                continue
            if session.refresh_at is not None:
                # Until the refresh's 2xx restarts the clock, the session expires as it would have.
                session.refresh_at = None
                self._push(dialog, session)
                events.append(RefreshDue(dialog))
            else:
                del self._sessions[dialog]
                events.append(SessionExpired(dialog))
        return events

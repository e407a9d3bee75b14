"""RFC 3261 section 12 dialogs, sans-IO: identity, CSeq ordering, route set, remote target.

A `Dialog` is created from the INVITE we answer (UAS, 12.1.1) or from the 2xx we receive (UAC, 12.1.2) and
then builds every in-dialog request (12.2.1.1) and checks every one that arrives (12.2.2). The UAS core's
2xx retransmission until ACK (13.3.1.4) is here too, as `AnswerRetransmitter`, because it is dialog state,
not transaction state (RFC 6026); so is its UAC counterpart, `SentAcks`, the ACK each 2xx to our INVITEs got,
for as long as that 2xx may come again, and the wait before an offer refused with 491 is tried again (14.1).

A 2xx no call is waiting for (it came after the INVITE timed out or was given up, or from a second UAS the
INVITE forked to) is still the UAC core's to ACK (13.2.2.4, 17.1.1.2): `SentInvites` keeps each INVITE of
ours for as long as such a 2xx may arrive, and `answer_unwanted_2xx` builds its ACK, and the BYE that ends
the dialog it made.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from telephony.sip.errors import SipParseError
from telephony.sip.message import (
    Headers,
    NameAddr,
    SipRequest,
    SipResponse,
    SipUri,
    new_via,
    parse_cseq,
)
from telephony.sip.transaction import Addr, Outgoing, TimerConfig, TransactionId, is_reliable

# Requests that never take part in CSeq ordering: ACK and CANCEL reuse the INVITE's number (12.2.2).
_UNORDERED = frozenset({"ACK", "CANCEL"})
_CREDENTIALS = ("Authorization", "Proxy-Authorization")

T = TypeVar("T")
K = TypeVar("K")
V = TypeVar("V")


class DialogError(Exception):
    """An in-dialog request we must refuse; `status` is what to answer (500 out of order, 400 ...)."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(f"{status} {reason}")
        self.status = status
        self.reason = reason


@dataclass(frozen=True, slots=True)
class DialogId:
    call_id: str
    local_tag: str
    remote_tag: str


def dialog_id_for_request(request: SipRequest) -> DialogId | None:
    """The dialog an incoming request belongs to (our tag is in To); None outside a dialog."""
    local = NameAddr.parse(request.headers["To"]).tag
    remote = NameAddr.parse(request.headers["From"]).tag
    if local is None:
        return None
    return DialogId(request.headers["Call-ID"], local, remote or "")


def dialog_id_for_response(response: SipResponse) -> DialogId | None:
    """The dialog a response to our request belongs to (our tag is in From)."""
    local = NameAddr.parse(response.headers["From"]).tag
    remote = NameAddr.parse(response.headers["To"]).tag
    if local is None or remote is None:
        return None
    return DialogId(response.headers["Call-ID"], local, remote)


def _strip_tag(value: str) -> str:
    address = NameAddr.parse(value)
    params = {name: v for name, v in address.params.items() if name != "tag"}
    return str(NameAddr(address.display, address.uri, params))


def _with_tag(value: str, tag: str) -> str:
    if not tag:
        return value
    address = NameAddr.parse(value)
    return str(NameAddr(address.display, address.uri, {**address.params, "tag": tag}))


def _contact_uri(message: SipRequest | SipResponse) -> str | None:
    contact = message.headers.get("Contact")
    if contact is None:
        return None
    uri = NameAddr.parse(contact).uri
    SipUri.parse(uri)  # a target we could not send to is a malformed Contact, said now rather than later
    return uri


@dataclass(slots=True)
class Dialog:
    call_id: str
    local_tag: str
    remote_tag: str
    local_uri: str  # name-addr without tag: our From (UAC) or the request's To (UAS)
    remote_uri: str
    remote_target: str  # the peer's Contact URI: where in-dialog requests are addressed
    route_set: list[str]
    local_seq: int
    remote_seq: int | None
    secure: bool = False
    state: str = "early"  # early | confirmed | terminated

    @property
    def id(self) -> DialogId:
        return DialogId(self.call_id, self.local_tag, self.remote_tag)

    @classmethod
    def from_uas(cls, request: SipRequest, local_tag: str, local_seq: int) -> Dialog:
        """12.1.1: the dialog we create by answering `request` with a To tag of `local_tag`."""
        try:
            target = _contact_uri(request)
            sender = NameAddr.parse(request.headers["From"])
            number, _ = parse_cseq(request.headers["CSeq"])
        except SipParseError as exc:
            raise DialogError(400, exc.reason) from None
        return cls(
            call_id=request.headers["Call-ID"],
            local_tag=local_tag,
            remote_tag=sender.tag or "",
            local_uri=_strip_tag(request.headers["To"]),
            remote_uri=_strip_tag(request.headers["From"]),
            remote_target=target or sender.uri,
            route_set=request.headers.get_all("Record-Route"),
            local_seq=local_seq,
            remote_seq=number,
            secure=request.uri.lower().startswith("sips:"),
        )

    @classmethod
    def from_uac(cls, request: SipRequest, response: SipResponse) -> Dialog:
        """12.1.2: the dialog a 2xx (or tagged 1xx) to our `request` creates; routes are reversed."""
        try:
            target = _contact_uri(response)
            local = NameAddr.parse(request.headers["From"])
            remote_tag = NameAddr.parse(response.headers["To"]).tag
            number, _ = parse_cseq(request.headers["CSeq"])
        except SipParseError as exc:
            raise DialogError(400, exc.reason) from None
        if local.tag is None or remote_tag is None:
            raise DialogError(400, "response without dialog tags")
        return cls(
            call_id=request.headers["Call-ID"],
            local_tag=local.tag,
            remote_tag=remote_tag,
            local_uri=_strip_tag(request.headers["From"]),
            remote_uri=_strip_tag(response.headers["To"]),
            remote_target=target or request.uri,
            route_set=list(reversed(response.headers.get_all("Record-Route"))),
            local_seq=number,
            remote_seq=None,
            secure=request.uri.lower().startswith("sips:"),
            state="confirmed" if 200 <= response.status < 300 else "early",
        )

    # --- requests we send ---------------------------------------------------------------------------------
    def _request_uri_and_routes(self) -> tuple[str, list[str]]:
        if not self.route_set:
            return self.remote_target, []
        first = NameAddr.parse(self.route_set[0]).uri
        if "lr" in SipUri.parse(first).params:
            return self.remote_target, list(self.route_set)
        # 12.2.1.1 strict routing (RFC 2543 proxies): the first route becomes the Request-URI and the
        # remote target travels as the last Route.
        return first, [*self.route_set[1:], f"<{self.remote_target}>"]

    def create_request(
        self,
        method: str,
        *,
        transport: str,
        sent_by: Addr,
        contact: str | None = None,
        cseq: int | None = None,
        headers: list[tuple[str, str]] | None = None,
        body: bytes = b"",
        content_type: str | None = None,
    ) -> SipRequest:
        """An in-dialog request; CSeq increments except for ACK/CANCEL, which pass `cseq` explicitly."""
        if cseq is None:
            self.local_seq += 1
            cseq = self.local_seq
        uri, routes = self._request_uri_and_routes()
        built = Headers()
        built.add("Via", new_via(transport, *sent_by))
        for route in routes:
            built.add("Route", route)
        built.add("Max-Forwards", "70")
        built.add("From", _with_tag(self.local_uri, self.local_tag))
        built.add("To", _with_tag(self.remote_uri, self.remote_tag))
        built.add("Call-ID", self.call_id)
        built.add("CSeq", f"{cseq} {method}")
        if contact is not None:
            built.add("Contact", contact)
        for name, value in headers or ():
            built.add(name, value)
        if content_type is not None:
            built.add("Content-Type", content_type)
        return SipRequest(method, uri, built, body)

    def create_ack(
        self,
        invite_cseq: int,
        *,
        transport: str,
        sent_by: Addr,
        headers: list[tuple[str, str]] | None = None,
        body: bytes = b"",
        content_type: str | None = None,
    ) -> SipRequest:
        """13.2.2.4: the ACK for a 2xx is a new request (new branch) with the INVITE's CSeq number;
        `headers` are the INVITE's credentials (`invite_credentials`), which the ACK repeats."""
        return self.create_request(
            "ACK",
            transport=transport,
            sent_by=sent_by,
            cseq=invite_cseq,
            headers=headers,
            body=body,
            content_type=content_type,
        )

    # --- requests we receive ------------------------------------------------------------------------------
    def check_request(self, request: SipRequest) -> None:
        """12.2.2: refuse requests older than the last one (500); remember the newest CSeq."""
        try:
            number, _ = parse_cseq(request.headers["CSeq"])
        except SipParseError as exc:
            raise DialogError(400, exc.reason) from None
        if request.method in _UNORDERED:
            return
        if self.remote_seq is not None and number <= self.remote_seq:
            raise DialogError(500, "CSeq out of order")
        self.remote_seq = number

    def refresh_target(self, message: SipRequest | SipResponse) -> None:
        """Target refresh (12.2, 14): a re-INVITE or its 2xx may move the peer's Contact."""
        try:
            target = _contact_uri(message)
        except SipParseError as exc:
            raise DialogError(400, exc.reason) from None
        if target is not None:
            self.remote_target = target


# --- the UAS core's 2xx retransmission ------------------------------------------------------------------


@dataclass(slots=True)
class _PendingAnswer:
    raw: bytes
    dest: Addr
    transport: str
    interval: float
    next_at: float
    give_up_at: float


@dataclass(slots=True)
class AnswerRetransmitter:
    """Retransmits our 2xx to an INVITE (T1 doubling to T2) until its ACK, for at most 64*T1 (13.3.1.4)."""

    timers: TimerConfig = field(default_factory=TimerConfig)
    _pending: dict[tuple[DialogId, int], _PendingAnswer] = field(default_factory=dict)
    _heap: list[tuple[float, int, tuple[DialogId, int]]] = field(default_factory=list)
    _sequence: itertools.count[int] = field(default_factory=itertools.count)

    def __len__(self) -> int:
        return len(self._pending)

    def start(self, dialog: DialogId, cseq: int, raw: bytes, dest: Addr, transport: str, now: float) -> None:
        t = self.timers
        # Over a reliable transport the 2xx is not resent, but a missing ACK still ends the call.
        interval = t.t1 if not is_reliable(transport) else t.timeout_64t1
        pending = _PendingAnswer(raw, dest, transport, interval, now + interval, now + t.timeout_64t1)
        self._pending[(dialog, cseq)] = pending
        self._push(pending, (dialog, cseq))

    def _push(self, pending: _PendingAnswer, key: tuple[DialogId, int]) -> None:
        heapq.heappush(self._heap, (min(pending.next_at, pending.give_up_at), next(self._sequence), key))

    def acknowledge(self, dialog: DialogId, cseq: int) -> bool:
        """True when this ACK was the first for a pending 2xx."""
        return self._pending.pop((dialog, cseq), None) is not None

    def waiting(self, dialog: DialogId) -> bool:
        """Whether a 2xx of this dialog still waits for its ACK: its INVITE transaction is not over yet,
        so no new INVITE may start in the dialog (14.1)."""
        return any(key[0] == dialog for key in self._pending)

    def cancel(self, dialog: DialogId) -> None:
        for key in [k for k in self._pending if k[0] == dialog]:
            del self._pending[key]

    def next_timer(self) -> float | None:
        while self._heap:
            deadline, _, key = self._heap[0]
            pending = self._pending.get(key)
            if pending is not None and min(pending.next_at, pending.give_up_at) == deadline:
                return deadline
            heapq.heappop(self._heap)
        return None

    def tick(self, now: float) -> tuple[list[Outgoing], list[DialogId]]:
        """The 2xx to resend now, and the dialogs whose ACK never came (the TU sends BYE, 13.3.1.4)."""
        resend: list[Outgoing] = []
        expired: list[DialogId] = []
        while self._heap and self._heap[0][0] <= now:
            deadline, _, key = heapq.heappop(self._heap)
            pending = self._pending.get(key)
            if pending is None or min(pending.next_at, pending.give_up_at) != deadline:
                continue
            if pending.give_up_at <= now:
                del self._pending[key]
                expired.append(key[0])
                continue
            resend.append(Outgoing(pending.raw, pending.dest, pending.transport))
            pending.interval = min(pending.interval * 2, self.timers.t2)
            pending.next_at = now + pending.interval
            self._push(pending, key)
        return resend, expired


# --- the UAC core's ACKs ---------------------------------------------------------------------------------


@dataclass(slots=True)
class SentAcks:
    """The ACK we sent for each 2xx to one of our INVITEs, by dialog and CSeq number (13.2.2.4).

    The peer retransmits its 2xx until the ACK arrives, for up to 64*T1 (13.3.1.4); every copy must be
    ACKed, even once the call has ended on our side (our BYE crossed a 2xx to our re-INVITE), so the ACKs
    are kept here for that long rather than on the call. The dialog is part of the key because an INVITE
    that forked can be answered by two UASs: each 2xx gets the ACK of its own dialog.
    """

    hold_s: float
    _acks: dict[tuple[DialogId, int], tuple[Outgoing, float]] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self._acks)

    def remember(self, dialog: DialogId, cseq: int, ack: Outgoing, now: float) -> None:
        self._forget(now)
        self._acks.pop((dialog, cseq), None)  # re-inserted last: the dict stays in order of expiry
        self._acks[(dialog, cseq)] = (ack, now + self.hold_s)

    def lookup(self, dialog: DialogId, cseq: int, now: float) -> Outgoing | None:
        """The ACK to send again for a retransmitted 2xx; None when we never ACKed it (or long ago)."""
        self._forget(now)
        entry = self._acks.get((dialog, cseq))
        return entry[0] if entry is not None else None

    def _forget(self, now: float) -> None:
        _forget_expired(self._acks, now)


def invite_credentials(invite: SipRequest) -> list[tuple[str, str]]:
    """The Authorization and Proxy-Authorization values of our INVITE: its ACK carries the same (13.2.2.4)."""
    return [(name, value) for name in _CREDENTIALS for value in invite.headers.get_all(name)]


@dataclass(frozen=True, slots=True)
class UnwantedAnswer:
    """What a 2xx to one of our INVITEs that no call takes any more gets: its ACK, then (for an initial
    INVITE) a BYE for the dialog it made. None for a re-INVITE: its dialog is a call of ours, whose end
    (a BYE sent or received) is why nothing waited for the 2xx."""

    ack: SipRequest
    bye: SipRequest | None


def answer_unwanted_2xx(
    invite: SipRequest,
    response: SipResponse,
    *,
    transport: str,
    sent_by: Addr,
    headers: list[tuple[str, str]] | None = None,
) -> UnwantedAnswer:
    """13.2.2.4: the UAC core ACKs every 2xx to its INVITE, forked ones too, each in the dialog its To tag
    names, and ends with BYE (section 15) a dialog it does not want. For an initial INVITE the ACK and the
    BYE are built in the dialog the 2xx made (12.1.2); a re-INVITE's ACK goes where the re-INVITE went, by
    its route set. `headers` go into the BYE (User-Agent). DialogError when the 2xx can make no dialog."""
    number, _ = parse_cseq(invite.headers["CSeq"])
    credentials = invite_credentials(invite)
    if NameAddr.parse(invite.headers["To"]).tag is None:
        dialog = Dialog.from_uac(invite, response)
        ack = dialog.create_ack(number, transport=transport, sent_by=sent_by, headers=credentials)
        bye = dialog.create_request("BYE", transport=transport, sent_by=sent_by, headers=headers)
        return UnwantedAnswer(ack, bye)
    built = Headers()
    built.add("Via", new_via(transport, *sent_by))
    for route in invite.headers.get_all("Route"):
        built.add("Route", route)
    built.add("Max-Forwards", "70")
    for name in ("From", "To", "Call-ID"):
        built.add(name, invite.headers[name])
    built.add("CSeq", f"{number} ACK")
    for name, value in credentials:
        built.add(name, value)
    return UnwantedAnswer(SipRequest("ACK", invite.uri, built), None)


@dataclass(slots=True)
class SentInvites(Generic[T]):
    """Each INVITE client transaction of ours (what the caller chose to keep of it, `T`), for as long as a
    2xx to it may arrive: while the transaction lasts (it passes retransmitted 2xx on, 17.1.1.2), then
    `hold_s` (64*T1: how long a UAS retransmits its 2xx, 13.3.1.4) after it ended, however it ended (a
    final response, Timer B, a transport failure)."""

    hold_s: float
    _open: dict[TransactionId, T] = field(default_factory=dict)
    _ended: dict[TransactionId, tuple[T, float]] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self._open) + len(self._ended)

    def sent(self, transaction: TransactionId, item: T) -> None:
        self._open[transaction] = item

    def ended(self, transaction: TransactionId, now: float) -> None:
        """The transaction is over; the record lasts `hold_s` more. Any other transaction: nothing."""
        item = self._open.pop(transaction, None)
        if item is not None:
            self._forget(now)
            self._ended[transaction] = (item, now + self.hold_s)  # in order of expiry: `now` only grows

    def lookup(self, transaction: TransactionId, now: float) -> T | None:
        self._forget(now)
        if transaction in self._open:
            return self._open[transaction]
        entry = self._ended.get(transaction)
        return entry[0] if entry is not None else None

    def _forget(self, now: float) -> None:
        _forget_expired(self._ended, now)


def _forget_expired(entries: dict[K, tuple[V, float]], now: float) -> None:
    """Drop the entries whose deadline (the second item of the value) has passed; `entries` is kept in order
    of deadline, so the first one not yet due ends the search."""
    while entries:
        key, (_, until) = next(iter(entries.items()))
        if until > now:
            return
        del entries[key]


# --- glare ----------------------------------------------------------------------------------------------


def glare_retry_delay(owns_call_id: bool, randint: Callable[[int, int], int]) -> float:
    """14.1: how long to wait, in seconds, before trying again a request refused with 491. The UA that
    generated the dialog's Call-ID waits 2.1-4 s, the other 0-2 s, in units of 10 ms, so that after a
    glare the other side goes first. RFC 3311 5.1 applies the same to UPDATE. `randint(a, b)` draws from
    a..b inclusive (random.Random.randint; injected so tests can check both ranges)."""
    low, high = (210, 400) if owns_call_id else (0, 200)
    return randint(low, high) / 100

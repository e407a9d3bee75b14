"""RFC 3261 section 17 transactions, sans-IO: every transaction state machine lives in this module.

The layer never touches a socket or a clock. The shell feeds it messages with the current time
(`receive_data` / `receive`), calls `tick(now)` when `next_timer()` is due, and sends whatever
`pop_outgoing()` returns; the transaction user (TU) acts on the returned events and answers through
`respond` / `send_request`. Retransmissions are absorbed and answered from here, never reach the TU.

States and transitions (RFC 3261 17.1.1, 17.1.2, 17.2.1, 17.2.2, with RFC 6026's "Accepted" state):

  INVITE client      calling --1xx--> proceeding --2xx--> accepted --M--> gone
                     calling/proceeding --300-699 (ACK sent here)--> completed --D--> gone
                     calling --B--> timed out; proceeding --C--> told to CANCEL, then --B--> gone
  non-INVITE client  trying --1xx--> proceeding --final--> completed --K--> gone; trying/proceeding --F-->
  INVITE server      proceeding --2xx--> accepted --L--> gone
                     proceeding --300-699--> completed --ACK--> confirmed --I--> gone; completed --H-->
  non-INVITE server  trying --1xx--> proceeding --final--> completed --J--> gone

Two guards beyond the RFC keep a silent TU from leaking transactions: a server transaction the TU never
answers is answered 408 (INVITE, after `tu_invite_timeout`) or dropped (non-INVITE, after 64*T1, when the
client has given up anyway).
"""

from __future__ import annotations

import heapq
import ipaddress
import itertools
from dataclasses import dataclass, field

from telephony.sip.message import (
    Headers,
    SipParseError,
    SipRequest,
    SipResponse,
    Via,
    make_response,
    parse_cseq,
    parse_message,
)

Addr = tuple[str, int]
RELIABLE_TRANSPORTS = frozenset({"TCP", "TLS", "SCTP", "WS", "WSS"})
MAGIC_COOKIE = "z9hG4bK"


@dataclass(frozen=True, slots=True)
class TimerConfig:
    """RFC 3261 table 4 values; T1/T2/T4 are configurable, everything else derives from them."""

    t1: float = 0.5
    t2: float = 4.0
    t4: float = 5.0
    timer_c: float = 180.0  # how long an INVITE may stay in proceeding (16.6: "greater than 3 minutes")
    timer_d: float = 32.0
    trying_delay: float = 0.2  # 17.2.1: send 100 Trying if the TU has not answered within 200 ms
    tu_invite_timeout: float = 300.0

    @property
    def timeout_64t1(self) -> float:
        return 64 * self.t1


@dataclass(frozen=True, slots=True)
class TransactionId:
    role: str  # "client" | "server"
    branch: str
    sent_by: str  # server side only (17.2.3): the branch alone is not unique across clients
    method: str  # ACK is matched as INVITE; CANCEL is its own transaction


# --- events (what the TU learns) --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RequestReceived:
    """A new request: a server transaction now waits for the TU's response."""

    transaction: TransactionId
    request: SipRequest
    source: Addr
    transport: str


@dataclass(frozen=True, slots=True)
class AckReceived:
    """An ACK that belongs to no transaction: the ACK for a 2xx, which is the dialog's business."""

    request: SipRequest
    source: Addr
    transport: str


@dataclass(frozen=True, slots=True)
class ResponseReceived:
    transaction: TransactionId
    request: SipRequest
    response: SipResponse


@dataclass(frozen=True, slots=True)
class StrayResponse:
    """A response no transaction wants, e.g. a 2xx retransmitted after Timer M: the TU re-sends the ACK."""

    response: SipResponse
    source: Addr
    transport: str


@dataclass(frozen=True, slots=True)
class TransactionTimedOut:
    transaction: TransactionId
    request: SipRequest
    timer: str  # "B", "F", "H", "C" (INVITE ringing too long: the TU should CANCEL) or "TU"


@dataclass(frozen=True, slots=True)
class TransportFailed:
    transaction: TransactionId
    request: SipRequest


@dataclass(frozen=True, slots=True)
class TransactionTerminated:
    transaction: TransactionId


@dataclass(frozen=True, slots=True)
class MessageRejected:
    """A message we answered statelessly (400, 503 ...) or dropped because it could not be parsed."""

    source: Addr
    status: int
    reason: str


TransactionEvent = (
    RequestReceived
    | AckReceived
    | ResponseReceived
    | StrayResponse
    | TransactionTimedOut
    | TransportFailed
    | TransactionTerminated
    | MessageRejected
)


@dataclass(frozen=True, slots=True)
class Outgoing:
    data: bytes
    dest: Addr
    transport: str


class TransactionError(Exception):
    """The TU misused the layer (e.g. a request without a Via branch): a bug on our side."""


# --- helpers ------------------------------------------------------------------------------------------------


def is_reliable(transport: str) -> bool:
    return transport.upper() in RELIABLE_TRANSPORTS


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def server_transaction_id(request: SipRequest) -> TransactionId:
    """17.2.3 matching; RFC 2543 peers (no magic cookie) fall back to the dialog-ish fields."""
    via = Via.parse(request.headers["Via"])
    method = "INVITE" if request.method == "ACK" else request.method
    sent_by = f"{via.host}:{via.port or 5060}"
    branch = via.branch or ""
    if not branch.startswith(MAGIC_COOKIE):
        # The ACK for a non-2xx carries the response's To tag, so the To tag cannot be part of the key.
        from_tag = request.headers["From"].partition("tag=")[2].split(";")[0]
        number, _ = parse_cseq(request.headers["CSeq"])
        # ACK and CANCEL copy the INVITE's Request-URI and CSeq number (9.1, 17.1.1.3), so both match.
        branch = f"2543|{request.headers['Call-ID']}|{from_tag}|{number}|{request.uri}"
    return TransactionId("server", branch, sent_by, method)


def client_transaction_id(message: SipRequest | SipResponse) -> TransactionId:
    via = Via.parse(message.headers["Via"])
    _, method = parse_cseq(message.headers["CSeq"])
    return TransactionId("client", via.branch or "", "", method)


def response_destination(request: SipRequest, source: Addr, transport: str) -> Addr:
    """18.2.2 and RFC 3581: back to the source address when rport asks for it (or for stream transports)."""
    if is_reliable(transport):
        return source
    via = Via.parse(request.headers["Via"])
    if "rport" in via.params or not _is_ip(via.host):
        return source
    return (source[0], via.port or 5060)


def stamp_received(request: SipRequest, source: Addr) -> None:
    """RFC 3261 18.2.1 received= and RFC 3581 rport=, written into the top Via so responses carry them."""
    values = request.headers.get_all("Via")
    via = Via.parse(values[0])
    params = dict(via.params)
    if via.host != source[0]:
        params["received"] = source[0]
    if "rport" in params and not params["rport"]:
        params["rport"] = str(source[1])
        params.setdefault("received", source[0])
    if params == via.params:
        return
    values[0] = str(Via(via.transport, via.host, via.port, params))
    rebuilt = Headers()
    placed = False
    for name, value in request.headers.items():
        if name == "Via":
            if not placed:
                for item in values:
                    rebuilt.add("Via", item)
                placed = True
            continue
        rebuilt.add(name, value)
    request.headers = rebuilt


def build_ack_for_failure(invite: SipRequest, response: SipResponse) -> SipRequest:
    """17.1.1.3: the transaction's own ACK for a 300-699 (same branch; To from the response)."""
    headers = Headers()
    headers.add("Via", invite.headers["Via"])
    for route in invite.headers.get_all("Route"):
        headers.add("Route", route)
    headers.add("Max-Forwards", "70")
    headers.add("From", invite.headers["From"])
    headers.add("To", response.headers["To"])
    headers.add("Call-ID", invite.headers["Call-ID"])
    number, _ = parse_cseq(invite.headers["CSeq"])
    headers.add("CSeq", f"{number} ACK")
    return SipRequest("ACK", invite.uri, headers)


def build_cancel(invite: SipRequest) -> SipRequest:
    """9.1: CANCEL is hop-by-hop, so it copies the INVITE's top Via (same branch) and Route set."""
    headers = Headers()
    headers.add("Via", invite.headers["Via"])
    for route in invite.headers.get_all("Route"):
        headers.add("Route", route)
    headers.add("Max-Forwards", "70")
    for name in ("From", "To", "Call-ID"):
        headers.add(name, invite.headers[name])
    number, _ = parse_cseq(invite.headers["CSeq"])
    headers.add("CSeq", f"{number} CANCEL")
    return SipRequest("CANCEL", invite.uri, headers)


# --- the transactions -----------------------------------------------------------------------------------


@dataclass(slots=True, eq=False)
class _Transaction:
    id: TransactionId
    invite: bool
    request: SipRequest
    peer: Addr
    transport: str
    state: str
    raw_request: bytes = b""
    response: SipResponse | None = None  # the last response sent (server) or the final received (client)
    raw_response: bytes = b""
    raw_ack: bytes = b""
    interval: float = 0.0
    timers: dict[str, float] = field(default_factory=dict)

    @property
    def is_server(self) -> bool:
        return self.id.role == "server"


class TransactionLayer:
    """Every client and server transaction of one endpoint, keyed per RFC 3261 17.1.3 / 17.2.3."""

    def __init__(self, timers: TimerConfig | None = None, *, max_transactions: int = 50_000) -> None:
        self.timers = timers or TimerConfig()
        self.max_transactions = max_transactions
        self.malformed = 0
        self._transactions: dict[TransactionId, _Transaction] = {}
        self._heap: list[tuple[float, int, TransactionId, str]] = []
        self._sequence = itertools.count()
        self._outgoing: list[Outgoing] = []

    # --- inspection -----------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._transactions)

    def state(self, transaction: TransactionId) -> str | None:
        found = self._transactions.get(transaction)
        return found.state if found is not None else None

    def request(self, transaction: TransactionId) -> SipRequest | None:
        found = self._transactions.get(transaction)
        return found.request if found is not None else None

    def matching_invite(self, cancel: SipRequest) -> TransactionId | None:
        """The INVITE server transaction a CANCEL targets (9.2: same key, method INVITE)."""
        tid = server_transaction_id(cancel)
        invite = TransactionId("server", tid.branch, tid.sent_by, "INVITE")
        return invite if invite in self._transactions else None

    def pop_outgoing(self) -> list[Outgoing]:
        outgoing, self._outgoing = self._outgoing, []
        return outgoing

    def next_timer(self) -> float | None:
        while self._heap:
            deadline, _, tid, name = self._heap[0]
            tx = self._transactions.get(tid)
            if tx is not None and tx.timers.get(name) == deadline:
                return deadline
            heapq.heappop(self._heap)  # stale: the timer was cancelled or re-armed
        return None

    # --- input from the network -----------------------------------------------------------------------
    def receive_data(self, data: bytes, source: Addr, transport: str, now: float) -> list[TransactionEvent]:
        """One datagram or one framed stream message. Malformed input is answered or dropped, never raised."""
        if not data.strip(b"\r\n\t "):
            return []  # RFC 5626 keep-alive
        try:
            message = parse_message(data)
        except SipParseError as exc:
            self.malformed += 1
            partial = exc.partial
            if partial is not None and partial.method != "ACK":
                try:
                    response = make_response(partial, exc.status, exc.reason)
                    self._emit(bytes(response), response_destination(partial, source, transport), transport)
                except SipParseError:
                    pass
            return [MessageRejected(source, exc.status, exc.reason)]
        return self.receive(message, source, transport, now)

    def receive(
        self, message: SipRequest | SipResponse, source: Addr, transport: str, now: float
    ) -> list[TransactionEvent]:
        if isinstance(message, SipResponse):
            return self._receive_response(message, source, transport, now)
        return self._receive_request(message, source, transport, now)

    def transport_error(self, dest: Addr, transport: str, now: float) -> list[TransactionEvent]:
        """The transport could not reach `dest` (ICMP unreachable, connection refused or reset)."""
        events: list[TransactionEvent] = []
        for tx in [t for t in self._transactions.values() if t.peer == dest and t.transport == transport]:
            events.append(TransportFailed(tx.id, tx.request))
            events.extend(self._terminate(tx))
        return events

    # --- input from the TU ----------------------------------------------------------------------------
    def send_request(self, request: SipRequest, dest: Addr, transport: str, now: float) -> TransactionId:
        """Start a client transaction and send the request (ACK for a 2xx goes through `send_stateless`)."""
        if request.method == "ACK":
            raise TransactionError("an ACK for a 2xx has no transaction: use send_stateless")
        via = request.headers.get("Via")
        if via is None or not (Via.parse(via).branch or "").startswith(MAGIC_COOKIE):
            raise TransactionError("client requests need a top Via with an RFC 3261 branch")
        tid = client_transaction_id(request)
        if tid in self._transactions:
            raise TransactionError(f"branch {tid.branch} is already in use")
        invite = request.method == "INVITE"
        tx = _Transaction(tid, invite, request, dest, transport.upper(), "calling" if invite else "trying")
        tx.raw_request = bytes(request)
        self._transactions[tid] = tx
        self._emit(tx.raw_request, dest, tx.transport)
        t = self.timers
        if not is_reliable(tx.transport):
            tx.interval = t.t1
            self._arm(tx, "A" if invite else "E", now + t.t1)
        self._arm(tx, "B" if invite else "F", now + t.timeout_64t1)
        return tid

    def respond(self, transaction: TransactionId, response: SipResponse, now: float) -> bool:
        """Send a response in a server transaction; False when the transaction is gone (too late)."""
        tx = self._transactions.get(transaction)
        if tx is None or not tx.is_server:
            return False
        status = response.status
        t = self.timers
        if tx.invite:
            if tx.state == "proceeding":
                self._send_response(tx, response)
                if status < 200:
                    tx.timers.pop("trying", None)
                elif status < 300:
                    tx.state = "accepted"
                    tx.timers.clear()
                    self._arm(tx, "L", now + t.timeout_64t1)
                else:
                    tx.state = "completed"
                    tx.timers.clear()
                    if not is_reliable(tx.transport):
                        tx.interval = t.t1
                        self._arm(tx, "G", now + t.t1)
                    self._arm(tx, "H", now + t.timeout_64t1)
                return True
            if tx.state == "accepted" and 200 <= status < 300:
                self._send_response(tx, response)  # the UAS core's own 2xx retransmission
                return True
            return False
        if tx.state not in ("trying", "proceeding"):
            return False
        self._send_response(tx, response)
        if status < 200:
            tx.state = "proceeding"
        else:
            tx.state = "completed"
            tx.timers.clear()
            self._arm(tx, "J", now + (0.0 if is_reliable(tx.transport) else t.timeout_64t1))
        return True

    def discard(self, transaction: TransactionId) -> None:
        """Forget a server transaction without answering (a dropped scanner request); retransmissions
        of it will look new again, so the caller must keep dropping them."""
        tx = self._transactions.get(transaction)
        if tx is not None:
            self._terminate(tx)

    def send_stateless(self, message: SipRequest | SipResponse, dest: Addr, transport: str) -> None:
        """Messages outside any transaction: the ACK for a 2xx and stateless rejections."""
        self._emit(bytes(message), dest, transport.upper())

    # --- time -----------------------------------------------------------------------------------------
    def tick(self, now: float) -> list[TransactionEvent]:
        events: list[TransactionEvent] = []
        while self._heap and self._heap[0][0] <= now:
            deadline, _, tid, name = heapq.heappop(self._heap)
            tx = self._transactions.get(tid)
            if tx is None or tx.timers.get(name) != deadline:
                continue
            del tx.timers[name]
            events.extend(self._fire(tx, name, now))
        return events

    # --- internals ------------------------------------------------------------------------------------
    def _emit(self, data: bytes, dest: Addr, transport: str) -> None:
        self._outgoing.append(Outgoing(data, dest, transport))

    def _arm(self, tx: _Transaction, name: str, deadline: float) -> None:
        tx.timers[name] = deadline
        heapq.heappush(self._heap, (deadline, next(self._sequence), tx.id, name))

    def _terminate(self, tx: _Transaction) -> list[TransactionEvent]:
        tx.state = "terminated"
        tx.timers.clear()
        self._transactions.pop(tx.id, None)
        return [TransactionTerminated(tx.id)]

    def _send_response(self, tx: _Transaction, response: SipResponse) -> None:
        tx.response = response
        tx.raw_response = bytes(response)
        self._emit(tx.raw_response, tx.peer, tx.transport)

    def _resend_response(self, tx: _Transaction) -> None:
        if tx.raw_response:
            self._emit(tx.raw_response, tx.peer, tx.transport)

    def _reject(self, request: SipRequest, source: Addr, transport: str, status: int, reason: str) -> None:
        extra = [("Retry-After", "1")] if status == 503 else None
        response = make_response(request, status, reason, extra=extra)
        self._emit(bytes(response), response_destination(request, source, transport), transport)

    def _receive_request(
        self, request: SipRequest, source: Addr, transport: str, now: float
    ) -> list[TransactionEvent]:
        transport = transport.upper()
        stamp_received(request, source)
        tid = server_transaction_id(request)
        tx = self._transactions.get(tid)
        if request.method == "ACK":
            if tx is None or not tx.invite:
                return [AckReceived(request, source, transport)]
            return self._server_ack(tx, request, source, now)
        if tx is not None:
            # A retransmission (17.2.1/17.2.2): answered from the transaction, never seen by the TU.
            if tx.state != "confirmed":
                self._resend_response(tx)  # nothing to resend while the TU has not answered yet
            return []
        if len(self._transactions) >= self.max_transactions:
            self._reject(request, source, transport, 503, "Service Unavailable")
            return [MessageRejected(source, 503, "too many transactions")]
        invite = request.method == "INVITE"
        dest = response_destination(request, source, transport)
        tx = _Transaction(tid, invite, request, dest, transport, "proceeding" if invite else "trying")
        self._transactions[tid] = tx
        t = self.timers
        if invite:
            self._arm(tx, "trying", now + t.trying_delay)
            self._arm(tx, "TU", now + t.tu_invite_timeout)
        else:
            self._arm(tx, "TU", now + t.timeout_64t1)
        return [RequestReceived(tid, request, source, transport)]

    def _server_ack(
        self, tx: _Transaction, ack: SipRequest, source: Addr, now: float
    ) -> list[TransactionEvent]:
        if tx.state == "completed":
            tx.state = "confirmed"
            tx.timers.clear()
            self._arm(tx, "I", now + (0.0 if is_reliable(tx.transport) else self.timers.t4))
            return []
        if tx.state == "accepted":
            return [AckReceived(ack, source, tx.transport)]  # RFC 6026 7.1: the TU wants it
        return []  # confirmed: absorbed; proceeding: an ACK before any final response is meaningless

    def _receive_response(
        self, response: SipResponse, source: Addr, transport: str, now: float
    ) -> list[TransactionEvent]:
        try:
            tid = client_transaction_id(response)
        except SipParseError as exc:  # the parser checks a response's Vias only for presence
            self.malformed += 1
            return [MessageRejected(source, exc.status, exc.reason)]
        tx = self._transactions.get(tid)
        if tx is None or tx.is_server:
            return [StrayResponse(response, source, transport.upper())]
        status = response.status
        t = self.timers
        if tx.invite:
            if tx.state in ("calling", "proceeding"):
                if status < 200:
                    tx.state = "proceeding"
                    tx.timers.pop("A", None)
                    tx.timers.pop("B", None)
                    self._arm(tx, "C", now + t.timer_c)
                elif status < 300:
                    tx.state = "accepted"
                    tx.response = response
                    tx.timers.clear()
                    self._arm(tx, "M", now + t.timeout_64t1)
                else:
                    tx.state = "completed"
                    tx.response = response
                    tx.timers.clear()
                    tx.raw_ack = bytes(build_ack_for_failure(tx.request, response))
                    self._emit(tx.raw_ack, tx.peer, tx.transport)
                    self._arm(tx, "D", now + (0.0 if is_reliable(tx.transport) else t.timer_d))
                return [ResponseReceived(tx.id, tx.request, response)]
            if tx.state == "accepted" and 200 <= status < 300:
                return [ResponseReceived(tx.id, tx.request, response)]  # retransmitted 2xx: TU re-ACKs
            if tx.state == "completed" and status >= 300:
                self._emit(tx.raw_ack, tx.peer, tx.transport)
            return []
        if tx.state not in ("trying", "proceeding"):
            return []
        if status < 200:
            tx.state = "proceeding"
            return [ResponseReceived(tx.id, tx.request, response)]
        tx.state = "completed"
        tx.response = response
        tx.timers.clear()
        self._arm(tx, "K", now + (0.0 if is_reliable(tx.transport) else t.t4))
        return [ResponseReceived(tx.id, tx.request, response)]

    def _fire(self, tx: _Transaction, name: str, now: float) -> list[TransactionEvent]:
        t = self.timers
        if name in ("A", "E"):
            self._emit(tx.raw_request, tx.peer, tx.transport)
            # 17.1.1.2: INVITE doubles without bound (B ends it); 17.1.2.2: non-INVITE caps at T2, and
            # once a provisional arrived it retransmits every T2.
            if name == "A":
                tx.interval *= 2
            elif tx.state == "proceeding":
                tx.interval = t.t2
            else:
                tx.interval = min(tx.interval * 2, t.t2)
            self._arm(tx, name, now + tx.interval)
            return []
        if name == "G":
            self._resend_response(tx)
            tx.interval = min(tx.interval * 2, t.t2)
            self._arm(tx, "G", now + tx.interval)
            return []
        if name == "trying":
            if tx.state == "proceeding" and tx.response is None:
                self._send_response(tx, make_response(tx.request, 100))
            return []
        if name == "C":
            # Ringing too long: the TU sends CANCEL; the INVITE's final answer (487) still arrives here,
            # and if even that never comes, B ends the transaction.
            self._arm(tx, "B", now + t.timeout_64t1)
            return [TransactionTimedOut(tx.id, tx.request, "C")]
        if name == "TU":
            events: list[TransactionEvent] = [TransactionTimedOut(tx.id, tx.request, "TU")]
            if tx.invite:
                self.respond(tx.id, make_response(tx.request, 408, "No Answer From Application"), now)
                return events
            return events + self._terminate(tx)
        if name in ("B", "F", "H"):
            return [TransactionTimedOut(tx.id, tx.request, name), *self._terminate(tx)]
        return self._terminate(tx)  # D, I, J, K, L, M: the absorbing period is over

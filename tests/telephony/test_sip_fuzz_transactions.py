"""Mutation fuzzing of the parser, the stream framer and the transaction layer together.

A seeded mutator turns the captured messages under tests/data/sip into 100,000 variants: broken bytes and
lines, but also well-formed requests and responses whose method, branch, CSeq and status are shuffled so
that they hit live transactions (retransmissions, ACKs, CANCELs, stray and duplicate responses). A fake TU
answers some requests at once, some later, some never, and starts client transactions of its own. The
clock only moves when the test says so. At the end the clock jumps far ahead: every transaction must have
ended, and no exception may have escaped on the way.
"""

from __future__ import annotations

import random
import time
from collections.abc import Sequence

import hypothesis.strategies as st
from hypothesis import HealthCheck, given, settings

from telephony.sip.message import (
    Headers,
    SipParseError,
    SipRequest,
    generate_branch,
    make_response,
    parse_message,
)
from telephony.sip.transaction import (
    RequestReceived,
    ResponseReceived,
    TransactionEvent,
    TransactionId,
    TransactionLayer,
)
from telephony.sip.transport import FramingError, StreamFramer
from tests.telephony.sip_samples import load_sip, sample_names

SAMPLES = [load_sip(name) for name in sample_names()]
REQUESTS = [m for m in map(parse_message, SAMPLES) if isinstance(m, SipRequest)]
METHODS = ["INVITE", "ACK", "BYE", "CANCEL", "OPTIONS", "INFO", "NOTIFY", "REFER", "REGISTER", "PRACK"]
STATUSES = [100, 180, 183, 200, 202, 302, 401, 407, 486, 487, 500, 503, 603]
TOKENS = [
    b"\r\n", b"\n", b" ", b"\t", b":", b";", b",", b"<", b">", b'"', b"\\", b"=", b"@", b"\x00", b"\xff",
    b"\xc3", b"SIP/2.0", b"SIP/3.0", b"z9hG4bK", b";tag=", b";branch=", b";rport", b";received=",
    b"Content-Length: 99999\r\n", b"l: 5\r\n", b"Via: SIP/2.0/TCP h\r\n", b"CSeq: 7 ACK\r\n", b"65536",
    b"2147483648", b"\r\n\r\n", b"ACK", b"INVITE", b"CANCEL", b"9" * 600,
]  # fmt: skip
SOURCES = [("192.0.2.10", 5060), ("192.0.2.11", 5062), ("203.0.113.7", 40000)]
MESSAGES = 100_000


def well_formed_variant(rng: random.Random, branches: list[str]) -> bytes:
    """A sample request with a shuffled method/branch/CSeq: lands on live transactions."""
    base = rng.choice(REQUESTS)
    method = rng.choice(METHODS)
    headers = Headers()
    for name, value in base.headers.items():
        if name == "Via" and "Via" not in headers:  # only the top one: it decides the transaction
            host = rng.choice(["192.0.2.10:5060", "192.0.2.11", "[2001:db8::1]:5070"])
            transport = rng.choice(["UDP", "UDP", "TCP"])
            rport = ";rport" if rng.random() < 0.5 else ""
            value = f"SIP/2.0/{transport} {host};branch={rng.choice(branches)}{rport}"
        elif name == "CSeq":
            value = f"{rng.randint(1, 5)} {method}"
        elif name == "To" and rng.random() < 0.3:
            value = value.split(";tag=")[0] + ";tag=fuzz-tag"
        headers.add(name, value)
    return bytes(SipRequest(method, base.uri, headers, base.body if rng.random() < 0.5 else b""))


def mutate(rng: random.Random, data: bytes) -> bytes:
    buffer = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        kind = rng.random()
        position = rng.randrange(len(buffer)) if buffer else 0
        if kind < 0.25:
            buffer[position : position + 1] = rng.choice(TOKENS)
        elif kind < 0.45:
            buffer[position:position] = rng.choice(TOKENS)
        elif kind < 0.6:
            del buffer[position : position + rng.randint(1, 30)]
        elif kind < 0.7:
            del buffer[position:]
        elif kind < 0.8 and buffer:
            buffer[position] ^= 1 << rng.randrange(8)
        else:
            lines = bytes(buffer).split(b"\r\n")
            i, j = rng.randrange(len(lines)), rng.randrange(len(lines))
            if kind < 0.9:
                lines.insert(j, lines[i])
            else:
                lines[i], lines[j] = lines[j], lines[i]
            buffer = bytearray(b"\r\n".join(lines))
    return bytes(buffer)


class FuzzTransactionUser:
    """Answers like a careless TU would: sometimes at once, sometimes later, sometimes never."""

    def __init__(self, rng: random.Random, layer: TransactionLayer) -> None:
        self.rng = rng
        self.layer = layer
        self.later: list[tuple[TransactionId, SipRequest]] = []
        self.ours: list[SipRequest] = []  # requests we sent: the peer's responses to them are generated
        self.events = 0

    def handle(self, events: Sequence[TransactionEvent], now: float) -> None:
        for event in events:
            self.events += 1
            if isinstance(event, RequestReceived):
                choice = self.rng.random()
                if choice < 0.4:
                    self.respond(event.transaction, event.request, self.rng.choice(STATUSES), now)
                elif choice < 0.8:
                    self.later.append((event.transaction, event.request))
            elif isinstance(event, ResponseReceived):
                assert event.request in self.ours

    def respond(self, tid: TransactionId, request: SipRequest, status: int, now: float) -> None:
        try:
            response = make_response(request, status, to_tag="uas-tag" if status > 100 else None)
        except SipParseError:
            return  # the request's To header would not take a tag: a real TU answers 400 instead
        self.layer.respond(tid, response, now)

    def step(self, now: float) -> None:
        if self.later and self.rng.random() < 0.3:
            tid, request = self.later.pop(self.rng.randrange(len(self.later)))
            self.respond(tid, request, self.rng.choice(STATUSES), now)
        if self.rng.random() < 0.02:
            request = self.rng.choice(REQUESTS)
            method = self.rng.choice(["INVITE", "BYE", "OPTIONS", "REGISTER"])
            headers = request.headers.copy()
            headers.set("Via", f"SIP/2.0/UDP 198.51.100.1:5060;branch={generate_branch()}")
            headers.set("CSeq", f"1 {method}")
            ours = SipRequest(method, request.uri, headers)
            self.layer.send_request(ours, self.rng.choice(SOURCES), self.rng.choice(["UDP", "TCP"]), now)
            self.ours.append(ours)

    def peer_response(self) -> bytes:
        """A response (maybe mangled) to one of our own requests."""
        request = self.rng.choice(self.ours)
        status = self.rng.choice(STATUSES)
        data = bytes(make_response(request, status, to_tag="peer" if status > 100 else None))
        return mutate(self.rng, data) if self.rng.random() < 0.3 else data


def run_fuzz(seed: int, count: int) -> tuple[TransactionLayer, FuzzTransactionUser, int]:
    rng = random.Random(seed)
    layer = TransactionLayer()
    tu = FuzzTransactionUser(rng, layer)
    framer = StreamFramer()
    branches = [generate_branch() for _ in range(40)] + ["1", "old-2543"]
    now = 0.0
    sent = 0
    for _ in range(count):
        now += rng.expovariate(200.0)  # ~200 messages per second of fake time
        roll = rng.random()
        if roll < 0.45:
            data = mutate(rng, rng.choice(SAMPLES))
        elif roll < 0.85:
            data = well_formed_variant(rng, branches)
            if rng.random() < 0.3:
                data = mutate(rng, data)
        elif tu.ours and roll < 0.97:
            data = tu.peer_response()
        else:
            data = bytes(rng.randbytes(rng.randint(0, 200)))
        source = rng.choice(SOURCES)
        if rng.random() < 0.1:
            # The TCP path: the same bytes cut at random points through the framer.
            try:
                cut = rng.randint(0, len(data))
                messages = framer.feed(data[:cut]) + framer.feed(data[cut:])
            except FramingError:
                framer = StreamFramer()
                messages = []
            for message in messages:
                tu.handle(layer.receive_data(message, source, "TCP", now), now)
        else:
            tu.handle(layer.receive_data(data, source, "UDP", now), now)
        tu.step(now)
        deadline = layer.next_timer()
        if deadline is not None and deadline <= now:
            tu.handle(layer.tick(now), now)
        sent += len(layer.pop_outgoing())
    # The end: answer nothing more, let every timer run out.
    end = now + 1000.0
    while (deadline := layer.next_timer()) is not None:
        assert deadline <= end, "a timer keeps re-arming itself"
        tu.handle(layer.tick(deadline), deadline)
    sent += len(layer.pop_outgoing())
    return layer, tu, sent


def test_100k_mutated_messages_leave_no_transaction_open() -> None:
    started = time.perf_counter()
    layer, tu, sent = run_fuzz(seed=20261103, count=MESSAGES)
    elapsed = time.perf_counter() - started
    print(
        f"\n{MESSAGES} messages in {elapsed:.1f} s: {tu.events} events, {sent} datagrams out, "
        f"{layer.malformed} malformed, {len(tu.ours)} client transactions"
    )
    assert len(layer) == 0
    assert layer.next_timer() is None
    assert layer.malformed > MESSAGES // 10  # the mutator really does produce garbage ...
    assert tu.events > MESSAGES // 2  # ... and really does reach transactions


operations = st.lists(
    st.tuples(
        st.integers(0, len(SAMPLES) - 1),
        st.lists(st.tuples(st.integers(0, 10_000), st.sampled_from(TOKENS), st.integers(0, 3)), max_size=4),
        st.floats(0, 40, allow_nan=False),
        st.sampled_from(METHODS),
        st.integers(0, 3),
    ),
    min_size=1,
    max_size=25,
)


@settings(max_examples=300, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(operations)
def test_hypothesis_message_sequences_drain_completely(
    ops: list[tuple[int, list[tuple[int, bytes, int]], float, str, int]],
) -> None:
    layer = TransactionLayer()
    now = 0.0
    for sample, edits, step, method, status_index in ops:
        data = bytearray(SAMPLES[sample])
        if not data.startswith(b"SIP/2.0") and not edits:
            # An unmutated request keeps its branch: renaming the method makes it another transaction.
            data = bytearray(data.replace(data.split(b" ", 1)[0], method.encode(), 1))
        for position, token, action in edits:
            at = position % (len(data) + 1)
            if action == 0:
                data[at:at] = token
            elif action == 1:
                data[at : at + len(token)] = token
            elif action == 2:
                del data[at : at + 8]
            else:
                del data[at:]
        now += step
        for event in layer.receive_data(bytes(data), SOURCES[status_index % len(SOURCES)], "UDP", now):
            if isinstance(event, RequestReceived) and status_index:
                try:
                    response = make_response(event.request, STATUSES[status_index * 3], to_tag="t")
                except SipParseError:
                    continue
                layer.respond(event.transaction, response, now)
        layer.tick(now)
    while (deadline := layer.next_timer()) is not None:
        layer.tick(deadline)
    assert len(layer) == 0

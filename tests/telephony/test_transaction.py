"""RFC 3261 section 17 transactions against a fake clock: every timer A-M, absorption, ACKs, failures."""

from __future__ import annotations

import pytest

from telephony.sip.message import SipRequest, SipResponse, Via, make_response, parse_message
from telephony.sip.transaction import (
    AckReceived,
    MessageRejected,
    Outgoing,
    RequestReceived,
    ResponseReceived,
    StrayResponse,
    TimerConfig,
    TransactionError,
    TransactionEvent,
    TransactionId,
    TransactionLayer,
    TransactionTerminated,
    TransactionTimedOut,
    TransportFailed,
    build_cancel,
)

PEER = ("192.0.2.10", 5060)
US = ("198.51.100.1", 5060)


def request_bytes(
    method: str,
    *,
    branch: str = "z9hG4bK-aaa",
    cseq: int = 1,
    cseq_method: str | None = None,
    to_tag: str | None = None,
    via: str = "SIP/2.0/UDP 192.0.2.10:5060",
    call_id: str = "tx-1@test",
) -> bytes:
    to = "<sip:agent@198.51.100.1>" + (f";tag={to_tag}" if to_tag else "")
    lines = [
        f"{method} sip:agent@198.51.100.1 SIP/2.0",
        f"Via: {via};branch={branch}",
        "Max-Forwards: 70",
        "From: <sip:caller@192.0.2.10>;tag=from-1",
        f"To: {to}",
        f"Call-ID: {call_id}",
        f"CSeq: {cseq} {cseq_method or method}",
        "Content-Length: 0",
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def parsed_request(data: bytes) -> SipRequest:
    message = parse_message(data)
    assert isinstance(message, SipRequest)
    return message


def our_request(method: str, branch: str = "z9hG4bK-ours") -> SipRequest:
    return parsed_request(
        request_bytes(method, branch=branch, via="SIP/2.0/UDP 198.51.100.1:5060", call_id="ours@test")
    )


def response_to(request: SipRequest, status: int, to_tag: str | None = "peer-tag") -> bytes:
    return bytes(make_response(request, status, to_tag=to_tag if status > 100 else None))


def sent(layer: TransactionLayer) -> list[SipRequest | SipResponse]:
    return [parse_message(out.data) for out in layer.pop_outgoing()]


def statuses(layer: TransactionLayer) -> list[int | str]:
    return [m.status if isinstance(m, SipResponse) else m.method for m in sent(layer)]


def fire_until(
    layer: TransactionLayer, end: float
) -> list[tuple[float, list[TransactionEvent], list[Outgoing]]]:
    """Run every timer up to `end`; returns (time, events, datagrams) per wake-up."""
    wakeups = []
    while (deadline := layer.next_timer()) is not None and deadline <= end:
        events = layer.tick(deadline)
        wakeups.append((deadline, events, layer.pop_outgoing()))
    return wakeups


def server_invite(layer: TransactionLayer, now: float = 0.0) -> TransactionId:
    events = layer.receive_data(request_bytes("INVITE"), PEER, "UDP", now)
    assert len(events) == 1 and isinstance(events[0], RequestReceived)
    return events[0].transaction


# --- INVITE server ------------------------------------------------------------------------------------


def test_invite_server_sends_100_trying_when_the_tu_is_slow() -> None:
    layer = TransactionLayer()
    server_invite(layer)
    assert layer.pop_outgoing() == []
    assert layer.next_timer() == pytest.approx(0.2)
    layer.tick(0.2)
    assert statuses(layer) == [100]


def test_invite_server_no_100_when_the_tu_answers_at_once() -> None:
    layer = TransactionLayer()
    tid = server_invite(layer)
    request = layer.request(tid)
    assert request is not None
    layer.respond(tid, make_response(request, 503, extra=[("Retry-After", "5")]), 0.0)
    assert statuses(layer) == [503]
    assert all(out.data.startswith(b"SIP/2.0 503") for _, _, outs in fire_until(layer, 1.0) for out in outs)


def test_invite_server_failure_is_retransmitted_on_timer_g_until_ack() -> None:
    layer = TransactionLayer()
    tid = server_invite(layer)
    request = layer.request(tid)
    assert request is not None
    layer.respond(tid, make_response(request, 486, to_tag="t"), 0.0)
    assert statuses(layer) == [486]
    wakeups = fire_until(layer, 12.0)
    # G doubles from T1 and is capped at T2 (17.2.1): 0.5, 1.5, 3.5, 7.5, 11.5
    assert [round(t, 3) for t, _, outs in wakeups if outs] == [0.5, 1.5, 3.5, 7.5, 11.5]
    # A retransmitted INVITE is answered with the same final response.
    assert layer.receive_data(request_bytes("INVITE"), PEER, "UDP", 12.0) == []
    assert statuses(layer) == [486]
    # The ACK (same branch) ends the retransmissions; Timer I then absorbs ACK copies for T4.
    assert layer.receive_data(request_bytes("ACK", cseq_method="ACK", to_tag="t"), PEER, "UDP", 12.1) == []
    assert layer.state(tid) == "confirmed"
    assert layer.receive_data(request_bytes("ACK", to_tag="t"), PEER, "UDP", 13.0) == []
    wakeups = fire_until(layer, 100.0)
    assert [round(t, 3) for t, _, _ in wakeups] == [17.1]
    assert all(not outs for _, _, outs in wakeups)
    assert len(layer) == 0 and layer.next_timer() is None


def test_invite_server_without_ack_times_out_on_timer_h() -> None:
    layer = TransactionLayer()
    tid = server_invite(layer)
    request = layer.request(tid)
    assert request is not None
    layer.respond(tid, make_response(request, 404, to_tag="t"), 0.0)
    wakeups = fire_until(layer, 100.0)
    events = [e for _, evs, _ in wakeups for e in evs]
    assert events[0] == TransactionTimedOut(tid, request, "H")
    assert isinstance(events[1], TransactionTerminated)
    assert wakeups[-1][0] == pytest.approx(32.0)
    assert len(layer) == 0


def test_invite_server_accepted_state_absorbs_and_passes_ack() -> None:
    layer = TransactionLayer()
    tid = server_invite(layer)
    request = layer.request(tid)
    assert request is not None
    ok = make_response(request, 200, to_tag="t")
    assert layer.respond(tid, ok, 0.0)
    assert layer.state(tid) == "accepted"
    layer.pop_outgoing()
    # RFC 6026: the transaction does not retransmit the 2xx by itself ...
    assert fire_until(layer, 20.0) == []
    # ... but it lets the TU do it, and answers a retransmitted INVITE with it.
    assert layer.respond(tid, ok, 20.0)
    layer.receive_data(request_bytes("INVITE"), PEER, "UDP", 21.0)
    assert statuses(layer) == [200, 200]
    # An ACK for the 2xx normally has its own branch: no transaction, the TU gets it.
    events = layer.receive_data(request_bytes("ACK", branch="z9hG4bK-ack", to_tag="t"), PEER, "UDP", 22.0)
    assert len(events) == 1 and isinstance(events[0], AckReceived)
    wakeups = fire_until(layer, 100.0)
    assert wakeups[-1][0] == pytest.approx(32.0)  # Timer L
    assert len(layer) == 0


def test_tu_that_never_answers_an_invite_gets_408_from_the_guard() -> None:
    layer = TransactionLayer(TimerConfig(tu_invite_timeout=10.0))
    tid = server_invite(layer)
    wakeups = fire_until(layer, 10.0)
    events = [e for _, evs, _ in wakeups for e in evs]
    assert any(isinstance(e, TransactionTimedOut) and e.timer == "TU" for e in events)
    assert [out.data[:12] for _, _, outs in wakeups for out in outs] == [b"SIP/2.0 100 ", b"SIP/2.0 408 "]
    assert layer.state(tid) == "completed"
    fire_until(layer, 100.0)
    assert len(layer) == 0


# --- non-INVITE server --------------------------------------------------------------------------------


def test_non_invite_server_absorbs_then_answers_retransmissions() -> None:
    layer = TransactionLayer()
    events = layer.receive_data(request_bytes("OPTIONS"), PEER, "UDP", 0.0)
    assert isinstance(events[0], RequestReceived)
    tid = events[0].transaction
    # Trying: a retransmission is absorbed silently (nothing to answer with yet).
    assert layer.receive_data(request_bytes("OPTIONS"), PEER, "UDP", 0.5) == []
    assert layer.pop_outgoing() == []
    request = layer.request(tid)
    assert request is not None
    layer.respond(tid, make_response(request, 200), 1.0)
    assert statuses(layer) == [200]
    layer.receive_data(request_bytes("OPTIONS"), PEER, "UDP", 2.0)
    assert statuses(layer) == [200]
    assert not layer.respond(tid, make_response(request, 500), 2.5)  # one final response only
    wakeups = fire_until(layer, 100.0)
    assert wakeups[-1][0] == pytest.approx(33.0)  # Timer J = 64*T1 after the final response
    assert len(layer) == 0


def test_non_invite_server_over_tcp_terminates_at_once() -> None:
    layer = TransactionLayer()
    events = layer.receive_data(request_bytes("BYE", via="SIP/2.0/TCP 192.0.2.10:5060"), PEER, "TCP", 0.0)
    tid = events[0].transaction  # type: ignore[union-attr]
    request = layer.request(tid)
    assert request is not None
    layer.respond(tid, make_response(request, 200), 0.0)
    fire_until(layer, 0.0)
    assert len(layer) == 0


def test_non_invite_server_ignored_by_the_tu_is_dropped_after_64_t1() -> None:
    layer = TransactionLayer()
    layer.receive_data(request_bytes("INFO"), PEER, "UDP", 0.0)
    events = [e for _, evs, _ in fire_until(layer, 100.0) for e in evs]
    assert [type(e) for e in events] == [TransactionTimedOut, TransactionTerminated]
    assert layer.pop_outgoing() == [] and len(layer) == 0


# --- INVITE client ------------------------------------------------------------------------------------


def test_invite_client_retransmits_on_timer_a_and_times_out_on_b() -> None:
    layer = TransactionLayer()
    invite = our_request("INVITE")
    tid = layer.send_request(invite, PEER, "UDP", 0.0)
    assert statuses(layer) == ["INVITE"]
    wakeups = fire_until(layer, 100.0)
    sends = [round(t, 3) for t, _, outs in wakeups if outs]
    assert sends == [0.5, 1.5, 3.5, 7.5, 15.5, 31.5]  # A doubles without a cap until B
    events = [e for _, evs, _ in wakeups for e in evs]
    assert events[0] == TransactionTimedOut(tid, invite, "B")
    assert wakeups[-1][0] == pytest.approx(32.0)
    assert len(layer) == 0


def test_invite_client_failure_is_acked_by_the_transaction() -> None:
    layer = TransactionLayer()
    invite = our_request("INVITE")
    tid = layer.send_request(invite, PEER, "UDP", 0.0)
    layer.pop_outgoing()
    events = layer.receive_data(response_to(invite, 100, None), PEER, "UDP", 0.1)
    assert isinstance(events[0], ResponseReceived) and layer.state(tid) == "proceeding"
    assert fire_until(layer, 10.0) == []  # no retransmission after a provisional
    events = layer.receive_data(response_to(invite, 486), PEER, "UDP", 11.0)
    assert isinstance(events[0], ResponseReceived) and events[0].response.status == 486
    (ack,) = sent(layer)
    assert isinstance(ack, SipRequest) and ack.method == "ACK"
    assert Via.parse(ack.headers["Via"]).branch == "z9hG4bK-ours"  # 17.1.1.3: same branch
    assert ack.headers["To"].endswith("tag=peer-tag") and ack.headers["CSeq"] == "1 ACK"
    # A retransmitted 486 is ACKed again and never reaches the TU.
    assert layer.receive_data(response_to(invite, 486), PEER, "UDP", 12.0) == []
    assert statuses(layer) == ["ACK"]
    wakeups = fire_until(layer, 100.0)
    assert wakeups[-1][0] == pytest.approx(43.0)  # Timer D = 32 s
    assert len(layer) == 0


def test_invite_client_2xx_and_its_retransmissions_go_to_the_tu() -> None:
    layer = TransactionLayer()
    invite = our_request("INVITE")
    tid = layer.send_request(invite, PEER, "UDP", 0.0)
    layer.pop_outgoing()
    for at in (0.2, 0.7):
        events = layer.receive_data(response_to(invite, 200), PEER, "UDP", at)
        assert [type(e) for e in events] == [ResponseReceived]
    assert layer.state(tid) == "accepted"
    assert layer.pop_outgoing() == []  # the ACK for a 2xx is the TU's
    wakeups = fire_until(layer, 100.0)
    assert wakeups[-1][0] == pytest.approx(32.2)  # Timer M
    assert layer.receive_data(response_to(invite, 200), PEER, "UDP", 40.0) == [
        StrayResponse(parse_message(response_to(invite, 200)), PEER, "UDP")  # type: ignore[arg-type]
    ]


def test_invite_ringing_too_long_fires_timer_c_then_b() -> None:
    layer = TransactionLayer(TimerConfig(timer_c=60.0))
    invite = our_request("INVITE")
    tid = layer.send_request(invite, PEER, "UDP", 0.0)
    layer.receive_data(response_to(invite, 180), PEER, "UDP", 1.0)
    layer.receive_data(response_to(invite, 180), PEER, "UDP", 30.0)  # a new provisional restarts C
    wakeups = fire_until(layer, 200.0)
    events = [(t, e) for t, evs, _ in wakeups for e in evs]
    assert events[0][0] == pytest.approx(90.0)
    assert events[0][1] == TransactionTimedOut(tid, invite, "C")
    assert events[1][0] == pytest.approx(122.0)
    assert events[1][1] == TransactionTimedOut(tid, invite, "B")
    assert len(layer) == 0


# --- non-INVITE client --------------------------------------------------------------------------------


def test_non_invite_client_timer_e_caps_at_t2_and_f_times_out() -> None:
    layer = TransactionLayer()
    bye = our_request("BYE")
    layer.send_request(bye, PEER, "UDP", 0.0)
    layer.pop_outgoing()
    wakeups = fire_until(layer, 100.0)
    sends = [round(t, 3) for t, _, outs in wakeups if outs]
    assert sends == [0.5, 1.5, 3.5, 7.5, 11.5, 15.5, 19.5, 23.5, 27.5, 31.5]
    assert isinstance(wakeups[-1][1][0], TransactionTimedOut) and wakeups[-1][1][0].timer == "F"


def test_non_invite_client_after_provisional_retransmits_every_t2() -> None:
    layer = TransactionLayer()
    register = our_request("REGISTER")
    tid = layer.send_request(register, PEER, "UDP", 0.0)
    layer.pop_outgoing()
    layer.receive_data(response_to(register, 100, None), PEER, "UDP", 0.1)
    sends = [round(t, 3) for t, _, outs in fire_until(layer, 9.0) if outs]
    assert sends == [0.5, 4.5, 8.5]
    events = layer.receive_data(response_to(register, 200), PEER, "UDP", 9.0)
    assert isinstance(events[0], ResponseReceived) and layer.state(tid) == "completed"
    assert layer.receive_data(response_to(register, 200), PEER, "UDP", 9.5) == []  # absorbed in Completed
    wakeups = fire_until(layer, 100.0)
    assert wakeups[-1][0] == pytest.approx(14.0)  # Timer K = T4
    assert len(layer) == 0


def test_reliable_transport_never_retransmits() -> None:
    layer = TransactionLayer()
    layer.send_request(our_request("OPTIONS"), PEER, "TCP", 0.0)
    layer.pop_outgoing()
    wakeups = fire_until(layer, 100.0)
    assert all(not outs for _, _, outs in wakeups)
    assert wakeups[-1][0] == pytest.approx(32.0)  # but F still ends it


def test_custom_t1_scales_every_timer() -> None:
    layer = TransactionLayer(TimerConfig(t1=0.1, t2=0.4))
    layer.send_request(our_request("OPTIONS"), PEER, "UDP", 0.0)
    layer.pop_outgoing()
    wakeups = fire_until(layer, 100.0)
    assert [round(t, 3) for t, _, outs in wakeups if outs][:4] == [0.1, 0.3, 0.7, 1.1]
    assert wakeups[-1][0] == pytest.approx(6.4)


def test_transport_error_fails_the_transaction() -> None:
    layer = TransactionLayer()
    invite = our_request("INVITE")
    tid = layer.send_request(invite, PEER, "TCP", 0.0)
    events = layer.transport_error(PEER, "TCP", 0.1)
    assert events == [TransportFailed(tid, invite), TransactionTerminated(tid)]
    assert len(layer) == 0 and layer.next_timer() is None


def test_client_misuse_raises_transaction_error() -> None:
    layer = TransactionLayer()
    with pytest.raises(TransactionError):
        layer.send_request(our_request("ACK"), PEER, "UDP", 0.0)
    with pytest.raises(TransactionError):
        layer.send_request(our_request("OPTIONS", branch="old-style"), PEER, "UDP", 0.0)
    layer.send_request(our_request("OPTIONS"), PEER, "UDP", 0.0)
    with pytest.raises(TransactionError):
        layer.send_request(our_request("OPTIONS"), PEER, "UDP", 0.0)


# --- matching, rport, malformed input -----------------------------------------------------------------


def test_cancel_matches_its_invite_and_build_cancel_copies_the_hop() -> None:
    layer = TransactionLayer()
    tid = server_invite(layer)
    events = layer.receive_data(request_bytes("CANCEL"), PEER, "UDP", 0.1)
    assert isinstance(events[0], RequestReceived)
    cancel_tid = events[0].transaction
    assert cancel_tid != tid and layer.matching_invite(events[0].request) == tid
    invite = our_request("INVITE")
    cancel = build_cancel(invite)
    assert cancel.headers["Via"] == invite.headers["Via"] and cancel.headers["CSeq"] == "1 CANCEL"
    assert cancel.uri == invite.uri and "tag=" not in cancel.headers["To"]


def test_rport_and_received_are_stamped_and_used() -> None:
    layer = TransactionLayer()
    nat = ("203.0.113.7", 40123)
    data = request_bytes("OPTIONS", via="SIP/2.0/UDP 10.0.0.5:5060;rport")
    events = layer.receive_data(data, nat, "UDP", 0.0)
    assert isinstance(events[0], RequestReceived)
    request = events[0].request
    via = Via.parse(request.headers["Via"])
    assert via.params["received"] == "203.0.113.7" and via.params["rport"] == "40123"
    layer.respond(events[0].transaction, make_response(request, 200), 0.0)
    (out,) = layer.pop_outgoing()
    assert out.dest == nat  # RFC 3581: back to the source port
    assert b"rport=40123" in out.data and b"received=203.0.113.7" in out.data


def test_without_rport_the_response_goes_to_the_via_port() -> None:
    layer = TransactionLayer()
    data = request_bytes("OPTIONS", via="SIP/2.0/UDP 192.0.2.10:5070")
    events = layer.receive_data(data, ("192.0.2.10", 33333), "UDP", 0.0)
    assert isinstance(events[0], RequestReceived)
    layer.respond(events[0].transaction, make_response(events[0].request, 200), 0.0)
    assert layer.pop_outgoing()[0].dest == ("192.0.2.10", 5070)


def test_rfc2543_peers_without_magic_cookie_still_match() -> None:
    layer = TransactionLayer()
    old = request_bytes("INVITE", branch="1")
    events = layer.receive_data(old, PEER, "UDP", 0.0)
    assert isinstance(events[0], RequestReceived)
    tid = events[0].transaction
    assert layer.receive_data(old, PEER, "UDP", 0.1) == []
    layer.respond(tid, make_response(events[0].request, 486, to_tag="t"), 0.2)
    layer.receive_data(request_bytes("ACK", branch="1", to_tag="t"), PEER, "UDP", 0.3)
    assert layer.state(tid) == "confirmed"


def test_malformed_requests_get_400_or_nothing() -> None:
    layer = TransactionLayer()
    bad_cseq = request_bytes("OPTIONS").replace(b"CSeq: 1 OPTIONS", b"CSeq: x OPTIONS")
    events = layer.receive_data(bad_cseq, PEER, "UDP", 0.0)
    assert isinstance(events[0], MessageRejected) and events[0].status == 400
    (answer,) = layer.pop_outgoing()  # it echoes the broken CSeq (8.2.6.2), so read the status line raw
    assert answer.data.startswith(b"SIP/2.0 400 Malformed CSeq header\r\n") and answer.dest == PEER
    bad_ack = request_bytes("ACK").replace(b"CSeq: 1 ACK", b"CSeq: x ACK")
    layer.receive_data(bad_ack, PEER, "UDP", 0.0)
    assert layer.pop_outgoing() == []  # an ACK is never answered
    assert isinstance(layer.receive_data(b"\x00garbage\r\n\r\n", PEER, "UDP", 0.0)[0], MessageRejected)
    assert layer.receive_data(b"\r\n\r\n", PEER, "UDP", 0.0) == []  # keep-alive
    bad_via_response = b"SIP/2.0 200 OK\r\nVia: nonsense\r\nFrom: <sip:a@b>;tag=1\r\nTo: <sip:c@d>\r\n"
    bad_via_response += b"Call-ID: x\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
    assert isinstance(layer.receive_data(bad_via_response, PEER, "UDP", 0.0)[0], MessageRejected)
    assert layer.malformed == 4 and len(layer) == 0


def test_transaction_table_limit_answers_503() -> None:
    layer = TransactionLayer(max_transactions=2)
    for n in range(3):
        layer.receive_data(request_bytes("OPTIONS", branch=f"z9hG4bK-{n}"), PEER, "UDP", 0.0)
    assert statuses(layer) == [503]
    assert len(layer) == 2


def test_discard_forgets_a_server_transaction_silently() -> None:
    layer = TransactionLayer()
    tid = server_invite(layer)
    layer.discard(tid)
    assert len(layer) == 0 and layer.next_timer() is None and layer.pop_outgoing() == []

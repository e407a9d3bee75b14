"""RFC 3261 section 12 dialogs: identity, route sets, CSeq ordering, target refresh, 2xx until ACK, the ACKs
we keep for retransmitted 2xx, the INVITEs we keep for 2xx that come when no call wants them (and the ACK
and BYE those get), and the glare wait."""

from __future__ import annotations

import random
from collections.abc import Callable

import pytest

from telephony.sip.dialog import (
    AnswerRetransmitter,
    Dialog,
    DialogError,
    DialogId,
    SentAcks,
    SentInvites,
    answer_unwanted_2xx,
    dialog_id_for_request,
    dialog_id_for_response,
    glare_retry_delay,
)
from telephony.sip.message import SipRequest, SipResponse, Via, make_response, parse_message
from telephony.sip.transaction import Outgoing, TimerConfig, TransactionId
from tests.telephony.sip_samples import load_sip

US = ("198.51.100.1", 5060)


def request(data: bytes) -> SipRequest:
    message = parse_message(data)
    assert isinstance(message, SipRequest)
    return message


def invite_with_routes(record_routes: list[str], contact: str = "<sip:caller@192.0.2.10:5062>") -> SipRequest:
    lines = [
        "INVITE sip:agent@198.51.100.1 SIP/2.0",
        "Via: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bK-d1",
        *(f"Record-Route: {route}" for route in record_routes),
        'From: "Caller" <sip:+15550100002@192.0.2.10>;tag=remote-tag',
        "To: <sip:agent@198.51.100.1>",
        "Call-ID: dialog-1@test",
        "CSeq: 10 INVITE",
        f"Contact: {contact}",
        "Content-Length: 0",
    ]
    return request(("\r\n".join(lines) + "\r\n\r\n").encode())


def test_uas_dialog_from_an_invite() -> None:
    invite = invite_with_routes(["<sip:p1.example;lr>", "<sip:p2.example;lr>"])
    dialog = Dialog.from_uas(invite, "local-tag", local_seq=500)
    assert dialog.id == DialogId("dialog-1@test", "local-tag", "remote-tag")
    assert dialog.remote_target == "sip:caller@192.0.2.10:5062"
    assert dialog.remote_seq == 10
    assert dialog.route_set == ["<sip:p1.example;lr>", "<sip:p2.example;lr>"]  # UAS keeps the order
    bye = dialog.create_request("BYE", transport="UDP", sent_by=US)
    assert bye.uri == "sip:caller@192.0.2.10:5062"  # loose routing: the remote target
    assert bye.headers.get_all("Route") == ["<sip:p1.example;lr>", "<sip:p2.example;lr>"]
    assert bye.headers["CSeq"] == "501 BYE"
    assert bye.headers["From"] == "<sip:agent@198.51.100.1>;tag=local-tag"
    assert bye.headers["To"] == '"Caller" <sip:+15550100002@192.0.2.10>;tag=remote-tag'
    via = Via.parse(bye.headers["Via"])
    assert (via.host, via.port) == US and (via.branch or "").startswith("z9hG4bK") and "rport" in via.params
    # Seen from the peer, which receives it, the tags swap places.
    assert dialog_id_for_request(request(bytes(bye))) == DialogId("dialog-1@test", "remote-tag", "local-tag")


def test_uac_dialog_reverses_the_route_set() -> None:
    invite = request(load_sip("sipp_uac_invite.txt"))
    response = make_response(
        invite, 200, to_tag="their-tag", extra=[("Contact", "<sip:pbx@203.0.113.9:5080;transport=udp>")]
    )
    response.headers.add("Record-Route", "<sip:edge.example;lr>")
    response.headers.add("Record-Route", "<sip:core.example;lr>")
    dialog = Dialog.from_uac(invite, response)
    assert dialog.state == "confirmed"
    assert dialog.route_set == ["<sip:core.example;lr>", "<sip:edge.example;lr>"]
    assert dialog.remote_target == "sip:pbx@203.0.113.9:5080;transport=udp"
    assert dialog_id_for_response(response) == dialog.id
    ack = dialog.create_ack(1, transport="UDP", sent_by=US)
    assert ack.headers["CSeq"] == "1 ACK" and dialog.local_seq == 1  # ACK does not consume a number
    assert ack.headers.get_all("Route") == dialog.route_set


def test_strict_router_gets_the_request_uri_and_the_target_goes_last() -> None:
    invite = invite_with_routes(["<sip:strict.example>", "<sip:loose.example;lr>"])
    dialog = Dialog.from_uas(invite, "t", local_seq=1)
    info = dialog.create_request("INFO", transport="TCP", sent_by=US)
    assert info.uri == "sip:strict.example"
    assert info.headers.get_all("Route") == ["<sip:loose.example;lr>", "<sip:caller@192.0.2.10:5062>"]
    assert info.headers["Via"].startswith("SIP/2.0/TCP ")


def test_out_of_order_requests_get_500() -> None:
    dialog = Dialog.from_uas(invite_with_routes([]), "t", local_seq=1)

    def in_dialog(method: str, cseq: int) -> SipRequest:
        invite = invite_with_routes([])
        invite.method = method
        invite.headers.set("CSeq", f"{cseq} {method}")
        return invite

    dialog.check_request(in_dialog("INFO", 11))
    dialog.check_request(in_dialog("ACK", 10))  # ACK and CANCEL do not take part in ordering
    with pytest.raises(DialogError) as error:
        dialog.check_request(in_dialog("BYE", 11))
    assert error.value.status == 500
    with pytest.raises(DialogError):
        dialog.check_request(in_dialog("BYE", 3))
    dialog.check_request(in_dialog("BYE", 12))
    assert dialog.remote_seq == 12


def test_target_refresh_and_bad_contacts() -> None:
    dialog = Dialog.from_uas(invite_with_routes([]), "t", local_seq=1)
    reinvite = invite_with_routes([], contact="<sip:caller@192.0.2.99:6000>")
    dialog.refresh_target(reinvite)
    assert dialog.remote_target == "sip:caller@192.0.2.99:6000"
    with pytest.raises(DialogError):
        Dialog.from_uas(invite_with_routes([], contact="<sip:caller@bad host>"), "t", local_seq=1)
    with pytest.raises(DialogError):
        dialog.refresh_target(invite_with_routes([], contact="<http://example.com/>"))


def test_response_without_to_tag_cannot_make_a_dialog() -> None:
    invite = request(load_sip("sipp_uac_invite.txt"))
    with pytest.raises(DialogError):
        Dialog.from_uac(invite, make_response(invite, 200))


def test_answer_retransmitter_doubles_to_t2_until_ack() -> None:
    answers = AnswerRetransmitter(TimerConfig())
    dialog = DialogId("c", "l", "r")
    answers.start(dialog, 1, b"200", ("192.0.2.10", 5060), "UDP", 0.0)
    times = []
    while (deadline := answers.next_timer()) is not None and deadline < 9.0:
        resend, expired = answers.tick(deadline)
        assert not expired
        times += [round(deadline, 3)] * len(resend)
    assert times == [0.5, 1.5, 3.5, 7.5]
    assert answers.acknowledge(dialog, 1)
    assert not answers.acknowledge(dialog, 1)  # a retransmitted ACK
    assert answers.next_timer() is None and len(answers) == 0


def test_answer_retransmitter_gives_up_after_64_t1() -> None:
    answers = AnswerRetransmitter(TimerConfig())
    dialog = DialogId("c", "l", "r")
    answers.start(dialog, 1, b"200", ("192.0.2.10", 5060), "TCP", 0.0)
    resend, expired = answers.tick(31.9)
    assert resend == [] and expired == []  # reliable transport: nothing to resend
    resend, expired = answers.tick(32.0)
    assert expired == [dialog] and len(answers) == 0


def test_responses_copy_dialog_identity() -> None:
    invite = invite_with_routes([])
    ok: SipResponse = make_response(invite, 200, to_tag="local")
    assert dialog_id_for_response(ok) == DialogId("dialog-1@test", "remote-tag", "local")
    assert dialog_id_for_request(invite) is None


CALL_A = DialogId("call-a", "ours", "theirs")
CALL_B = DialogId("call-b", "ours", "theirs")


def test_sent_acks_are_found_again_until_64_t1_after_they_were_sent() -> None:
    acks = SentAcks(hold_s=TimerConfig().timeout_64t1)
    first = Outgoing(b"ACK 7", ("192.0.2.10", 5060), "UDP")
    later = Outgoing(b"ACK 9", ("192.0.2.10", 5060), "UDP")
    acks.remember(CALL_A, 7, first, now=0.0)
    acks.remember(CALL_A, 9, later, now=10.0)
    assert acks.lookup(CALL_A, 7, now=31.9) == first  # the 2xx to CSeq 7 came again
    assert acks.lookup(CALL_A, 8, now=31.9) is None  # never ACKed by us: nothing to resend
    assert acks.lookup(CALL_B, 7, now=31.9) is None
    assert acks.lookup(CALL_A, 7, now=32.0) is None and len(acks) == 1  # forgotten, the later one kept
    assert acks.lookup(CALL_A, 9, now=41.9) == later
    assert acks.lookup(CALL_A, 9, now=42.0) is None and len(acks) == 0


def test_an_ack_sent_again_is_kept_from_its_last_sending() -> None:
    acks = SentAcks(hold_s=32.0)
    ack = Outgoing(b"ACK 1", ("192.0.2.10", 5060), "UDP")
    acks.remember(CALL_A, 1, ack, now=0.0)
    acks.remember(CALL_B, 1, ack, now=5.0)
    acks.remember(CALL_A, 1, ack, now=20.0)  # the same 2xx, a new ACK for it
    assert acks.lookup(CALL_B, 1, now=37.0) is None  # call-b expired first although stored second
    assert acks.lookup(CALL_A, 1, now=51.9) == ack


def test_the_two_dialogs_of_a_forked_invite_keep_their_own_acks() -> None:
    # Same Call-ID and CSeq, two UASs (To tags): the ACK of one must never answer the other's 2xx.
    acks = SentAcks(hold_s=32.0)
    first_fork = DialogId("call-a", "ours", "uas-1")
    ack = Outgoing(b"ACK to uas-1", ("192.0.2.10", 5060), "UDP")
    acks.remember(first_fork, 1, ack, now=0.0)
    assert acks.lookup(first_fork, 1, now=1.0) == ack
    assert acks.lookup(DialogId("call-a", "ours", "uas-2"), 1, now=1.0) is None


def test_sent_invites_last_as_long_as_their_transaction_then_64_t1() -> None:
    invites: SentInvites[str] = SentInvites(hold_s=32.0)
    early = TransactionId("client", "z9hG4bK-1", "", "INVITE")
    long_ringing = TransactionId("client", "z9hG4bK-2", "", "INVITE")
    invites.sent(early, "first INVITE")
    invites.sent(long_ringing, "second INVITE")
    invites.ended(early, now=10.0)  # e.g. Timer B
    assert invites.lookup(early, now=41.9) == "first INVITE"  # a 2xx retransmitted until 64*T1 later
    # A transaction still open keeps its INVITE however long it lasts (provisionals keep Timer C going).
    assert invites.lookup(long_ringing, now=500.0) == "second INVITE"
    assert invites.lookup(early, now=42.0) is None and len(invites) == 1
    invites.ended(long_ringing, now=600.0)
    invites.ended(TransactionId("client", "z9hG4bK-3", "", "BYE"), now=600.0)  # not an INVITE of ours
    assert invites.lookup(long_ringing, now=631.9) == "second INVITE"
    assert invites.lookup(long_ringing, now=632.0) is None and len(invites) == 0


def our_invite(*headers: str, to_tag: str | None = None, cseq: int = 7) -> SipRequest:
    lines = [
        "INVITE sip:+15550100009@trunk.example SIP/2.0",
        "Via: SIP/2.0/UDP 198.51.100.1:5060;branch=z9hG4bK-ours;rport",
        *headers,
        "Max-Forwards: 70",
        "From: <sip:agent@198.51.100.1>;tag=our-tag",
        "To: <sip:+15550100009@trunk.example>" + (f";tag={to_tag}" if to_tag else ""),
        "Call-ID: ours-1@198.51.100.1",
        f"CSeq: {cseq} INVITE",
        "Contact: <sip:agent@198.51.100.1:5060>",
        'Proxy-Authorization: Digest username="agent-7", realm="trunk.example", nonce="n-1"',
        "Content-Length: 0",
    ]
    return request(("\r\n".join(lines) + "\r\n\r\n").encode())


def test_unwanted_2xx_to_our_invite_gets_ack_then_bye_in_the_dialog_it_made() -> None:
    invite = our_invite()
    late = make_response(invite, 200, to_tag="uas-2", extra=[("Contact", "<sip:pbx@203.0.113.9:5080>")])
    late.headers.add("Record-Route", "<sip:edge.example;lr>")
    late.headers.add("Record-Route", "<sip:core.example;lr>")
    unwanted = answer_unwanted_2xx(
        invite, late, transport="UDP", sent_by=US, headers=[("User-Agent", "Switchboard/0.1")]
    )
    ack, bye = unwanted.ack, unwanted.bye
    assert bye is not None
    for sent in (ack, bye):
        assert sent.uri == "sip:pbx@203.0.113.9:5080"  # the remote target: the 2xx's Contact
        assert sent.headers.get_all("Route") == ["<sip:core.example;lr>", "<sip:edge.example;lr>"]
        assert sent.headers["To"] == "<sip:+15550100009@trunk.example>;tag=uas-2"
        assert sent.headers["From"] == invite.headers["From"]
        assert sent.headers["Call-ID"] == invite.headers["Call-ID"]
        assert Via.parse(sent.headers["Via"]).branch != Via.parse(invite.headers["Via"]).branch
    assert ack.method == "ACK" and ack.headers["CSeq"] == "7 ACK"
    assert ack.headers["Proxy-Authorization"] == invite.headers["Proxy-Authorization"]  # 13.2.2.4
    assert bye.method == "BYE" and bye.headers["CSeq"] == "8 BYE"
    assert "Proxy-Authorization" not in bye.headers  # a BYE gets its own credentials if challenged
    assert bye.headers["User-Agent"] == "Switchboard/0.1"
    assert dialog_id_for_response(late) == DialogId("ours-1@198.51.100.1", "our-tag", "uas-2")


def test_unwanted_2xx_to_our_reinvite_gets_an_ack_where_the_reinvite_went_and_no_bye() -> None:
    # The dialog's routes travel in the re-INVITE; its 2xx need not repeat them (no Record-Route here).
    reinvite = our_invite("Route: <sip:edge.example;lr>", "Route: <sip:core.example;lr>", to_tag="theirs")
    late = make_response(reinvite, 200, extra=[("Contact", "<sip:pbx@203.0.113.9:5080>")])
    unwanted = answer_unwanted_2xx(reinvite, late, transport="TCP", sent_by=US)
    ack = unwanted.ack
    assert unwanted.bye is None  # the call this dialog carried has ended already: that is why
    assert ack.uri == reinvite.uri
    assert ack.headers.get_all("Route") == ["<sip:edge.example;lr>", "<sip:core.example;lr>"]
    assert ack.headers["CSeq"] == "7 ACK" and ack.headers["To"] == reinvite.headers["To"]
    assert ack.headers["Proxy-Authorization"] == reinvite.headers["Proxy-Authorization"]
    assert ack.headers["Via"].startswith("SIP/2.0/TCP ")
    assert Via.parse(ack.headers["Via"]).branch != Via.parse(reinvite.headers["Via"]).branch
    assert dialog_id_for_request(request(bytes(ack))) == DialogId("ours-1@198.51.100.1", "theirs", "our-tag")


def test_unwanted_2xx_without_a_to_tag_cannot_be_acked() -> None:
    invite = our_invite()
    with pytest.raises(DialogError):
        answer_unwanted_2xx(invite, make_response(invite, 200), transport="UDP", sent_by=US)


@pytest.mark.parametrize(
    ("owns_call_id", "low", "high"),
    [(True, 2.1, 4.0), (False, 0.0, 2.0)],
    ids=["we-generated-the-call-id", "the-peer-did"],
)
def test_glare_wait_ranges(owns_call_id: bool, low: float, high: float) -> None:
    asked: list[tuple[int, int]] = []

    def extreme(pick_high: bool) -> Callable[[int, int], int]:
        def randint(a: int, b: int) -> int:
            asked.append((a, b))
            return b if pick_high else a

        return randint

    assert glare_retry_delay(owns_call_id, extreme(False)) == low
    assert glare_retry_delay(owns_call_id, extreme(True)) == high
    # In units of 10 ms (14.1): the bounds asked for are whole hundredths of the seconds above.
    assert asked == [(round(low * 100), round(high * 100))] * 2
    drawn = [glare_retry_delay(owns_call_id, random.Random(seed).randint) for seed in range(500)]
    assert all(low <= wait <= high for wait in drawn)
    assert all(abs(wait * 100 - round(wait * 100)) < 1e-9 for wait in drawn)
    assert len(set(drawn)) > 100  # really drawn, not one fixed value

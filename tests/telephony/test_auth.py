"""Digest authentication: RFC vectors, an independent hash chain, the client's retry rules, and sipp.

The RFC 7616 section 3.9.1 and RFC 2617 section 3.5 worked examples pin the hash chain to the standards.
sipp (a separate C implementation) then computes credentials against our challenges and `verify_digest`.
"""

from __future__ import annotations

import hashlib
import secrets
import socket
import subprocess
from pathlib import Path

import hypothesis.strategies as st
import pytest
from hypothesis import given, settings

from telephony.sip.auth import (
    SUPPORTED_ALGORITHMS,
    Credentials,
    DigestAuthenticator,
    DigestAuthorization,
    DigestChallenge,
    digest_response,
    verify_digest,
)
from telephony.sip.errors import SipParseError, SipUsageError
from telephony.sip.message import (
    Headers,
    SipRequest,
    SipResponse,
    Via,
    make_response,
    parse_cseq,
    parse_message,
)
from tests.services import require_binary

# RFC 7616 section 3.9.1 (password with a lowercase "of": erratum 4495).
RFC7616 = {
    "realm": "http-auth@example.org",
    "nonce": "7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v",
    "opaque": "FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS",
    "cnonce": "f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ",
    "username": "Mufasa",
    "password": "Circle of Life",
    "uri": "/dir/index.html",
    "MD5": "8ca523f5e9506fed4657c9700eebdbec",
    "SHA-256": "753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1",
}


def rfc7616_challenge(algorithm: str) -> str:
    return (
        f'Digest realm="{RFC7616["realm"]}", qop="auth, auth-int", algorithm={algorithm}, '
        f'nonce="{RFC7616["nonce"]}", opaque="{RFC7616["opaque"]}"'
    )


def independent_response(
    algorithm: str, password: str, method: str, answer: DigestAuthorization, body: bytes = b""
) -> str:
    """The RFC 7616 section 3.4 chain written out longhand, to check the module against."""
    name = {"MD5": "md5", "SHA-256": "sha256", "SHA-512-256": "sha512_256"}[algorithm.removesuffix("-sess")]

    def h(data: str | bytes) -> str:
        return hashlib.new(name, data.encode() if isinstance(data, str) else data).hexdigest()

    ha1 = h(f"{answer.username}:{answer.realm}:{password}")
    if algorithm.endswith("-sess"):
        ha1 = h(f"{ha1}:{answer.nonce}:{answer.cnonce}")
    ha2 = h(f"{method}:{answer.uri}" + (f":{h(body)}" if answer.qop == "auth-int" else ""))
    if answer.qop is None:
        return h(f"{ha1}:{answer.nonce}:{ha2}")
    return h(f"{ha1}:{answer.nonce}:{answer.nc}:{answer.cnonce}:{answer.qop}:{ha2}")


def request(
    method: str = "INVITE", uri: str = "sip:+4930123@trunk.example.net", body: bytes = b""
) -> SipRequest:
    headers = Headers()
    headers.add("Via", "SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bKfirst;rport")
    headers.add("Max-Forwards", "70")
    headers.add("From", "<sip:agent@switchboard.test>;tag=abc")
    headers.add("To", "<sip:+4930123@trunk.example.net>")
    headers.add("Call-ID", "call-1@192.0.2.10")
    headers.add("CSeq", f"7 {method}")
    headers.add("Contact", "<sip:agent@192.0.2.10:5060>")
    return SipRequest(method, uri, headers, body)


def challenge_response(req: SipRequest, status: int, *challenges: str) -> SipResponse:
    name = "WWW-Authenticate" if status == 401 else "Proxy-Authenticate"
    return make_response(req, status, to_tag="t1", extra=[(name, value) for value in challenges])


def fixed_cnonce() -> str:
    return RFC7616["cnonce"]


# --------------------------------------------------------------------------------------------------------
# Known vectors


@pytest.mark.parametrize("algorithm", ["MD5", "SHA-256"])
def test_digest_response_matches_rfc7616_examples(algorithm: str) -> None:
    response = digest_response(
        algorithm=algorithm,
        username=RFC7616["username"],
        realm=RFC7616["realm"],
        password=RFC7616["password"],
        method="GET",
        uri=RFC7616["uri"],
        nonce=RFC7616["nonce"],
        qop="auth",
        nc="00000001",
        cnonce=RFC7616["cnonce"],
    )
    assert response == RFC7616[algorithm]


def test_digest_response_matches_rfc2617_example() -> None:
    # RFC 2617 section 3.5: "Circle Of Life" with a capital O there.
    response = digest_response(
        algorithm="MD5",
        username="Mufasa",
        realm="testrealm@host.com",
        password="Circle Of Life",
        method="GET",
        uri="/dir/index.html",
        nonce="dcd98b7102dd2f0e8b11d0f600bfb0c093",
        qop="auth",
        nc="00000001",
        cnonce="0a4f113b",
    )
    assert response == "6629fae49393a05397450978507c4ef1"


@pytest.mark.parametrize("algorithm", ["MD5", "SHA-256"])
def test_authenticator_reproduces_rfc7616_example_and_verifies(algorithm: str) -> None:
    req = request("GET", RFC7616["uri"])
    authenticator = DigestAuthenticator(
        Credentials(RFC7616["username"], RFC7616["password"]), cnonce_factory=fixed_cnonce
    )
    retried = authenticator.authorize(req, challenge_response(req, 401, rfc7616_challenge(algorithm)))
    assert retried is not None
    value = retried.headers["Authorization"]
    answer = DigestAuthorization.parse(value)
    assert answer.response == RFC7616[algorithm]
    assert (answer.qop, answer.nc, answer.opaque, answer.algorithm) == (
        "auth",
        "00000001",
        RFC7616["opaque"],
        algorithm,
    )
    assert verify_digest("GET", RFC7616["uri"], value, RFC7616["password"], realm=RFC7616["realm"])
    assert not verify_digest("GET", RFC7616["uri"], value, "Circle Of Life")


@pytest.mark.parametrize("order", [("SHA-256", "MD5"), ("MD5", "SHA-256")])
def test_strongest_algorithm_wins_whatever_the_order(order: tuple[str, str]) -> None:
    # The RFC 7616 server offers SHA-256 and MD5 for the same realm; listing order must not downgrade us.
    req = request("GET", RFC7616["uri"])
    authenticator = DigestAuthenticator(
        Credentials(RFC7616["username"], RFC7616["password"]), cnonce_factory=fixed_cnonce
    )
    response = challenge_response(req, 401, *(rfc7616_challenge(algorithm) for algorithm in order))
    retried = authenticator.authorize(req, response)
    assert retried is not None
    assert len(retried.headers.get_all("Authorization")) == 1
    assert DigestAuthorization.parse(retried.headers["Authorization"]).response == RFC7616["SHA-256"]


# --------------------------------------------------------------------------------------------------------
# The hash chain against a longhand computation, every algorithm and qop


# -sess hashes the cnonce into A1, and there is no cnonce without qop: that combination does not exist.
COMBINATIONS = [
    (algorithm, qop)
    for algorithm in SUPPORTED_ALGORITHMS
    for qop in ("auth", "auth-int", None)
    if qop is not None or not algorithm.endswith("-sess")
]


@pytest.mark.parametrize(("algorithm", "qop"), COMBINATIONS)
def test_every_algorithm_and_qop_against_independent_computation(algorithm: str, qop: str | None) -> None:
    body = b"v=0\r\no=- 1 1 IN IP4 192.0.2.10\r\n"
    req = request(body=body)
    challenge = DigestChallenge("trunk", secrets.token_hex(8), algorithm, (qop,) if qop else (), "op")
    authenticator = DigestAuthenticator(Credentials("4930123", 'pa"ss'))
    retried = authenticator.authorize(req, challenge_response(req, 407, str(challenge)))
    assert retried is not None
    value = retried.headers["Proxy-Authorization"]
    answer = DigestAuthorization.parse(value)
    assert answer.qop == qop and answer.opaque == "op" and answer.uri == req.uri
    assert (answer.nc is None) == (qop is None) == (answer.cnonce is None)
    assert answer.response == independent_response(algorithm, 'pa"ss', "INVITE", answer, body)
    assert verify_digest("INVITE", req.uri, value, 'pa"ss', body=body, nonce=challenge.nonce, opaque="op")
    assert not verify_digest("INVITE", req.uri, value, "pass", body=body)
    assert not verify_digest("INVITE", "sip:other@trunk.example.net", value, 'pa"ss', body=body)
    assert not verify_digest("BYE", req.uri, value, 'pa"ss', body=body)
    if qop == "auth-int":
        assert not verify_digest("INVITE", req.uri, value, 'pa"ss', body=body + b"x")


def test_verify_digest_refuses_downgrades() -> None:
    req = request()
    md5_no_qop = DigestAuthenticator(Credentials("u", "p")).authorize(
        req, challenge_response(req, 401, 'Digest realm="r", nonce="n", algorithm=MD5')
    )
    assert md5_no_qop is not None
    value = md5_no_qop.headers["Authorization"]
    assert verify_digest("INVITE", req.uri, value, "p")
    assert verify_digest("INVITE", req.uri, value, "p", algorithm="md5")
    assert not verify_digest("INVITE", req.uri, value, "p", algorithm="SHA-256")
    assert not verify_digest("INVITE", req.uri, value, "p", require_qop=True)
    assert not verify_digest("INVITE", req.uri, value, "p", username="someone-else")
    assert not verify_digest("INVITE", req.uri, value, "p", realm="other", nonce="n")
    assert not verify_digest("INVITE", req.uri, value, "p", nonce="old")
    assert not verify_digest("INVITE", req.uri, value, "p", opaque="expected-opaque")


def test_sess_without_qop_is_unsupported() -> None:
    req = request()
    authenticator = DigestAuthenticator(Credentials("u", "p"))
    assert (
        authenticator.authorize(
            req, challenge_response(req, 401, 'Digest realm="r", nonce="n", algorithm=MD5-sess')
        )
        is None
    )


# --------------------------------------------------------------------------------------------------------
# Parsing


def test_challenge_parse_handles_quoting_case_and_flags() -> None:
    challenge = DigestChallenge.parse(
        'DIGEST realm="a \\"quoted\\", realm", NONCE="n,1", qop="auth-int , AUTH", '
        'stale=TRUE, algorithm=sha-256, opaque="", domain="sip:x sip:y"'
    )
    assert challenge == DigestChallenge('a "quoted", realm', "n,1", "sha-256", ("auth-int", "auth"), "", True)
    assert challenge.supported and challenge.strength == 2
    again = DigestChallenge.parse(str(challenge))
    assert again == challenge


def test_authorization_round_trip() -> None:
    answer = DigestAuthorization("us\\er", "r", "n", "sip:a@b", "abc123", "MD5", "auth", "0000000a", "c", "o")
    assert DigestAuthorization.parse(str(answer)) == answer
    assert "qop=auth," in str(answer) and "nc=0000000a" in str(answer)


@pytest.mark.parametrize(
    "value",
    [
        "",
        'Basic realm="x"',
        "Digest",
        'Digest realm="x"',
        'Digest nonce="x"',
        'Digest realm="x, nonce="y"',
        'Digest realm="x" nonce="y"',
        'Digest realm="x", realm="y", nonce="z"',
        "Digest realm=x, nonce=",
        "Digest =x",
        'Digest realm="x", nonce="y", qop',
        '"Digest" realm="x"',
    ],
)
def test_malformed_challenges_raise_400(value: str) -> None:
    with pytest.raises(SipParseError) as caught:
        DigestChallenge.parse(value)
    assert caught.value.status == 400


@pytest.mark.parametrize(
    "value",
    [
        'Digest username="u", realm="r", nonce="n", uri="sip:x"',
        'Digest username="u", realm="r", nonce="n", uri="sip:x", response="zz"',
        'Digest username="u", realm="r", nonce="n", uri="sip:x", response="ab", qop=auth',
        'Digest username="u", realm="r", nonce="n", uri="sip:x", response="ab", qop=auth, nc=1, cnonce="c"',
        "Basic dXNlcjpwYXNz",
    ],
)
def test_malformed_credentials_raise_400_and_never_verify(value: str) -> None:
    with pytest.raises(SipParseError):
        DigestAuthorization.parse(value)
    assert not verify_digest("INVITE", "sip:x", value, "p")


@settings(max_examples=400, deadline=None)
@given(
    st.text(
        alphabet=st.sampled_from('Digest realm=nonce"\\, qop=auth\t;algorithm=MD5-sessSHA256x'), max_size=80
    )
)
def test_challenge_parser_only_raises_sip_parse_error(value: str) -> None:
    try:
        challenge = DigestChallenge.parse(value)
    except SipParseError:
        return
    assert DigestChallenge.parse(str(challenge)) == challenge
    # Whatever parsed, the client either answers it or declines: no other exception.
    req = request()
    DigestAuthenticator(Credentials("u", "p")).authorize(req, challenge_response(req, 401, value))


# --------------------------------------------------------------------------------------------------------
# Retry rules


def test_retried_request_is_a_new_transaction_in_the_same_call() -> None:
    req = request()
    retried = DigestAuthenticator(Credentials("u", "p")).authorize(
        req, challenge_response(req, 401, 'Digest realm="r", nonce="n1", qop="auth"')
    )
    assert retried is not None
    assert retried.headers["Call-ID"] == req.headers["Call-ID"]
    assert parse_cseq(retried.headers["CSeq"]) == (8, "INVITE")
    old_via, new_via = Via.parse(req.headers["Via"]), Via.parse(retried.headers["Via"])
    assert new_via.branch != old_via.branch and new_via.branch and new_via.branch.startswith("z9hG4bK")
    assert (new_via.host, new_via.port, "rport" in new_via.params) == ("192.0.2.10", 5060, True)
    assert retried.method == "INVITE" and retried.uri == req.uri
    assert parse_message(bytes(retried)).headers["Authorization"] == retried.headers["Authorization"]
    assert "Authorization" not in req.headers  # the original is left alone


def test_rejected_credentials_are_not_resent() -> None:
    req = request()
    authenticator = DigestAuthenticator(Credentials("u", "wrong"))
    first = authenticator.authorize(req, challenge_response(req, 401, 'Digest realm="r", nonce="n1"'))
    assert first is not None
    # Same nonce again, or a fresh nonce without stale (Asterisk style): the password was wrong.
    assert (
        authenticator.authorize(first, challenge_response(first, 401, 'Digest realm="r", nonce="n1"')) is None
    )
    assert (
        authenticator.authorize(first, challenge_response(first, 401, 'Digest realm="r", nonce="n2"')) is None
    )


def test_stale_nonce_is_retried_a_bounded_number_of_times() -> None:
    req = request()
    authenticator = DigestAuthenticator(Credentials("u", "p"))
    current = authenticator.authorize(
        req, challenge_response(req, 401, 'Digest realm="r", nonce="n0", qop=auth')
    )
    assert current is not None
    for index in range(1, 4):
        stale = f'Digest realm="r", nonce="n{index}", qop=auth, stale=true'
        retried = authenticator.authorize(current, challenge_response(current, 401, stale))
        assert retried is not None
        answer = DigestAuthorization.parse(retried.headers["Authorization"])
        assert (answer.nonce, answer.nc) == (f"n{index}", "00000001")
        assert len(retried.headers.get_all("Authorization")) == 1
        current = retried
    endless = 'Digest realm="r", nonce="n9", qop=auth, stale=true'
    assert authenticator.authorize(current, challenge_response(current, 401, endless)) is None
    same_nonce = 'Digest realm="r", nonce="n3", qop=auth, stale=true'
    assert (
        DigestAuthenticator(Credentials("u", "p")).authorize(
            current, challenge_response(current, 401, same_nonce)
        )
        is None
    )


def test_preauthorize_reuses_nonce_with_increasing_nonce_count() -> None:
    req = request("REGISTER", "sip:pbx.example.com")
    authenticator = DigestAuthenticator(Credentials("1001", "p"))
    assert authenticator.preauthorize(req) is req  # nothing cached yet
    first = authenticator.authorize(
        req, challenge_response(req, 401, 'Digest realm="pbx", nonce="n1", qop="auth"')
    )
    assert first is not None
    counts = [DigestAuthorization.parse(first.headers["Authorization"]).nc]
    for cseq in (9, 10):
        refresh = request("REGISTER", "sip:pbx.example.com")
        refresh.headers.set("CSeq", f"{cseq} REGISTER")
        sent = authenticator.preauthorize(refresh)
        value = sent.headers["Authorization"]
        counts.append(DigestAuthorization.parse(value).nc)
        assert verify_digest("REGISTER", "sip:pbx.example.com", value, "p", nonce="n1")
    assert counts == ["00000001", "00000002", "00000003"]
    # The registrar has dropped n1 and, like many, says so without stale=true: one fresh try is allowed...
    retried = authenticator.authorize(
        sent, challenge_response(sent, 401, 'Digest realm="pbx", nonce="n2", qop="auth"')
    )
    assert retried is not None
    assert len(retried.headers.get_all("Authorization")) == 1
    assert DigestAuthorization.parse(retried.headers["Authorization"]).nc == "00000001"
    # ...but not a second one: that answer was to a real challenge.
    assert (
        authenticator.authorize(retried, challenge_response(retried, 401, 'Digest realm="pbx", nonce="n3"'))
        is None
    )


def test_proxy_challenge_keeps_existing_www_credentials_and_answers_every_realm() -> None:
    req = request()
    authenticator = DigestAuthenticator(Credentials("u", "p"))
    with_www = authenticator.authorize(req, challenge_response(req, 401, 'Digest realm="uas", nonce="a"'))
    assert with_www is not None
    proxied = authenticator.authorize(
        with_www,
        challenge_response(
            with_www, 407, 'Digest realm="edge", nonce="b", qop="auth"', 'Digest realm="core", nonce="c"'
        ),
    )
    assert proxied is not None
    assert [DigestAuthorization.parse(v).realm for v in proxied.headers.get_all("Proxy-Authorization")] == [
        "edge",
        "core",
    ]
    assert proxied.headers.get_all("Authorization") == with_www.headers.get_all("Authorization")
    assert parse_cseq(proxied.headers["CSeq"])[0] == 9


@pytest.mark.parametrize(
    ("status", "challenges", "credentials"),
    [
        (401, ['Digest realm="other", nonce="n"'], Credentials("u", "p", realm="mine")),
        (401, ['Digest realm="r", nonce="n", algorithm=SHA-1'], Credentials("u", "p")),
        (401, ['Digest realm="r", nonce="n", qop="auth-conf"'], Credentials("u", "p")),
        (401, ['Basic realm="r"'], Credentials("u", "p")),
        (401, [], Credentials("u", "p")),
        (
            407,
            ['Digest realm="a", nonce="n"', 'Digest realm="b", nonce="n", algorithm=AKAv1-MD5'],
            Credentials("u", "p"),
        ),
        (403, ['Digest realm="r", nonce="n"'], Credentials("u", "p")),
    ],
)
def test_declines_what_it_cannot_answer(status: int, challenges: list[str], credentials: Credentials) -> None:
    req = request()
    response = challenge_response(req, 401 if status == 403 else status, *challenges)
    response.status = status
    assert DigestAuthenticator(credentials).authorize(req, response) is None


def test_ack_and_cancel_are_never_authorized() -> None:
    authenticator = DigestAuthenticator(Credentials("u", "p"))
    for method in ("ACK", "CANCEL"):
        req = request(method)
        assert (
            authenticator.authorize(req, challenge_response(req, 401, 'Digest realm="r", nonce="n"')) is None
        )


def test_garbage_challenge_beside_a_good_one_is_skipped() -> None:
    req = request()
    response = challenge_response(req, 401, 'Digest realm="r", nonce="n', 'Digest realm="r", nonce="n2"')
    retried = DigestAuthenticator(Credentials("u", "p")).authorize(req, response)
    assert retried is not None and DigestAuthorization.parse(retried.headers["Authorization"]).nonce == "n2"


def test_our_own_malformed_request_is_a_usage_error() -> None:
    req = request()
    req.headers.set("CSeq", "x INVITE")
    with pytest.raises(SipUsageError):
        DigestAuthenticator(Credentials("u", "p")).authorize(
            req, challenge_response(request(), 401, 'Digest realm="r", nonce="n"')
        )


def test_credentials_repr_hides_the_password() -> None:
    assert "hunter2" not in repr(Credentials("u", "hunter2"))


# --------------------------------------------------------------------------------------------------------
# sipp computes the credentials; our verify_digest judges them


SIPP_AUTHENTICATING_CLIENT = """<?xml version="1.0" encoding="ISO-8859-1" ?>
<scenario name="REGISTER answering a digest challenge">
  <send><![CDATA[
REGISTER sip:[remote_ip]:[remote_port] SIP/2.0
Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
Max-Forwards: 70
From: <sip:agent@switchboard.test>;tag=[pid]SIPpTag00[call_number]
To: <sip:agent@switchboard.test>
Call-ID: [call_id]
CSeq: 1 REGISTER
Contact: <sip:agent@[local_ip]:[local_port]>
Expires: 60
Content-Length: 0

]]></send>
  <recv response="401" auth="true" />
  <send><![CDATA[
REGISTER sip:[remote_ip]:[remote_port] SIP/2.0
Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
Max-Forwards: 70
From: <sip:agent@switchboard.test>;tag=[pid]SIPpTag00[call_number]
To: <sip:agent@switchboard.test>
Call-ID: [call_id]
CSeq: 2 REGISTER
Contact: <sip:agent@[local_ip]:[local_port]>
Expires: 60
[authentication username=agent password={password}]
Content-Length: 0

]]></send>
  <recv response="200" />
</scenario>
"""


@pytest.mark.parametrize(
    ("qop", "password", "accepted"),
    [(("auth",), "s3cret", True), ((), "s3cret", True), (("auth",), "nope", False)],
)
def test_verify_digest_against_sipp_credentials(
    tmp_path: Path, qop: tuple[str, ...], password: str, accepted: bool
) -> None:
    sipp = require_binary("sipp", "sip-tester")
    scenario = tmp_path / "register_auth.xml"
    scenario.write_text(SIPP_AUTHENTICATING_CLIENT.format(password=password))
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as server:
        server.bind(("127.0.0.1", 0))
        server.settimeout(10)
        port = server.getsockname()[1]
        process = subprocess.Popen(
            [sipp, "-sf", str(scenario), f"127.0.0.1:{port}", "-i", "127.0.0.1", "-p", "0", "-m", "1",
             "-nostdin", "-timeout", "15s", "-timeout_error", "-recv_timeout", "3s"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=tmp_path,
        )  # fmt: skip
        try:
            challenge = DigestChallenge("switchboard.test", secrets.token_urlsafe(18), "MD5", qop, "opq-1")
            verdicts = []
            for _ in range(2):
                data, peer = server.recvfrom(65535)
                message = parse_message(data)
                assert isinstance(message, SipRequest)
                value = message.headers.get("Authorization")
                if value is None:
                    reply = make_response(
                        message, 401, to_tag="reg1", extra=[("WWW-Authenticate", str(challenge))]
                    )
                else:
                    verdict = verify_digest(
                        message.method, message.uri, value, "s3cret",
                        username="agent", realm=challenge.realm, nonce=challenge.nonce, opaque="opq-1",
                    )  # fmt: skip
                    verdicts.append(verdict)
                    reply = make_response(message, 200 if verdict else 403, to_tag="reg1")
                server.sendto(bytes(reply), peer)
            output, _ = process.communicate(timeout=20)
        finally:
            if process.poll() is None:
                process.kill()
                process.communicate()
    assert verdicts == [accepted], output
    assert (process.returncode == 0) == accepted, output
    if qop:
        assert value is not None and DigestAuthorization.parse(value).qop == "auth"

"""Requests the agent originates towards a sipp peer: INVITE and REGISTER through digest challenges, blind
transfer with REFER, and an INVITE answered only after the agent gave it up."""

from __future__ import annotations

import asyncio
import hashlib
import re
import time

import pytest

from telephony.sip.auth import Credentials
from telephony.sip.call import SipCall
from telephony.sip.registration import Registration, RegistrationState
from telephony.sip.transaction import TimerConfig
from telephony.sip.ua import CallFailed, RegistrationConfig
from tests.telephony.sipp.agent_side import AgentFactory, AgentStub, CallRecord, agent_address, wait_for
from tests.telephony.sipp.sipp_peer import LOOPBACK, Sipp

pytestmark = pytest.mark.sipp

TRUNK_CREDENTIALS = Credentials("trunkuser", "trunk-secret")  # what uas_invite_challenge_*.xml expect
TRANSFER_TARGET = f"sip:escalation@{LOOPBACK}:5099"  # uac_refer.xml checks the Refer-To against it


def digest_params(header_value: str) -> dict[str, str]:
    """The parameters of a Digest credentials value, quoted or not (RFC 7616 section 3.4)."""
    pairs = re.findall(r'([\w-]+)\s*=\s*(?:"([^"]*)"|([^\s,]+))', header_value)
    return {name.lower(): quoted or token for name, quoted, token in pairs}


def expected_response(params: dict[str, str], password: str, method: str) -> str:
    """RFC 7616 3.4.1 with qop=auth, computed here independently of telephony.sip.auth."""
    algorithm = params.get("algorithm", "MD5").upper()
    name = {"MD5": "md5", "SHA-256": "sha256"}[algorithm]

    def digest(text: str) -> str:
        return hashlib.new(name, text.encode()).hexdigest()

    ha1 = digest(f"{params['username']}:{params['realm']}:{password}")
    ha2 = digest(f"{method}:{params['uri']}")
    return digest(f"{ha1}:{params['nonce']}:{params['nc']}:{params['cnonce']}:{params['qop']}:{ha2}")


def state_of(registration: Registration) -> RegistrationState:
    return registration.state  # read through a call: mypy would keep the narrowing of an earlier assert


async def test_outbound_invite_answers_a_401_challenge(sipp: Sipp, start_agent: AgentFactory) -> None:
    agent = await start_agent()
    trunk = await sipp.start("uas_invite_challenge_401.xml")
    call = await agent.invite(
        f"sip:+15550100009@{LOOPBACK}:{trunk.port}",
        from_uri=f"<sip:agent@{LOOPBACK}>",
        peer=(LOOPBACK, trunk.port),
        credentials=TRUNK_CREDENTIALS,
    )
    assert call.state == "confirmed"
    await asyncio.sleep(0.3)
    await call.hangup()
    result = await trunk.wait()

    # sipp's verifyauth accepted the digest (a wrong one gets 403 and exits 1).
    assert result.returncode == 0, result.explain()
    params = digest_params(result.logs.split("Authorization:", 1)[1])
    assert params["username"] == "trunkuser"
    assert params["qop"] == "auth" and params["opaque"] == "5ccc069c403e"
    assert call.hangup_by == "caller"


async def test_2xx_after_our_invite_timed_out_is_acked_and_its_dialog_ended(
    sipp: Sipp, start_agent: AgentFactory
) -> None:
    agent = await start_agent(timers=TimerConfig(t1=0.02, t2=0.08))  # Timer B: 64*T1 = 1.28 s
    trunk = await sipp.start("uas_late_2xx.xml")
    with pytest.raises(CallFailed) as failure:
        await agent.invite(
            f"sip:+15550100009@{LOOPBACK}:{trunk.port}",
            from_uri=f"<sip:agent@{LOOPBACK}>",
            peer=(LOOPBACK, trunk.port),
        )
    assert failure.value.status == 408
    result = await trunk.wait()

    assert result.returncode == 0, result.explain()  # the late 200 got its ACK, then a BYE came
    [invite_cseq] = re.findall(r"invite: CSeq (\d+) INVITE", result.logs)
    [(ack_cseq, ack_tag)] = re.findall(r"ack: CSeq (\d+) ACK To tag=(\S+)", result.logs)
    [(bye_cseq, bye_tag)] = re.findall(r"bye: CSeq (\d+) BYE To tag=(\S+)", result.logs)
    assert int(ack_cseq) == int(invite_cseq) and int(bye_cseq) == int(invite_cseq) + 1
    assert ack_tag == bye_tag and "SIPpTag01" in ack_tag  # both in the dialog the 200 made
    assert agent.calls == {}


async def test_outbound_invite_with_a_wrong_password_fails_cleanly(
    sipp: Sipp, start_agent: AgentFactory
) -> None:
    agent = await start_agent()
    trunk = await sipp.start("uas_invite_challenge_401.xml")
    with pytest.raises(CallFailed) as failure:
        await agent.invite(
            f"sip:+15550100009@{LOOPBACK}:{trunk.port}",
            from_uri=f"<sip:agent@{LOOPBACK}>",
            peer=(LOOPBACK, trunk.port),
            credentials=Credentials("trunkuser", "not-the-secret"),
        )
    result = await trunk.wait()

    assert failure.value.status == 403
    # The scenario fails on purpose when verification fails: proof that the check is not vacuous.
    assert result.returncode == 1 and "digest verification FAILED" in result.logs, result.explain()
    assert agent.calls == {}


async def test_outbound_invite_answers_the_strongest_407_challenge(
    sipp: Sipp, start_agent: AgentFactory
) -> None:
    agent = await start_agent()
    proxy = await sipp.start("uas_invite_challenge_407.xml")
    call = await agent.invite(
        f"sip:+15550100009@{LOOPBACK}:{proxy.port}",
        from_uri=f"<sip:agent@{LOOPBACK}>",
        peer=(LOOPBACK, proxy.port),
        credentials=TRUNK_CREDENTIALS,
    )
    await asyncio.sleep(0.3)
    await call.hangup()
    result = await proxy.wait()

    assert result.returncode == 0, result.explain()
    params = digest_params(result.logs.split("Proxy-Authorization:", 1)[1])
    assert params.get("algorithm", "").upper() == "SHA-256", params
    assert params["realm"] == "proxy.example"
    assert params["response"] == expected_response(params, TRUNK_CREDENTIALS.password, "INVITE")


async def test_register_answers_the_challenge_refreshes_and_removes_the_binding(
    sipp: Sipp, start_agent: AgentFactory
) -> None:
    registrar = await sipp.start("uas_registrar.xml")
    config = RegistrationConfig(
        registrar=f"sip:pbx.example:{registrar.port}",
        aor="sip:extension201@pbx.example",
        username="extension201",
        password="pbx-secret",
        proxy=(LOOPBACK, registrar.port),
    )
    agent = await start_agent(registrations=[config])
    await wait_for(lambda: len(agent.registrations) == 1, what="the registration to start")
    registration = agent.registrations[0]
    await wait_for(lambda: registration.expires_at is not None, what="the first 200 OK")
    registered_at, first_expiry = time.monotonic(), registration.expires_at
    # The registrar granted 4 s of the 3600 asked: the binding must be refreshed before those run out,
    # though not at once (refresh_interval: half-way for so short a binding).
    assert registration.granted_expires == 4
    await wait_for(lambda: registration.expires_at != first_expiry, timeout=4.0, what="the refresh")
    refreshed_after = time.monotonic() - registered_at
    assert 1.0 <= refreshed_after < 4.0, refreshed_after
    assert state_of(registration) is RegistrationState.REGISTERED
    await agent.close()  # removes the binding: REGISTER with expires 0
    result = await registrar.wait()

    assert result.returncode == 0, result.explain()
    assert state_of(registration) is RegistrationState.UNREGISTERED
    logged = re.findall(r"^(.*) Authorization: (.*)$", result.logs, re.MULTILINE)
    steps = [step for step, _ in logged]
    assert steps[0] == "challenged" and "refresh" in steps[1] and "removal" in steps[-1], steps
    for _, value in logged:
        params = digest_params(value)
        assert params["username"] == "extension201" and params["qop"] == "auth", value


async def test_blind_transfer_with_refer_and_notify(sipp: Sipp, start_agent: AgentFactory) -> None:
    async def transfer(call: SipCall, record: CallRecord) -> None:
        await asyncio.sleep(0.3)
        record.notes["transferred"] = await call.transfer(TRANSFER_TARGET)

    stub = AgentStub(transfer)
    agent = await start_agent(stub)
    result = await sipp.run("uac_refer.xml", remote=agent_address(agent))

    assert result.returncode == 0, result.explain()
    record = stub.only
    await wait_for(record.call.ended.is_set, what="our leg to end")
    assert record.notes["transferred"] is True
    assert record.call.hangup_by == "agent"
    assert record.call.end_reason == "transfer"

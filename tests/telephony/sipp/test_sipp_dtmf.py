"""Digits keyed by a sipp caller reach the agent: RFC 4733 telephone-events in RTP, and SIP INFO."""

from __future__ import annotations

import pytest

from tests.telephony.sipp.agent_side import AgentFactory, AgentStub, agent_address, wait_for
from tests.telephony.sipp.sipp_peer import Sipp

pytestmark = pytest.mark.sipp

# The captures sipp ships, in the order they were recorded (so sequence numbers only move forward).
RFC4733_CAPTURES = {
    "1": "dtmf_2833_1.pcap",
    "5": "dtmf_2833_5.pcap",
    "9": "dtmf_2833_9.pcap",
    "*": "dtmf_2833_star.pcap",
    "#": "dtmf_2833_pound.pcap",
}


async def test_rfc4733_digits_reach_the_agent_once_each(sipp: Sipp, start_agent: AgentFactory) -> None:
    stub = AgentStub()
    agent = await start_agent(stub)
    sipp.copy_shared(*RFC4733_CAPTURES.values())
    result = await sipp.run("uac_dtmf_rfc4733.xml", remote=agent_address(agent))

    assert result.returncode == 0, result.explain()
    record = stub.only
    await wait_for(record.call.ended.is_set, what="the call to end")
    # Each capture ends with its end packet sent three times: one digit each, not three.
    assert record.digits == list(RFC4733_CAPTURES), record.call.media.report()


async def test_sip_info_digits_reach_the_agent(sipp: Sipp, start_agent: AgentFactory) -> None:
    stub = AgentStub()
    agent = await start_agent(stub)
    result = await sipp.run("uac_dtmf_info.xml", remote=agent_address(agent))

    assert result.returncode == 0, result.explain()
    record = stub.only
    await wait_for(record.call.ended.is_set, what="the call to end")
    assert record.digits == ["4", "#", "7"]

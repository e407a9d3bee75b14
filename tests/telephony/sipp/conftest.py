"""The sipp real-peer suite: our UserAgent in this process, sipp (Debian sip-tester) as the other party.

Each test starts a UserAgent on free loopback ports with an agent stub suited to its scenario, runs sipp as
an asyncio subprocess on one of the XML scenarios kept next to this file, and checks both sides: sipp's
exit code (0 only when every call of the scenario went as written) and what our side observed.

sipp runs in the test's own temporary directory: the scenario and its media files (a mu-law prompt, the
telephone-event captures sipp ships) are copied there, and so its -trace_err / -trace_logs files land
there too, never in the source tree. sipp_peer.py drives sipp; agent_side.py is our side's stub.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from agent.tts import EspeakSynthesizer
from telephony.codecs import pcm16_to_ulaw
from telephony.media import MediaClock, RtpPortPool
from telephony.sip.ua import UserAgent
from tests.services import require_binary
from tests.telephony.listening import start_with_tcp
from tests.telephony.sipp.agent_side import AgentFactory, AgentStub
from tests.telephony.sipp.sipp_peer import LOOPBACK, Sipp

RTP_PORTS = (38000, 38999)  # our side's media; test_ua.py uses 36000-36999, e2e servers 20000-28000


@pytest.fixture
async def sipp(tmp_path: Path) -> AsyncIterator[Sipp]:
    runner = Sipp(require_binary("sipp", "sip-tester"), tmp_path)
    try:
        yield runner
    finally:
        runner.kill_all()


@pytest.fixture
async def start_agent() -> AsyncIterator[AgentFactory]:
    """Starts a UserAgent on a loopback port free for UDP and TCP: `await start_agent(stub, max_calls=1,
    ...)`; extra keyword arguments go to the UserAgent constructor."""
    agents: list[UserAgent] = []

    async def start(on_call: AgentStub | None = None, **options: Any) -> UserAgent:
        def make() -> UserAgent:
            return UserAgent(
                advertised_host=LOOPBACK,
                port_pool=RtpPortPool(*RTP_PORTS),
                clock=MediaClock(),
                on_call=on_call,
                **options,
            )

        # TCP listens on the UDP port's number, which sipp -t t1 calls (test_sipp_media): it must be free.
        agent = await start_with_tcp(make, LOOPBACK)
        agents.append(agent)
        return agent

    try:
        yield start
    finally:
        for agent in agents:
            await agent.close()


# --- audio --------------------------------------------------------------------------------------------
CALLER_SENTENCE = "Hello, I would like to book a table for two on Saturday evening."
GOODBYE_SENTENCE = "Thank you for calling. Goodbye."


@pytest.fixture(scope="session")
def caller_ulaw() -> bytes:
    """The caller's speech as raw 8 kHz mu-law, the format sipp's rtp_stream sends byte for byte."""
    return pcm16_to_ulaw(EspeakSynthesizer().synthesize_8k(CALLER_SENTENCE))


@pytest.fixture(scope="session")
def goodbye_pcm() -> bytes:
    return EspeakSynthesizer().synthesize_8k(GOODBYE_SENTENCE)

"""Turn-taking on a live call: `switchboard serve` in a subprocess, a caller on our own SIP/RTP stack.

Every test speaks real synthesised audio over RTP and judges the agent only by the audio that comes back
(and the transcript the server keeps): barge-in stops the agent, backchannels and noise do not, line echo
of the agent's own voice is not taken for the caller, a mid-sentence pause is not the end of a turn, and a
slow CRM gets a filler instead of dead air.
"""

from __future__ import annotations

import array
import asyncio
import contextlib
import json
import random
import time
import urllib.request
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.tts import EspeakSynthesizer
from tests.e2e.conftest import RunningServer, running_server
from tests.e2e.live_caller import Caller, dial

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    with running_server(tmp_path_factory.mktemp("turns")) as running:
        yield running


@pytest.fixture(scope="module")
def voice() -> EspeakSynthesizer:
    return EspeakSynthesizer(variant="m3")


@contextlib.asynccontextmanager
async def _dial(server: RunningServer, number: str) -> AsyncIterator[Caller]:
    async with dial(server, number, ports=(45000, 45999)) as caller:
        await caller.agent_turn()  # the greeting
        yield caller


def _transcript(server: RunningServer, call_id: str) -> dict[str, Any]:
    time.sleep(0.3)  # the last turn is written just after its audio
    with urllib.request.urlopen(f"{server.api}/api/calls/{call_id}", timeout=5) as response:
        result: dict[str, Any] = json.load(response)
    return result


def _silence(seconds: float) -> bytes:
    return bytes(int(seconds * 8000) * 2)


def _noise_burst(seconds: float, level: int = 9000) -> bytes:
    rng = random.Random(7)
    return array.array("h", (rng.randint(-level, level) for _ in range(int(seconds * 8000)))).tobytes()


LONG_ANSWER = "what are your opening hours"  # answered with ~6 s of speech


async def test_barge_in_stops_the_agent_and_keeps_only_what_was_heard(
    live: RunningServer, voice: EspeakSynthesizer
) -> None:
    question = voice.synthesize_8k(LONG_ANSWER)
    interruption = voice.synthesize_8k("can i talk to a person")
    async with _dial(live, "+15550100001") as caller:
        await caller.speak(question)
        await caller.agent_starts()
        await asyncio.sleep(1.5)
        talk = asyncio.ensure_future(caller.speak(interruption))
        onset = time.monotonic()
        await asyncio.sleep(1.0)
        agent_during = [t for t in caller.agent_speech if onset <= t]
        # The agent's audio stops soon after the caller starts (figures: `switchboard bench agent`).
        assert agent_during, "the agent was not talking when the caller interrupted"
        stop = max(agent_during) - onset
        assert stop < 0.5, f"agent kept talking {stop * 1000:.0f} ms into the caller's speech"
        await talk
        await caller.agent_turn()  # the answer to the interruption
        transcript = _transcript(live, caller.call.call_id)
    agent_turns = [t for t in transcript["turns"] if t["speaker"] == "agent"]
    cut = agent_turns[1]
    assert cut["text"].endswith("...") and len(cut["text"]) < 60, cut
    assert cut["telemetry"]["outcome"] == "barge_in"
    callers = [t["text"] for t in transcript["turns"] if t["speaker"] == "caller"]
    assert "person" in callers[-1]


@pytest.mark.parametrize(
    "interjection",
    [pytest.param("okay", id="backchannel"), pytest.param(None, id="noise-burst")],
)
async def test_backchannel_or_noise_over_the_agent_resumes_the_reply(
    live: RunningServer, voice: EspeakSynthesizer, interjection: str | None
) -> None:
    question = voice.synthesize_8k(LONG_ANSWER)
    sound = voice.synthesize_8k(interjection) if interjection else _noise_burst(0.12)
    async with _dial(live, "+15550100001") as caller:
        await caller.speak(question)
        first = await caller.agent_starts()
        await asyncio.sleep(1.5)
        await caller.speak(sound)
        last = (await caller.agent_turn(quiet_s=1.5)).last
        transcript = _transcript(live, caller.call.call_id)
    agent_turns = [t for t in transcript["turns"] if t["speaker"] == "agent"]
    reply = agent_turns[1]
    # The whole reply was said and recorded as heard; no answer was given to the interjection.
    assert reply["text"].startswith("We're open") and reply["text"].endswith("?"), reply
    assert reply["telemetry"]["outcome"] != "barge_in"
    assert len(agent_turns) == 2, agent_turns
    assert last - first > 5.0  # the ~6 s answer played to its end (resumed, not cut)


async def test_line_echo_of_the_agent_is_not_taken_for_the_caller(
    live: RunningServer, voice: EspeakSynthesizer
) -> None:
    question = voice.synthesize_8k(LONG_ANSWER)
    async with _dial(live, "+15550100001") as caller:
        await caller.speak(question)
        first = await caller.agent_starts()
        # From now on every frame received goes straight back at -8 dB (telephone hybrids return at least
        # 6 dB less), one out per one in, so the echo lags by the media path only.
        caller.echo_gain = 0.4
        last = (await caller.agent_turn(quiet_s=1.5)).last
        caller.echo_gain = None
        transcript = _transcript(live, caller.call.call_id)
    agent_turns = [t for t in transcript["turns"] if t["speaker"] == "agent"]
    assert agent_turns[1]["text"].startswith("We're open") and agent_turns[1]["text"].endswith("?")
    assert agent_turns[1]["telemetry"]["outcome"] != "barge_in"
    assert last - first > 5.0
    assert [t["text"] for t in transcript["turns"] if t["speaker"] == "caller"] == [LONG_ANSWER]


async def test_a_pause_mid_sentence_is_not_the_end_of_the_turn(
    live: RunningServer, voice: EspeakSynthesizer
) -> None:
    async with _dial(live, "+15550100002") as caller:
        paused = (
            voice.synthesize_8k("i'd like to book a") + _silence(0.6) + voice.synthesize_8k("tire rotation")
        )
        _, done = await caller.speak(paused)
        first = (await caller.agent_turn()).first
        assert first > done - 0.05, "the agent answered during the pause"
        when = (
            voice.synthesize_8k("on tuesday at ten") + _silence(0.45) + voice.synthesize_8k("in the morning")
        )
        _, done = await caller.speak(when)
        first = (await caller.agent_turn()).first
        assert first > done - 0.05, "the agent answered during the pause"
        transcript = _transcript(live, caller.call.call_id)
    turns = transcript["turns"]
    callers = [t["text"] for t in turns if t["speaker"] == "caller"]
    assert len(callers) == 2, callers  # two turns, not four
    agent = [t for t in turns if t["speaker"] == "agent"]
    assert "10 AM" in agent[-1]["text"]
    # The reply to the finished request was worked out during the final pause, before the turn ended.
    booking = agent[1]["telemetry"]
    assert booking["outcome"] == "speculative", agent[1]
    # Of the 600 ms pause the recogniser decoded only its first 200 ms and the 100 ms before the caller
    # went on: with the lead-in and the end of the turn, 2580 ms of a 2560 ms turn (2920 when all of the
    # pause was decoded).
    assert booking["stt_audio_ms"] <= booking["speech_ms"] + 100, booking


def _lock_orders_table(database_url: str, seconds: float) -> None:
    import psycopg

    url = database_url.replace("postgresql+psycopg", "postgresql")
    with psycopg.connect(url) as connection, connection.transaction():
        connection.execute("LOCK TABLE orders IN ACCESS EXCLUSIVE MODE")
        time.sleep(seconds)


@pytest.mark.postgres
async def test_a_slow_crm_gets_a_filler_instead_of_dead_air(tmp_path: Path, voice: EspeakSynthesizer) -> None:
    from crm.scratch import create_postgres_database, drop_postgres_database
    from tests.crm.databases import require_postgres

    admin_url = require_postgres()
    database_url = create_postgres_database(admin_url, prefix="switchboard_filler")
    try:
        with running_server(tmp_path, database_url) as server:
            question = voice.synthesize_8k("what's the status of order a one zero four two")
            async with _dial(server, "+15550100001") as caller:
                # The orders table stays locked until 1.2 s after the question ends: the lookup waits.
                hold_s = len(question) / 16000 + 1.2
                locker = asyncio.get_running_loop().run_in_executor(
                    None, _lock_orders_table, database_url, hold_s
                )
                await asyncio.sleep(0.2)
                _, spoken = await caller.speak(question)
                first = await caller.agent_starts()
                await caller.agent_turn(quiet_s=2.5)
                await locker
                transcript = _transcript(server, caller.call.call_id)
    finally:
        drop_postgres_database(admin_url, database_url)
    agent = [t for t in transcript["turns"] if t["speaker"] == "agent"]
    assert agent[1]["intent"] == "filler", agent
    assert "order" in agent[2]["text"].lower(), agent
    assert first - spoken < 1.0  # something was said well before the CRM answered


async def test_silence_gets_reprompts_then_a_polite_goodbye(tmp_path: Path) -> None:
    with running_server(tmp_path, env={"SWITCHBOARD_REPROMPT_AFTER_S": "2"}) as server:
        async with _dial(server, "+15550100001") as caller:
            greeting_end = caller.agent_speech[-1]
            spans = []
            for _ in range(3):  # two reprompts, then the goodbye
                spans.append(await caller.agent_turn(quiet_s=0.9, timeout_s=10))
            for _ in range(50):
                if caller.call.state == "terminated":
                    break
                await asyncio.sleep(0.1)
            assert caller.call.state == "terminated", "the agent did not hang up after the goodbye"
            transcript = _transcript(server, caller.call.call_id)
    # Each prompt came about 2 s after the agent's previous words: never a long dead line.
    previous_end = greeting_end
    for span in spans:
        assert 1.5 < span.first - previous_end < 4.0, (span.first - previous_end, spans)
        previous_end = span.last
    agent = [t for t in transcript["turns"] if t["speaker"] == "agent"]
    assert [t["intent"] for t in agent[1:]] == ["silence", "silence", "silence"]
    assert agent[1]["text"].startswith("Are you still there?")
    assert agent[-1]["text"].endswith("Goodbye.") and transcript["hangup_by"] == "agent"

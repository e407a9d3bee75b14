"""Calls over Twilio Media Streams against `switchboard serve`, with a peer that behaves like Twilio."""

from __future__ import annotations

import asyncio
import datetime as dt
import re
import time
from collections.abc import Callable
from typing import Any

import pytest
import sqlalchemy as sa

from agent.nlu import Intent
from agent.tts import EspeakSynthesizer
from telephony.twilio.call import LEAD_FRAMES
from tests.e2e.conftest import RunningServer
from tests.e2e.test_booking_call import booking_day
from tests.telephony.twilio.twilio_peer import TwilioPeer, fetch_call_record, trim_leading_silence

pytestmark = pytest.mark.e2e

BARGE_IN_BOUND_S = 0.4  # the requirement is 150 ms; the bound leaves room for a loaded 2-core machine


async def synthesize(*lines: str) -> list[bytes]:
    synth = EspeakSynthesizer()  # the voice `switchboard call` speaks with
    loop = asyncio.get_running_loop()
    return [await loop.run_in_executor(None, synth.synthesize_8k, line) for line in lines]


async def call_record(server: RunningServer, call_sid: str, *, ended: bool = True) -> dict[str, Any]:
    try:
        return await fetch_call_record(server.api, call_sid, ended=ended)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{server.log()[-3000:]}") from None


def stream_summary(server: RunningServer, call_sid: str) -> tuple[int, int]:
    """(frames sent, frames confirmed heard by marks) from the server's end-of-stream log line."""
    match = re.search(rf"call {call_sid}: stream over .* (\d+) frames sent, (\d+) heard", server.log())
    assert match is not None, server.log()[-3000:]
    return int(match.group(1)), int(match.group(2))


def talkspurts(peer: TwilioPeer) -> list[list[float]]:
    """Arrival times of the server's media, split where it paused for more than 200 ms."""
    spurts: list[list[float]] = []
    for item in peer.messages("media"):
        if spurts and item.at - spurts[-1][-1] <= 0.2:
            spurts[-1].append(item.at)
        else:
            spurts.append([item.at])
    return spurts


async def test_a_call_over_twilio_books_an_appointment(
    twilio_server: RunningServer, new_peer: Callable[..., TwilioPeer]
) -> None:
    spoken_day, day = booking_day()
    lines = ["I'd like to book an oil change", f"{spoken_day} at ten in the morning", "yes"]
    audio = await synthesize(*lines)
    peer = new_peer(from_number="+15550100002")
    await peer.call()
    await peer.wait_agent_turn_end()
    for pcm in audio:
        utterance = peer.say(pcm)
        await utterance.done.wait()
        await peer.wait_agent_turn_end()
    await peer.stop()

    record = await call_record(twilio_server, peer.call_sid)
    print("\n".join(f"  {turn['speaker']:>6}: {turn['text']}" for turn in record["turns"]))
    assert record["transport"] == "twilio"
    assert record["customer"] == "Marcus Lee"
    assert record["status"] == "completed"
    assert record["hangup_by"] == "caller"
    heard = [turn["text"] for turn in record["turns"] if turn["speaker"] == "caller"]
    if [text.lower() for text in heard] != [
        line.lower() for line in lines
    ]:  # recognition is tuned elsewhere; the protocol checks below stand either way
        print(f"recognised {heard!r}, said {lines!r}")

    # Audio came in 20 ms media messages, each chunk followed by a mark naming the frames sent so far.
    media = peer.messages("media")
    assert media and all(len(item.message["media"]["payload"]) == 216 for item in media)  # 160 bytes
    sent_before = 0
    position = {id(item): index for index, item in enumerate(peer.received)}
    for item in peer.received:
        if item.message["event"] == "media":
            sent_before += 1
        elif item.message["event"] == "mark":
            name = item.message["mark"]["name"]
            assert re.fullmatch(r"f\d+", name), name
            assert int(name[1:]) == sent_before, (name, sent_before)
    marks = peer.messages("mark")
    assert len(marks) >= 1 + len(lines)  # at least one chunk per agent turn
    assert [name for _, name in peer.marks_echoed] == [m.message["mark"]["name"] for m in marks]
    assert all(position[id(m)] > 0 for m in marks)

    # Paced like RTP: after the lead, one frame per 20 ms, so a talkspurt lasts as long as its audio.
    for spurt in talkspurts(peer):
        if len(spurt) < 25:
            continue
        expected = (len(spurt) - LEAD_FRAMES) * 0.02
        assert spurt[-1] - spurt[0] >= expected - 0.06, (len(spurt), spurt[-1] - spurt[0])
    assert not peer.clears, "no barge-in happened, so nothing should have been cleared"
    # The server counted as heard exactly what the echoed marks confirmed: everything it sent.
    assert stream_summary(twilio_server, peer.call_sid) == (len(media), len(media))

    engine = sa.create_engine(twilio_server.database_url)
    with engine.connect() as connection:
        rows = connection.execute(
            sa.text(
                "SELECT b.start, b.status, b.source_call_id FROM bookings b "
                "JOIN customers c ON c.id = b.customer_id JOIN services s ON s.id = b.service_id "
                "WHERE c.phone = '+15550100002' AND s.name = 'oil change' AND b.status = 'confirmed'"
            )
        ).all()
    engine.dispose()
    assert len(rows) == 1, (rows, record)
    start, _, source = rows[0]
    assert dt.datetime.fromisoformat(str(start)) == dt.datetime.combine(day, dt.time(10, 0))
    assert source == peer.call_sid


async def test_caller_speech_during_agent_audio_sends_clear(
    twilio_server: RunningServer, new_peer: Callable[..., TwilioPeer]
) -> None:
    (speech,) = await synthesize("I'd like to book an oil change")
    peer = new_peer(from_number="+15550100003")
    await peer.call()
    await peer.wait_agent_speaking()
    await asyncio.sleep(0.5)  # well into the greeting
    utterance = peer.say(trim_leading_silence(speech))
    deadline = time.monotonic() + 3
    while not peer.clears and time.monotonic() < deadline:
        await asyncio.sleep(0.005)
    assert peer.clears, "no clear while the caller talked over the agent"
    assert utterance.first_voiced_sent_at is not None
    delay = peer.clears[0] - utterance.first_voiced_sent_at
    print(f"\nbarge-in: caller speech onset -> clear {delay * 1000:.0f} ms")
    assert 0 < delay < BARGE_IN_BOUND_S

    await utterance.done.wait()
    # The greeting stopped: no agent audio between the clear and the end of the caller's words.
    assert utterance.last_voiced_sent_at is not None
    late = [m for m in peer.messages("media") if peer.clears[0] + 0.05 < m.at < utterance.last_voiced_sent_at]
    assert not late, f"{len(late)} media messages after the clear"
    await peer.wait_agent_turn_end()  # the interruption was taken as the caller's turn and answered
    await peer.stop()
    record = await call_record(twilio_server, peer.call_sid)
    assert [turn["speaker"] for turn in record["turns"]][:3] == ["agent", "caller", "agent"]


async def test_keypresses_reach_the_agent_and_zero_transfers(
    twilio_server: RunningServer, new_peer: Callable[..., TwilioPeer]
) -> None:
    peer = new_peer(from_number="+15550100001")
    await peer.call()
    await peer.wait_agent_turn_end()
    await peer.press("5")
    await peer.wait_agent_turn_end()
    await peer.press("0")  # "press 0 to speak to someone": the agent hands over and hangs up
    await asyncio.wait_for(peer.server_closed.wait(), 20)
    await peer.close()
    record = await call_record(twilio_server, peer.call_sid)
    intents = [turn["intent"] for turn in record["turns"] if turn["speaker"] == "agent"]
    assert intents[1] == "dtmf"
    # No escalation target is configured here, so the hand-over is attempted, fails, and is apologised for.
    assert intents[-2:] == [str(Intent.PERSON), "transfer_failed"]
    assert record["hangup_by"] == "agent"
    assert record["status"] == "completed"


async def test_a_dropped_connection_ends_the_call(
    twilio_server: RunningServer, new_peer: Callable[..., TwilioPeer]
) -> None:
    peer = new_peer()
    await peer.call()
    await peer.wait_agent_speaking()
    await peer.drop()  # no `stop`, no close frame
    record = await call_record(twilio_server, peer.call_sid)
    assert record["hangup_by"] == "caller"
    assert record["status"] == "completed"
    assert record["ended_at"] is not None


async def test_malformed_and_unknown_messages_are_survived(
    twilio_server: RunningServer, new_peer: Callable[..., TwilioPeer]
) -> None:
    peer = new_peer()
    await peer.call()
    await peer.wait_agent_speaking()
    await peer.send_raw("this is not JSON")
    await peer.send_raw('{"event": "media", "media": ')
    await peer.send_raw("[1, 2, 3]")
    await peer.send_raw(b"\x00\x01\x02 binary frame")
    await peer.send({"event": "transcription", "transcription": {"text": "hello"}})  # unknown event
    await peer.send(
        {"event": "media", "media": {"track": "inbound", "chunk": "1", "timestamp": "0", "payload": "!!"}}
    )
    await peer.send({"event": "dtmf", "dtmf": {"track": "inbound_track", "digit": "Z"}})
    await peer.send({"event": "mark", "mark": {"name": "never-sent"}})
    await peer.send({"event": "start", "start": {"streamSid": "MZ0", "callSid": "CA0"}})
    await peer.send_raw(f'{{"event": "media", "sequenceNumber": "1", "streamSid": "{peer.stream_sid}"}}')
    await peer.wait_agent_turn_end()
    await peer.press("5")  # the stream still works: the agent answers the key
    await peer.wait_agent_turn_end()
    assert not peer.server_closed.is_set()
    await peer.stop()
    record = await call_record(twilio_server, peer.call_sid)
    assert "dtmf" in [turn["intent"] for turn in record["turns"]]
    assert record["hangup_by"] == "caller"
    log = twilio_server.log()
    assert "ignored message: not JSON" in log
    assert "unknown event 'transcription'" in log


async def test_lost_marks_do_not_silence_the_agent(
    twilio_server: RunningServer, new_peer: Callable[..., TwilioPeer]
) -> None:
    peer = new_peer(echo_marks=False)  # like a peer that never answers marks
    await peer.call()
    await peer.wait_agent_turn_end()
    await peer.press("5")
    await peer.wait_agent_turn_end()  # the agent went back to listening and answered the key
    await peer.stop()
    record = await call_record(twilio_server, peer.call_sid)
    assert [turn["intent"] for turn in record["turns"] if turn["speaker"] == "agent"][1] == "dtmf"
    sent, heard = stream_summary(twilio_server, peer.call_sid)
    assert sent > 0 and heard == 0
    assert f"call {peer.call_sid}: no mark back" in twilio_server.log()

"""TwilioCall on a real MediaClock: pacing, marks, clear on flush, lost marks, and what reaches the agent."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from dataclasses import dataclass, field
from typing import Any

from telephony.media import MediaClock
from telephony.twilio.call import LEAD_FRAMES, TwilioCall
from telephony.twilio.stream import (
    DtmfReceived,
    MarkReceived,
    MediaReceived,
    MediaStreamConnection,
    StreamStopped,
)
from tests.telephony.twilio.test_stream import CONNECTED, start

FRAME = bytes(range(0, 256, 2)) * 2 + bytes(64)  # 320 bytes of PCM16 that is not silence
PCM_FRAME = 320


@dataclass
class Wire:
    """What the call put on the WebSocket, with the time each message left."""

    sent: list[tuple[float, dict[str, Any]]] = field(default_factory=list)
    closed: int = 0

    def send(self, text: str) -> None:
        self.sent.append((time.monotonic(), json.loads(text)))

    async def close(self) -> None:
        self.closed += 1

    def events(self) -> list[str]:
        return [message["event"] for _, message in self.sent]

    def marks(self) -> list[str]:
        return [message["mark"]["name"] for _, message in self.sent if message["event"] == "mark"]


def new_call(wire: Wire, **options: Any) -> TwilioCall:
    connection = MediaStreamConnection()
    connection.receive(json.dumps(CONNECTED))
    connection.receive(json.dumps(start()))
    return TwilioCall(connection=connection, clock=MediaClock(), send=wire.send, close=wire.close, **options)


async def test_audio_is_paced_by_the_clock_with_a_mark_after_each_chunk() -> None:
    wire = Wire()
    call = new_call(wire)
    call.play(FRAME * 6)
    call.play(FRAME * 4)
    await asyncio.wait_for(call._drained.wait(), 2)
    assert wire.events() == ["media"] * 6 + ["mark"] + ["media"] * 4 + ["mark"]
    assert wire.marks() == ["f6", "f10"]
    assert call.frames_played == 10
    media_times = [at for at, message in wire.sent if message["event"] == "media"]
    # The lead goes out at once, then one frame per 20 ms tick.
    assert media_times[LEAD_FRAMES - 1] - media_times[0] < 0.005
    assert media_times[-1] - media_times[0] >= (10 - LEAD_FRAMES) * 0.02 - 0.01
    payload = base64.b64decode(wire.sent[0][1]["media"]["payload"])
    assert len(payload) == 160
    call.remote_ended()


async def test_echoed_marks_count_what_was_heard_and_end_the_wait() -> None:
    wire = Wire()
    call = new_call(wire, mark_grace_s=5)
    call.play(FRAME * 4)
    waiting = asyncio.create_task(call.wait_drained())
    await asyncio.wait_for(call._drained.wait(), 2)
    assert not waiting.done()  # sent, but not yet played at the far end
    call.on_event(MarkReceived("f4"))
    await asyncio.wait_for(waiting, 1)
    assert call.frames_heard == 4
    call.remote_ended()


async def test_a_lost_mark_holds_the_agent_only_for_the_grace_period() -> None:
    wire = Wire()
    call = new_call(wire, mark_grace_s=0.2)
    call.play(FRAME * 2)
    started = time.monotonic()
    await asyncio.wait_for(call.wait_drained(), 2)
    assert 0.15 < time.monotonic() - started < 0.6
    assert call.frames_heard == 0
    call.remote_ended()


async def test_flush_drops_queued_audio_and_sends_clear() -> None:
    wire = Wire()
    call = new_call(wire)
    call.play(FRAME * 3)
    call.play(FRAME * 50)
    while call.frames_played < 5:
        await asyncio.sleep(0.005)
    dropped = call.flush()
    assert dropped > 40
    assert wire.events()[-1] == "clear"
    assert wire.marks() == ["f3"]
    await asyncio.wait_for(call.wait_drained(), 0.1)  # nothing left to wait for
    call.on_event(MarkReceived("f3"))  # Twilio echoes marks that `clear` dropped: not counted as heard
    assert call.frames_heard == 0
    count = len(wire.sent)
    await asyncio.sleep(0.1)
    assert len(wire.sent) == count  # nothing more goes out after the clear
    call.remote_ended()


async def test_a_late_clock_tick_sends_the_frames_it_was_due() -> None:
    wire = Wire()
    call = new_call(wire)
    call._clock.discard(call)  # drive the ticks by hand
    call.play(FRAME * 10)
    assert wire.events().count("media") == LEAD_FRAMES  # a talkspurt's lead goes out at once, not at a tick
    call.on_tick()
    assert wire.events().count("media") == LEAD_FRAMES + 1
    call.on_tick(frames=3)
    assert wire.events().count("media") == LEAD_FRAMES + 4
    call.play(FRAME * 2)  # queued behind the talkspurt under way: no second lead
    assert wire.events().count("media") == LEAD_FRAMES + 4
    call.remote_ended()


async def test_incoming_audio_reaches_the_agent_in_20_ms_frames_with_gaps_filled() -> None:
    wire = Wire()
    call = new_call(wire)
    frames: list[bytes] = []
    digits: list[str] = []
    call.audio_sink = frames.append
    call.dtmf_sink = digits.append
    call.on_event(MediaReceived("inbound", 1, 0, b"\x00" * 320))  # 40 ms in one message
    call.on_event(MediaReceived("inbound", 2, 40, b"\x00" * 100))  # a partial frame is held back...
    assert len(frames) == 2
    call.on_event(MediaReceived("inbound", 3, 52, b"\x00" * 60))  # ...until the rest arrives
    assert len(frames) == 3
    call.on_event(MediaReceived("inbound", 4, 120, b"\x00" * 160, gap_ms=60))
    assert len(frames) == 3 + 3 + 1
    assert frames[3:6] == [bytes(PCM_FRAME)] * 3  # the missing 60 ms as silence
    assert all(len(frame) == PCM_FRAME for frame in frames)
    call.on_event(MediaReceived("outbound", 5, 140, b"\x00" * 160))  # not the caller's track
    assert len(frames) == 7
    call.on_event(DtmfReceived("inbound_track", "7"))
    assert digits == ["7"]
    call.on_event(StreamStopped("AC", "CA"))
    assert call.ended.is_set()
    assert call.hangup_by == "caller"


async def test_hangup_closes_the_stream_once_and_stops_sending() -> None:
    wire = Wire()
    call = new_call(wire)
    await call.hangup()
    await call.hangup()
    assert wire.closed == 1
    assert call.hangup_by == "agent"
    call.play(FRAME * 5)
    await asyncio.sleep(0.06)
    assert wire.sent == []

"""One call carried by a Twilio Media Stream, seen by the agent as a `CallTransport`.

Outgoing audio is paced by the shared `MediaClock`, like RTP: one 20 ms `media` message per tick (after a
short lead, sent as soon as a talkspurt is queued), so the stream position of what we have sent follows
real time. That is what makes the rest exact:
- `flush()` on barge-in drops what is queued here and sends `clear`; Twilio then holds at most the lead;
- a `mark` goes out after the last frame of every chunk the agent plays, named with the running count of
  frames sent (`f<count>`): when Twilio echoes it, the caller has heard exactly that many frames;
- `frames_played` counts frames sent, like `RtpStream`; `frames_heard` those confirmed by marks.

A mark that never comes back (a lost message, a peer that does not echo) must not leave the agent waiting
in silence: `wait_drained` waits for the last mark at most `mark_grace_s` after the last frame went out.

Incoming media is decoded and handed to the agent as it arrives (TCP already ordered it; a jitter buffer
would only add delay), re-cut into 20 ms frames, with silence for any gap the timestamps reveal.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import sys
import time
import warnings
from collections.abc import Awaitable, Callable
from concurrent.futures import Executor

from telephony.media import MediaClock
from telephony.twilio.control import CallControlError, TwilioCallControl
from telephony.twilio.stream import (
    FRAME_MS,
    DtmfReceived,
    LocalProtocolError,
    MarkReceived,
    MediaReceived,
    MediaStreamConnection,
    MediaStreamEvent,
    StreamStarted,
    StreamStopped,
)
from telephony.twilio.twiml import TransferTarget, transfer_target

if sys.version_info < (3, 13):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        import audioop
else:  # pragma: no cover - exercised on 3.13+ only
    import audioop

__all__ = ["TwilioCall"]

log = logging.getLogger(__name__)

MULAW_FRAME_BYTES = 160  # 20 ms at 8 kHz
PCM_FRAME_BYTES = 320
MAX_GAP_FILL_FRAMES = 50  # a gap longer than 1 s is a stall, not lost packets: do not replay it as silence
LEAD_FRAMES = 3  # sent at once at the start of a talkspurt: Twilio's buffer absorbs WebSocket jitter
MARK_GRACE_S = 1.0

AudioSink = Callable[[bytes], None]
DtmfSink = Callable[[str], None]


class TwilioCall:
    """The agent's side of one Media Stream; the WebSocket endpoint feeds `on_event` and drains `send`."""

    def __init__(
        self,
        *,
        connection: MediaStreamConnection,
        clock: MediaClock,
        send: Callable[[str], None],
        close: Callable[[], Awaitable[None]],
        control: TwilioCallControl | None = None,
        executor: Executor | None = None,
        lead_frames: int = LEAD_FRAMES,
        mark_grace_s: float = MARK_GRACE_S,
    ) -> None:
        if connection.started is None:
            raise LocalProtocolError("a TwilioCall needs a started stream")
        self.started: StreamStarted = connection.started
        self._connection = connection
        self._clock = clock
        self._send = send
        self._close = close
        self._control = control
        self._executor = executor
        self._lead_frames = lead_frames
        self._mark_grace_s = mark_grace_s
        self._playout: collections.deque[bytes] = collections.deque()  # mu-law frames
        self._chunk_ends: collections.deque[int] = collections.deque()  # frames_played after each chunk
        self._pending_marks: dict[str, int] = {}  # name -> frames it confirms
        self._cleared_marks: set[str] = set()
        self._inbound = b""
        self._drained = asyncio.Event()
        self._drained.set()
        self._marks_settled = asyncio.Event()
        self._marks_settled.set()
        self._last_frame_sent_at = 0.0
        self._talkspurt = True
        self.frames_heard = 0
        self.marks_echoed = 0
        self.frames_dropped = 0
        self.audio_sink: AudioSink | None = None
        self.dtmf_sink: DtmfSink | None = None
        self.ended = asyncio.Event()
        self.hangup_by: str | None = None
        self.transferred_to: TransferTarget | None = None
        self._frames_played = 0
        clock.add(self)

    @property
    def call_sid(self) -> str:
        return self.started.call_sid

    # --- CallTransport ------------------------------------------------------------------------------
    @property
    def frames_played(self) -> int:
        return self._frames_played

    def play(self, pcm16: bytes) -> None:
        if self.ended.is_set() or not pcm16:
            return
        if len(pcm16) % PCM_FRAME_BYTES:
            pcm16 += bytes(PCM_FRAME_BYTES - len(pcm16) % PCM_FRAME_BYTES)
        mulaw = audioop.lin2ulaw(pcm16, 2)
        for start in range(0, len(mulaw), MULAW_FRAME_BYTES):
            self._playout.append(mulaw[start : start + MULAW_FRAME_BYTES])
        self._chunk_ends.append(self._frames_played + len(self._playout))
        self._drained.clear()
        if self._talkspurt:
            # The lead goes out now, not at the next tick: a reply is queued a few milliseconds after the
            # tick, and what follows the lead is paced by the ticks as before.
            self._send_frames(self._lead_frames)

    def flush(self) -> int:
        dropped = len(self._playout)
        self._playout.clear()
        self._chunk_ends.clear()
        self.frames_dropped += dropped
        if (dropped or self._pending_marks) and not self.ended.is_set():
            # Twilio may still hold the lead and whatever the network delayed: drop that too.
            self._emit(self._connection.clear())
            self._cleared_marks.update(self._pending_marks)
            self._pending_marks.clear()
        self._talkspurt = True
        self._drained.set()
        self._marks_settled.set()
        return dropped

    async def wait_drained(self) -> None:
        await self._drained.wait()
        if self._marks_settled.is_set() or self.ended.is_set():
            return
        remaining = self._last_frame_sent_at + self._mark_grace_s - time.monotonic()
        try:
            await asyncio.wait_for(self._marks_settled.wait(), max(remaining, 0.0))
        except TimeoutError:
            log.warning(
                "call %s: no mark back %.1f s after the last frame; carrying on",
                self.call_sid,
                self._mark_grace_s,
            )

    async def hangup(self) -> None:
        """End the call: closing the socket ends `<Connect>`, and with no TwiML left Twilio hangs up."""
        if self.ended.is_set():
            return
        self.hangup_by = "agent"
        self._finish()
        with contextlib.suppress(Exception):
            await self._close()

    # --- beyond CallTransport -----------------------------------------------------------------------
    async def transfer(self, target: str | TransferTarget, *, announcement: str | None = None) -> bool:
        """Hand the caller to a human via the REST API (Twilio then stops the stream); False on failure."""
        if self._control is None:
            log.warning("call %s: transfer impossible: no Twilio REST credentials configured", self.call_sid)
            return False
        try:
            resolved = transfer_target(target) if isinstance(target, str) else target
        except ValueError as exc:
            log.warning("call %s: %s", self.call_sid, exc)
            return False
        control = self._control
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(
                self._executor, lambda: control.transfer(self.call_sid, resolved, announcement=announcement)
            )
        except CallControlError as exc:
            log.warning("call %s: transfer to %s failed: %s", self.call_sid, target, exc)
            return False
        self.transferred_to = resolved
        self.hangup_by = "agent"
        return True

    # --- from the WebSocket -------------------------------------------------------------------------
    def on_event(self, event: MediaStreamEvent) -> None:
        if isinstance(event, MediaReceived):
            if event.track == "inbound":
                self._on_media(event)
        elif isinstance(event, DtmfReceived):
            if self.dtmf_sink is not None:
                self.dtmf_sink(event.digit)
        elif isinstance(event, MarkReceived):
            self._on_mark(event.name)
        elif isinstance(event, StreamStopped):
            self.remote_ended()

    def remote_ended(self) -> None:
        """Twilio sent `stop` or the socket went away: the caller is gone."""
        if self.hangup_by is None:
            self.hangup_by = "caller"
        self._finish()

    def _on_media(self, event: MediaReceived) -> None:
        sink = self.audio_sink
        if event.gap_ms:
            missing = min(event.gap_ms // FRAME_MS, MAX_GAP_FILL_FRAMES)
            if sink is not None:
                for _ in range(missing):
                    sink(bytes(PCM_FRAME_BYTES))
        data = self._inbound + event.payload
        whole = len(data) - len(data) % MULAW_FRAME_BYTES
        self._inbound = data[whole:]
        if sink is None:
            return
        for start in range(0, whole, MULAW_FRAME_BYTES):
            sink(audioop.ulaw2lin(data[start : start + MULAW_FRAME_BYTES], 2))

    def _on_mark(self, name: str) -> None:
        frames = self._pending_marks.pop(name, None)
        if frames is None:
            if name in self._cleared_marks:
                self._cleared_marks.discard(name)  # echoed because `clear` dropped its audio
            else:
                log.info("call %s: mark %r that we did not send", self.call_sid, name[:40])
            return
        self.marks_echoed += 1
        self.frames_heard = max(self.frames_heard, frames)
        if not self._pending_marks:
            self._marks_settled.set()

    # --- the media clock ----------------------------------------------------------------------------
    def on_tick(self, frames: int = 1) -> None:
        """`frames` > 1 when the clock was held up: send what those intervals were due to carry."""
        if self._playout:
            self._send_frames((self._lead_frames if self._talkspurt else 1) + max(frames - 1, 0))

    def _send_frames(self, count: int) -> None:
        self._talkspurt = False
        for _ in range(min(count, len(self._playout))):
            self._emit(self._connection.media(self._playout.popleft()))
            self._frames_played += 1
            if self._chunk_ends and self._chunk_ends[0] <= self._frames_played:
                self._chunk_ends.popleft()
                name = f"f{self._frames_played}"
                self._pending_marks[name] = self._frames_played
                self._marks_settled.clear()
                self._emit(self._connection.mark(name))
        self._last_frame_sent_at = time.monotonic()
        if not self._playout:
            self._talkspurt = True
            self._drained.set()

    def _emit(self, text: str) -> None:
        if not self.ended.is_set():
            self._send(text)

    def _finish(self) -> None:
        if self.ended.is_set():
            return
        self._clock.discard(self)
        self._playout.clear()
        self._chunk_ends.clear()
        self._drained.set()
        self._marks_settled.set()
        self.ended.set()

"""The steady run: how an RtpStream (telephony.media) ticks while a call only sends and receives audio.

Nearly every tick of nearly every call is the same: exactly the next packet of the same source came in,
the jitter buffer is playing without a gap, and one audio packet goes out. What the jitter buffer, the
RFC 3550 statistics and the sender then do is counting, on their fast paths, through half a dozen Python
calls, which at a thousand calls is most of the media path's time (bench/media_cost.py). In a steady run
the stream does those ticks itself, keeping the few values they change in its own slots, and accounts them
to those objects in one go when the run ends (`_end_run`):

* at the first tick that is not steady: another source or sequence number, anything but plain 20 ms audio
  (a digit, a marker, RTCP on the RTP port), a late tick, a timestamp wrap, a packet missing for two
  ticks or one that would leave the jitter buffer empty or holding more than its target;
* before anything looks at those objects (report, stats, RTCP) or changes how the stream sends (direction,
  remote address, digits out, `sending`, `rtp_timeout_s`, closing);
* before the tick at which the jitter buffer must judge the delay (a window that may shed delay or relax
  the target), an RTCP report is due, or the outgoing sequence number or timestamp wraps.

A tick without a packet (it is late: the next tick brings two) is steady too, as long as the jitter buffer
has something to play; such ticks change how much it holds, which the run logs for the buffer's account.
What is unchanged by a run is read live: the playout queue, the talkspurt marker, `frames_played`,
`on_speech_sent`, the drained event, where to send. The objects end up exactly as if every tick had gone
through them; tests/telephony/test_media_run.py checks that tick by tick against a stream without runs.
"""

from __future__ import annotations

import asyncio
import collections
import os
import socket
import struct
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from telephony.jitter import JitterBuffer
from telephony.media_io import FRAME_S, SAMPLES_PER_FRAME
from telephony.rtcp import ReceptionStats
from telephony.rtp import RtpSender

_PLAIN_PACKET_BYTES = 12 + SAMPLES_PER_FRAME  # 20 ms of G.711 behind a header without CSRC or extension
# The fixed header as three 32-bit words. The first (version, flags, marker, payload type and sequence
# number) compares and counts as one number.
_HEAD_WORDS = struct.Struct("!III")
_unpack_head_words, _pack_head_words = _HEAD_WORDS.unpack_from, _HEAD_WORDS.pack
_MARKER_BIT = 0x0080_0000
_write = os.write


if TYPE_CHECKING:
    from telephony.media import MediaStats

    class _Stream:
        """What the run uses of the stream (telephony.media.RtpStream), for the type checker."""

        _inbox: list[Any]
        _reception: ReceptionStats | None
        _jitter: JitterBuffer
        _sender: RtpSender
        _stats: MediaStats
        _decode: Callable[[bytes, int], bytes]
        _on_audio: Callable[[bytes], None]
        _playout: collections.deque[bytes]
        _silence: bytes
        _talkspurt_start: bool
        _resume_marker: bool
        _ahead: bool
        _drained: asyncio.Event | None
        frames_played: int
        on_speech_sent: Callable[[int], None] | None
        _connected: bool
        _fd: int
        _sock: socket.socket | None
        _remote: tuple[str, int]
        _send_failed: Callable[[OSError], None]
        _sending: bool
        _direction_sends: bool
        _peer_sends: bool
        _rtp_timeout_s: float | None
        _quiet_ticks: int
        _timeout_fired: bool
        _rtcp_countdown: int
        _event: object
        _dtmf_queue: collections.deque[tuple[int, int]]

else:
    _Stream = object


class SteadyRun(_Stream):
    """RtpStream's tick, with the steady run; the stream provides the rest (`_tick`, the general tick)."""

    __slots__ = (
        "_head_base",
        "_run_depth_max",
        "_run_depths",
        "_run_end",
        "_run_head",
        "_run_held",
        "_run_jitter_q4",
        "_run_last",
        "_run_played",
        "_run_ssrc",
        "_run_transit",
        "_run_tx_head",
        "_run_tx_ssrc",
        "_run_tx_ts",
    )

    def _tick(self, frames: int) -> None:
        raise NotImplementedError

    def _init_run(self, payload_type: int) -> None:
        # A first header word: version 2 without padding, extension, CSRC or marker, the payload type,
        # and the sequence number in the low 16 bits.
        self._head_base = (0x80 << 8 | payload_type) << 16
        # The first header word of the packet after the run's last one out (0: not in a run); the first
        # header word, SSRC and A.8 state of the next packet in; what the jitter buffer holds and played
        # last; the first header word, timestamp and SSRC of the next packet out.
        self._run_end = 0
        self._run_head = self._run_ssrc = self._run_transit = self._run_jitter_q4 = 0
        self._run_held: collections.deque[bytes] = collections.deque()
        self._run_last = b""
        self._run_tx_head = self._run_tx_ts = self._run_tx_ssrc = 0
        # For ticks with no packet or two: the frames played so far less the packets in (so that with
        # what is held, it counts the frames played), the most the buffer may hold after a tick, and
        # (tick, held after it, packets in, quiet ticks after it) for each such tick.
        self._run_played = self._run_depth_max = 0
        self._run_depths: list[tuple[int, int, int, int]] = []

    def on_tick(self, frames: int = 1) -> None:
        """The media clock's tick: in a steady run, done here; otherwise, or if it is not steady, `_tick`."""
        if not self._run_end:
            self._tick(frames)
            return
        inbox = self._inbox
        if frames != 1:
            self._leave_run(frames)
            return
        if len(inbox) == 2:
            data = inbox[0]
            if len(data) != _PLAIN_PACKET_BYTES:
                self._leave_run(frames)
                return
            head, timestamp, ssrc = _unpack_head_words(data)
            if head != self._run_head or ssrc != self._run_ssrc:
                self._leave_run(frames)
                return
            # RFC 3550 A.8 as on ReceptionStats.update's fast path; a 32-bit wrap takes the general path.
            transit = inbox[1] - timestamp
            d = transit - self._run_transit
            if d < 0:
                d = -d
            if d >= 0x8000_0000:
                self._leave_run(frames)
                return
            inbox.clear()
            self._run_head = head + 1
            self._run_transit = transit
            jitter_q4 = self._run_jitter_q4
            self._run_jitter_q4 = jitter_q4 + d - ((jitter_q4 + 8) >> 4)
            # The jitter buffer: the packet goes in behind what is held, the oldest comes out to be played.
            held = self._run_held
            held.append(data[12:])
            frame = self._run_last = held.popleft()
        else:
            uneven = self._uneven_tick(inbox)
            if uneven is None:
                self._leave_run(frames)
                return
            frame = uneven
        self._on_audio(self._decode(frame, 2))
        # The packet out, as the general tick sends it (neither hold, nor a digit, nor a resume here).
        head = self._run_tx_head
        timestamp = self._run_tx_ts
        self._run_tx_head = head + 1
        self._run_tx_ts = timestamp + SAMPLES_PER_FRAME
        playout = self._playout
        if playout:
            if self._talkspurt_start:
                self._talkspurt_start = False
                head |= _MARKER_BIT
            data = _pack_head_words(head, timestamp, self._run_tx_ssrc) + playout.popleft()
            self.frames_played += 1
            if self.on_speech_sent is not None:
                self.on_speech_sent(self.frames_played)
            if not playout and self._drained is not None:
                self._drained.set()
        elif self._ahead:
            # The talkspurt went out a tick early (RtpStream._send_ahead): this tick's silence is left out.
            # A run counts one packet per tick, so it ends here, and the next starts at once.
            self._run_tx_head, self._run_tx_ts = head, timestamp
            self._end_run()
            self._rtcp_countdown -= 1
            self._ahead = False
            self._talkspurt_start = True
            self._start_run()
            return
        else:
            self._talkspurt_start = True
            data = _pack_head_words(head, timestamp, self._run_tx_ssrc) + self._silence
        try:
            if self._connected:
                _write(self._fd, data)
            else:
                self._sock.sendto(data, self._remote)  # type: ignore[union-attr]  # a run needs the socket
        except OSError as exc:
            self._send_failed(exc)
        if self._run_tx_head == self._run_end:
            self._end_run()

    def _leave_run(self, frames: int) -> None:
        self._end_run()
        self._tick(frames)

    def _uneven_tick(self, inbox: list[Any]) -> bytes | None:
        """The receiving half of a steady tick that brought no packet, or two; the frame to play, or None
        (having changed nothing) if the tick is not steady after all."""
        held = self._run_held
        depths = self._run_depths
        tick = self._run_played + self._run_head - len(held)  # frames played so far in this run
        if not inbox:
            # The packet is late: play what is held. Not twice in a row, and not what would time out.
            if not held:
                return None
            last = depths[-1] if depths else None
            if last is not None and last[0] == tick - 1 and last[2] == 0:
                return None
            watching = self._rtp_timeout_s is not None and self._peer_sends and self._sending
            quiet = self._quiet_ticks if tick == 0 else 1 if watching else 0
            if watching:
                quiet += 1
                if not self._timeout_fired and quiet * FRAME_S >= self._rtp_timeout_s:  # type: ignore[operator]
                    return None
            frame = self._run_last = held.popleft()
            depths.append((tick, len(held), 0, quiet))
            return frame
        if len(inbox) != 4:
            return None
        first, second = inbox[0], inbox[2]
        if len(first) != _PLAIN_PACKET_BYTES or len(second) != _PLAIN_PACKET_BYTES:
            return None
        head, timestamp, ssrc = _unpack_head_words(first)
        next_head, next_timestamp, next_ssrc = _unpack_head_words(second)
        if head != self._run_head or next_head != head + 1 or ssrc != self._run_ssrc or next_ssrc != ssrc:
            return None
        if len(held) + 1 > self._run_depth_max:  # what it holds after taking both and playing one
            return None
        transit = inbox[1] - timestamp
        d = abs(transit - self._run_transit)
        next_transit = inbox[3] - next_timestamp
        next_d = abs(next_transit - transit)
        if d >= 0x8000_0000 or next_d >= 0x8000_0000:
            return None
        inbox.clear()
        self._run_head = next_head + 1
        self._run_transit = next_transit
        jitter_q4 = self._run_jitter_q4
        jitter_q4 += d - ((jitter_q4 + 8) >> 4)
        self._run_jitter_q4 = jitter_q4 + next_d - ((jitter_q4 + 8) >> 4)
        held.append(first[12:])
        held.append(second[12:])
        frame = self._run_last = held.popleft()
        depths.append((tick, len(held), 2, 0))
        return frame

    def _start_run(self) -> None:
        """Start a steady run if every part of the call is steady (at the end of a general tick)."""
        reception = self._reception
        if (
            reception is None
            or self._sock is None
            or not (self._sending and self._direction_sends)
            or self._event is not None
            or self._dtmf_queue
            or self._resume_marker
            or (self._rtp_timeout_s is not None and self._rtp_timeout_s <= 2 * FRAME_S)
        ):
            return
        expected = reception.in_order_state()
        if expected is None:
            return
        seq, transit, jitter_q4 = expected
        held = self._jitter.steady_held(seq, reception.ssrc)
        if held is None:
            return
        sender = self._sender
        ticks = min(self._jitter.steady_ticks(), self._rtcp_countdown - 1, sender.room(SAMPLES_PER_FRAME))
        if ticks < 1:
            return
        self._run_head = self._head_base | seq
        self._run_ssrc = reception.ssrc
        self._run_transit = transit
        self._run_jitter_q4 = jitter_q4
        self._run_held = collections.deque(held)
        # Frames played = packets in (the first header word moved on by them) + held at the start - held.
        self._run_played = len(held) - self._run_head
        self._run_depth_max = max(self._jitter.target, len(held))
        self._run_depths = []
        self._run_tx_head = self._head_base | sender.sequence_number
        self._run_tx_ts = sender.timestamp
        self._run_tx_ssrc = sender.ssrc
        self._run_end = self._run_tx_head + ticks

    def _end_run(self) -> None:
        """Account the steady run's ticks to the jitter buffer, the statistics and the sender, and end it."""
        self._run_end = 0
        reception = self._reception
        assert reception is not None
        # What came in and went out: the first header words advanced by one per packet (the carry from the
        # sequence number into the payload type at a wrap makes a word no packet has, which ends the run).
        received = self._run_head - (self._head_base | reception.max_seq) - 1
        played = self._run_played + self._run_head - len(self._run_held)
        if received > 0:
            reception.account_in_order(received, self._run_transit, self._run_jitter_q4)
            self._stats.packets_received += received
        if played > 0:
            depths = self._run_depths
            self._jitter.account_steady(received, self._run_held, self._run_last, depths)
            last = depths[-1] if depths else None
            if last is not None and last[0] == played - 1 and last[2] == 0:
                self._quiet_ticks = last[3]  # the last tick brought no packet
            else:
                # The general tick leaves one quiet tick counted after a packet, if it counts them (what
                # it counts by cannot change during a run).
                watching = self._rtp_timeout_s is not None and self._peer_sends and self._sending
                self._quiet_ticks = 1 if watching else 0
        sent = self._run_tx_head - (self._head_base | self._sender.sequence_number)
        if sent > 0:
            self._sender.account(sent, SAMPLES_PER_FRAME, SAMPLES_PER_FRAME)
            self._rtcp_countdown -= sent
        self._run_held = collections.deque()
        self._run_last = b""

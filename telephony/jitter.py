"""Receive-side jitter buffer: packets in by sequence number, one 20 ms frame out per media-clock tick.

A pure object (no clock, no socket), driven by `push()` as packets arrive and `pop()` once per tick, so the
playout policy is tested by calling it, not by sleeping. The policy keeps latency bounded, which a plain
reorder buffer does not (aiortc#543, where latency grows after every loss):

* Playout starts `target` ticks after the first packet (40 ms by default), so arrival jitter up to the
  target is absorbed.
* A missing packet with later ones already here is lost or very late: it is concealed (the last frame
  repeated, attenuated, then silence) and playout moves on; if it turns up afterwards it is dropped as late.
* When the buffer runs dry (a delay spike, a burst of loss, the far end going quiet), nothing is delivered
  and the tick is counted as a stall; the next packet to arrive skips as many missing packets as ticks went
  by, so a loss burst does not leave its duration as extra delay. A packet that only arrived late (no gap)
  raises the target by one frame, up to `max_delay_frames`.
* The depth is watched over a window: if even its minimum stayed above the target (a burst arrived at
  once, or the target was just lowered), that many frames are dropped so delay returns to the target:
  quiet ones during the next window if there are any, otherwise the oldest at its end. A hard cap drops
  at once the oldest frames that would make the delay exceed `cap_frames`.
* After a quiet period with no stall the target relaxes by one frame, down to `min_delay_frames`.
* An SSRC change, a sequence jump of `resync_jump` or more, two packets confirming a restarted
  numbering, a marker bit after a stall (talkspurt after hold or silence suppression) or a stall longer
  than `resync_after` start a new playout from the packet that arrived.

Frames are PCM16, or with a `codec` that codec's payloads (one byte per sample: G.711), which the caller
decodes after pop(): then a frame is decoded just before it is used, while it is still in the CPU caches,
and is half the size while it waits. Packets may carry any whole number of samples (ptime 10, 30, 40 ms are
re-cut to 20 ms).
"""

from __future__ import annotations

import enum
import sys
import warnings
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Protocol

if sys.version_info < (3, 13):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        import audioop
else:  # pragma: no cover - exercised on 3.13+ only
    import audioop

FRAME_BYTES = 320  # 20 ms of 8 kHz PCM16
# Recently played sequence numbers, kept to tell a duplicate from a late packet: slot ext % 64 holds the lap
# (ext // 64) of the packet played there, modulo 256. Small ints are shared objects, so playing a packet
# frees no int object (a cache miss per tick with many calls). Only packets within max_misorder of the
# playout point are looked up, far below the 16,384 packets at which two laps would look alike.
_RING_BITS = 6
_RING = 1 << _RING_BITS
_RING_MASK = _RING - 1
_NOT_PLAYED = -1


class Arrival(enum.Enum):
    ACCEPTED = "accepted"
    DUPLICATE = "duplicate"
    LATE = "late"  # its playout time has passed (played, concealed or skipped already)
    RESYNC = "resync"  # accepted, and it started a new playout


@dataclass(frozen=True, slots=True)
class PlayoutPolicy:
    min_delay_frames: int = 2  # initial and lowest target: 40 ms
    max_delay_frames: int = 6  # the target never adapts beyond 120 ms
    cap_frames: int = 10  # never hold more than 200 ms
    shrink_window: int = 25  # ticks (500 ms) over which the minimum depth is watched
    relax_after: int = 500  # ticks (10 s) without a stall before the target drops a frame
    resync_after: int = 50  # a stall of 1 s ends the playout; the next packet starts a new one
    conceal_repeats: int = 2  # attenuated repeats of the last frame before concealing with silence
    max_misorder: int = 100  # further back than this is a restarted sequence, not a late packet
    resync_jump: int = 50  # a jump of 1 s or more ahead is a new stream: start a new playout
    quiet_rms: int = 300  # frames below this level (about -40 dBFS) are dropped first when delay shrinks

    def __post_init__(self) -> None:
        if not 1 <= self.min_delay_frames <= self.max_delay_frames < self.cap_frames <= self.resync_jump:
            raise ValueError("need 1 <= min_delay_frames <= max_delay_frames < cap_frames <= resync_jump")
        if self.shrink_window < 1 or self.relax_after < 1 or self.resync_after < 1:
            raise ValueError("windows must be at least one tick")


class _State(enum.Enum):
    IDLE = 0  # nothing to play until a packet arrives
    PRIMING = 1  # first packet in, waiting for the target delay to pass
    PLAYING = 2


_IDLE, _PRIMING, _PLAYING = _State.IDLE, _State.PRIMING, _State.PLAYING
# Module constants: an attribute of an Enum class goes through EnumType.__getattr__ in 3.11, which costs
# more than the rest of push() on the per-packet path.
_ACCEPTED, _DUPLICATE, _LATE, _RESYNC = Arrival.ACCEPTED, Arrival.DUPLICATE, Arrival.LATE, Arrival.RESYNC


class FrameCodec(Protocol):
    """What the buffer needs of a codec whose payloads it holds: concealment and levels work on PCM16."""

    def decode(self, data: bytes) -> bytes: ...

    def encode(self, pcm16: bytes) -> bytes: ...


class JitterBuffer:
    # Slots: with more than 30 attributes an instance's __dict__ would be a full hash table (1.5 KB) that
    # every push and pop reads across; a thousand calls then miss the CPU caches on every packet.
    __slots__ = (
        "_bad_seq",
        "_calm_ticks",
        "_cap_packets",
        "_codec",
        "_conceal_run",
        "_drop_budget",
        "_highest",
        "_last_frame",
        "_min_depth",
        "_next",
        "_packet_bytes",
        "_pending",
        "_played",
        "_recut",
        "_shrink_window",
        "_silence",
        "_slots",
        "_ssrc",
        "_stall",
        "_state",
        "_waited",
        "_window",
        "concealed",
        "delivered",
        "discarded",
        "duplicates",
        "frame_bytes",
        "late",
        "policy",
        "resyncs",
        "skipped",
        "stalls",
        "target",
    )

    def __init__(
        self,
        policy: PlayoutPolicy | None = None,
        frame_bytes: int = FRAME_BYTES,
        codec: FrameCodec | None = None,
    ) -> None:
        """`frame_bytes` is the size of a 20 ms frame as held: 320 for PCM16, 160 for G.711 payloads."""
        self.policy = policy or PlayoutPolicy()
        self.frame_bytes = frame_bytes
        self.target = self.policy.min_delay_frames
        self._codec = codec
        self._silence = self._silent(frame_bytes)
        self._state = _IDLE
        self._ssrc: int | None = None
        self._slots: dict[int, bytes] = {}  # extended sequence number -> PCM (or payload, with a codec)
        self._next = 0  # extended sequence number to play next
        self._highest = -1  # highest extended sequence number held or played
        self._played = [_NOT_PLAYED] * _RING
        self._pending = b""  # samples of a packet longer than the remainder of a frame (ptime != 20)
        self._packet_bytes = frame_bytes  # size of the last packet: concealment and depth use it
        self._cap_packets = self.policy.cap_frames
        self._shrink_window = self.policy.shrink_window  # read on every tick
        self._recut = False  # packets are not 20 ms, or samples are pending: frames must be re-cut
        self._last_frame = self._silence
        self._conceal_run = 0
        self._waited = 0
        self._stall = 0
        self._min_depth = 1 << 30
        self._window = 0
        self._calm_ticks = 0
        self._bad_seq = -1
        self._drop_budget = 0  # frames to drop, preferably quiet ones, to bring delay back to the target
        # Counters: frames (for concealed) and packets (for the rest).
        self.delivered = 0
        self.concealed = 0
        self.late = 0
        self.duplicates = 0
        self.discarded = 0  # held packets dropped to bring delay back to the target
        self.skipped = 0  # missing packets whose playout time passed during a stall
        self.stalls = 0  # ticks with nothing to deliver while playing
        self.resyncs = 0

    # --- arrivals -----------------------------------------------------------------------------------
    def push(self, sequence_number: int, ssrc: int, marker: bool, pcm: bytes) -> Arrival:
        ext = self._highest + 1
        if (
            sequence_number == ext & 0xFFFF
            and ssrc == self._ssrc
            and self._state is _PLAYING
            and not self._stall
            and ext - self._next < self._cap_packets
            and len(pcm) == self._packet_bytes
        ):
            # The common case, the next packet in order while playing: file it. Nothing above the highest
            # is held, so it cannot be a duplicate.
            self._slots[ext] = pcm
            self._highest = ext
            return _ACCEPTED
        # The extended sequence number nearest to what we expect, so wrap-around needs no special case.
        nxt = self._next
        ext = nxt + ((sequence_number - nxt + 0x8000) & 0xFFFF) - 0x8000
        return self._push_general(sequence_number, ext, ssrc, marker, pcm)

    def _push_general(self, sequence_number: int, ext: int, ssrc: int, marker: bool, pcm: bytes) -> Arrival:
        if self._ssrc != ssrc:
            # A new source (a transfer, a restarted phone, a media server taking over): start afresh.
            known = self._ssrc is not None
            self._ssrc = ssrc
            self._played = [_NOT_PLAYED] * _RING
            self._state = _IDLE
            self._resync(sequence_number, pcm)
            if known:
                self.resyncs += 1
                return _RESYNC
            return _ACCEPTED
        if self._state is _IDLE:
            return self._resync(ext, pcm)
        if self._stall:
            if marker or self._stall >= self.policy.resync_after:
                return self._resync(ext, pcm)
            gap = ext - self._next
            if gap > 0:
                # These packets were due during the stall: playing or concealing them now would add
                # their duration to the delay for the rest of the call.
                skip = min(gap, self._stall * self.frame_bytes // self._packet_bytes)
                self._next += skip
                self.skipped += skip
            elif gap == 0:
                # Nothing was lost, it was late: the far end's jitter exceeds the target delay.
                self.target = min(self.target + 1, self.policy.max_delay_frames)
                self._calm_ticks = 0
            self._stall = 0
        delta = ext - self._next
        if delta < 0:
            if self._state is _PRIMING and delta > -self._cap_packets:
                # Reordered ahead of the packet that started priming: nothing has played yet.
                self._next = ext
            elif delta < -self.policy.max_misorder:
                # RFC 3550 A.1: a large jump back is a restarted sequence once the next packet follows.
                if sequence_number == self._bad_seq:
                    return self._resync(ext, pcm)
                self._bad_seq = (sequence_number + 1) & 0xFFFF
                self.late += 1
                return _LATE
            elif self._played[ext & _RING_MASK] == (ext >> _RING_BITS) & 0xFF:
                self.duplicates += 1
                return _DUPLICATE
            else:
                self.late += 1
                return _LATE
        elif delta >= self._cap_packets:
            if delta * self._packet_bytes >= self.policy.resync_jump * self.frame_bytes:
                return self._resync(ext, pcm)  # not a burst: the numbering jumped, a new stream
            # Holding everything up to this packet would exceed the cap: drop the oldest so it sits at the
            # target depth, and keep playing (re-priming here would starve an overloaded receiver).
            keep_from = ext - max(1, self.target * self.frame_bytes // self._packet_bytes) + 1
            slots = self._slots
            for old in [seq for seq in slots if seq < keep_from]:
                del slots[old]
                self.discarded += 1
            self._next = keep_from
        if ext in self._slots:
            self.duplicates += 1
            return _DUPLICATE
        self._slots[ext] = pcm
        self._note_packet_size(pcm)
        if ext > self._highest:
            self._highest = ext
        return _ACCEPTED

    def _note_packet_size(self, pcm: bytes) -> None:
        if pcm and len(pcm) != self._packet_bytes:
            self._packet_bytes = len(pcm)
            self._cap_packets = max(1, self.policy.cap_frames * self.frame_bytes // len(pcm))
            self._recut = True

    def _resync(self, ext: int, pcm: bytes) -> Arrival:
        was_playing = self._state is not _IDLE
        self._slots.clear()
        self._pending = b""
        self._slots[ext] = pcm
        self._note_packet_size(pcm)
        self._next = ext
        self._highest = ext
        self._state = _PRIMING
        self._waited = 0
        self._stall = 0
        self._bad_seq = -1
        self._min_depth = 1 << 30
        self._window = 0
        self._drop_budget = 0
        if was_playing:
            self.resyncs += 1
            return _RESYNC
        return _ACCEPTED

    # --- playout --------------------------------------------------------------------------------------
    def pop(self) -> bytes | None:
        """The frame for this tick, or None while priming, stalled or idle."""
        if self._state is _PLAYING and not self._recut and not self._drop_budget:
            # The common case, the next 20 ms packet is here: take it without further ado.
            nxt = self._next
            pcm = self._slots.pop(nxt, None)
            if pcm is not None:
                self._played[nxt & _RING_MASK] = (nxt >> _RING_BITS) & 0xFF
                self._last_frame = pcm
                self._conceal_run = 0
                self._next = nxt + 1
                self.delivered += 1
                depth = self._highest - nxt
                if depth < self._min_depth:
                    self._min_depth = depth
                self._window += 1
                if self._window >= self._shrink_window:
                    self._end_window()
                return pcm
        return self._pop_general()

    def _pop_general(self) -> bytes | None:
        state = self._state
        if state is not _PLAYING:
            if state is _IDLE:
                return None
            self._waited += 1
            if self._waited <= self.target:
                return None
            self._state = _PLAYING
        frame = self._pop_recut() if self._recut else self._take()
        while (
            frame is not None
            and self._drop_budget
            and self._highest >= self._next
            and audioop.rms(frame if self._codec is None else self._codec.decode(frame), 2)
            < self.policy.quiet_rms
        ):
            # Shrinking the delay in a pause costs the listener (or the recogniser) nothing.
            self._drop_budget -= 1
            self.discarded += 1
            frame = self._pop_recut() if self._recut else self._take()
        if frame is None:
            self._stall += 1
            self.stalls += 1
            self._min_depth = 0
            if self._stall >= self.policy.resync_after:
                self._state = _IDLE
            return None
        self.delivered += 1
        depth = self._highest - self._next + 1
        if depth < self._min_depth:
            self._min_depth = depth
        self._window += 1
        if self._window >= self._shrink_window:
            self._end_window()
        return frame

    def _take(self) -> bytes | None:
        """The next packet's PCM, a concealment of it when later packets are here, None if nothing is."""
        nxt = self._next
        pcm = self._slots.pop(nxt, None)
        if pcm is not None:
            self._played[nxt & _RING_MASK] = (nxt >> _RING_BITS) & 0xFF
            self._last_frame = pcm
            self._conceal_run = 0
            self._next = nxt + 1
            return pcm
        if self._highest < nxt:
            return None
        self._next = nxt + 1
        return self._conceal(self._packet_bytes)

    def _pop_recut(self) -> bytes | None:
        # Packets that are not exactly 20 ms: collect samples until a whole frame is available. A stall
        # keeps what was collected, so nothing is lost or duplicated at the join.
        while len(self._pending) < self.frame_bytes:
            pcm = self._take()
            if pcm is None:
                return None
            self._pending += pcm
        frame, self._pending = self._pending[: self.frame_bytes], self._pending[self.frame_bytes :]
        if not self._pending and self._packet_bytes == self.frame_bytes:
            self._recut = False
        return frame

    def _conceal(self, size: int) -> bytes:
        self._conceal_run += 1
        self.concealed += 1
        last = self._last_frame
        if self._conceal_run > self.policy.conceal_repeats or len(last) != size:
            return self._silent(size) if size != self.frame_bytes else self._silence
        # Halve the level with each repeat: a short loss sounds like a dip, not a click or a stutter.
        codec = self._codec
        if codec is None:
            return audioop.mul(last, 2, 0.5**self._conceal_run)
        return codec.encode(audioop.mul(codec.decode(last), 2, 0.5**self._conceal_run))

    def _silent(self, size: int) -> bytes:
        return bytes(size) if self._codec is None else self._codec.encode(bytes(2 * size))

    def _end_window(self) -> None:
        # push() keeps the depth under the cap; this is the slow drift back to the target. Even the
        # shallowest point of the window held more than the target: that much delay buys nothing. The
        # excess is dropped in quiet frames during the next window; what no pause absorbed by then is
        # dropped at once, speech or not, so the delay stays bounded.
        held = self._min_depth * self._packet_bytes
        excess = (held - self.target * self.frame_bytes) // self._packet_bytes
        if self._drop_budget:
            for _ in range(min(self._drop_budget, max(0, excess))):
                if self._slots.pop(self._next, None) is not None:
                    self.discarded += 1
                self._next += 1
            self._drop_budget = 0
        elif excess > 0:
            self._drop_budget = excess
        self._calm_ticks += self._window
        self._window = 0
        self._min_depth = 1 << 30
        if self._calm_ticks >= self.policy.relax_after:
            self._calm_ticks = 0
            if self.target > self.policy.min_delay_frames:
                self.target -= 1

    # --- the steady state, played through by the caller (telephony.media_run) ---------------------------
    def steady_held(self, sequence_number: int, ssrc: int) -> list[bytes] | None:
        """The payloads held, in order, if the buffer is steady for `ssrc` with `sequence_number` next.

        Steady: playing whole 20 ms packets, none missing, no stall, re-cut or delay to shed. Then ticks
        that bring the next packets in order, and leave something to play and no more held than the
        target (or than now, if more), take the fast paths of push() and pop(), which a caller may do
        itself for `steady_ticks()` ticks and account afterwards with `account_steady()`. None if the
        buffer is not steady.
        """
        nxt, highest = self._next, self._highest
        if (
            self._state is not _PLAYING
            or self._stall
            or self._recut
            or self._drop_budget
            or self._pending
            or self._packet_bytes != self.frame_bytes
            or ssrc != self._ssrc
            or (highest + 1) & 0xFFFF != sequence_number
            or highest + 1 - nxt >= self._cap_packets
            or highest - nxt + 1 != len(self._slots)
        ):
            return None
        held = []
        for ext in range(nxt, highest + 1):
            payload = self._slots.get(ext)
            if payload is None:
                return None
            held.append(payload)
        return held

    def steady_ticks(self) -> int:
        """How many ticks the steady state may be played through before one needs the buffer's judgement.

        That is the end of a window that may find delay to shed (more is held than the target) or that
        relaxes the target; ends of windows that only count calm ticks are accounted by account_steady().
        """
        held = self._highest - self._next + 1
        window_end = self._shrink_window - self._window  # the tick that ends the current window
        if held > self.target:
            return window_end - 1
        counted_ends = -(-(self.policy.relax_after - self._calm_ticks) // self._shrink_window) - 1
        return window_end + max(0, counted_ends) * self._shrink_window - 1

    def account_steady(
        self,
        pushed: int,
        held: Collection[bytes],
        last_frame: bytes,
        uneven: Sequence[tuple[int, int, int, int]] = (),
    ) -> None:
        """As steady ticks (at most steady_ticks()) that each pushed the next packets in order, then popped
        a frame, from the steady state: `pushed` packets in all, `held` what is held after them,
        `last_frame` the last played. Each tick pushed one packet but those in `uneven`, as (tick, what
        was held after it, packets it pushed, ...): one with none or two changes what the later ones hold.
        """
        entry = self._highest - self._next + 1
        played = entry + pushed - len(held)
        if played <= 0:
            return
        first = self._next
        nxt = first + played
        self._next = nxt
        self._highest += pushed
        self.delivered += played
        slots = self._slots
        slots.clear()
        for ext, payload in enumerate(held, nxt):
            slots[ext] = payload
        self._last_frame = last_frame
        self._conceal_run = 0
        # The laps of what was played (see _RING_BITS): the last ring's worth, a slice per lap.
        ring = self._played
        ext = max(first, nxt - _RING)
        while ext < nxt:
            end = min(nxt, (ext | _RING_MASK) + 1)
            index = ext & _RING_MASK
            ring[index : index + end - ext] = [(ext >> _RING_BITS) & 0xFF] * (end - ext)
            ext = end
        # What each pop saw held after it, window by window. Windows that ended meanwhile found nothing to
        # shed (nothing above the target was held) and did not relax the target (steady_ticks).
        window, shrink = self._window, self._shrink_window
        min_depth = self._min_depth
        depth, tick = entry, 0
        for until, then, _, _ in (*uneven, (played, -1, 0, 0)):
            while tick < until:  # ticks at `depth`, up to the next uneven one
                step = min(shrink - window, until - tick)
                if depth < min_depth:
                    min_depth = depth
                window += step
                tick += step
                if window >= shrink:
                    self._calm_ticks += window
                    window, min_depth = 0, 1 << 30
            if then < 0:
                break
            depth = then
            if depth < min_depth:
                min_depth = depth
            window += 1
            tick += 1
            if window >= shrink:
                self._calm_ticks += window
                window, min_depth = 0, 1 << 30
        self._window = window
        self._min_depth = min_depth

    # --- inspection -------------------------------------------------------------------------------------
    @property
    def depth_frames(self) -> int:
        """Audio held, in whole 20 ms frames (packets not yet played, including gaps)."""
        packets = max(0, self._highest - self._next + 1)
        return (packets * self._packet_bytes + len(self._pending)) // self.frame_bytes

    @property
    def active(self) -> bool:
        """Whether pop() can return anything."""
        return self._state is not _IDLE

    @property
    def playing(self) -> bool:
        return self._state is _PLAYING

    @property
    def stalled(self) -> bool:
        return self._stall > 0

    def reset(self) -> None:
        """Forget everything buffered (e.g. the remote party changed): the next packet primes again."""
        self._slots.clear()
        self._pending = b""
        self._state = _IDLE
        self._stall = 0
        self._ssrc = None

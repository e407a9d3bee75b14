"""The process-wide media machinery shared by every call: the media clock and the RTP/RTCP sockets.

`MediaClock` paces every stream's send and playout; `MediaSockets` reads every RTP/RTCP socket through one
epoll set (Linux; telephony.media falls back to ordinary asyncio datagram endpoints elsewhere).
"""

from __future__ import annotations

import asyncio
import ctypes
import functools
import logging
import os
import select
import socket
import time
from collections.abc import Callable
from typing import Any, Protocol, TypeVar

log = logging.getLogger(__name__)

Protocol_ = TypeVar("Protocol_", bound=asyncio.DatagramProtocol)
# Reads one datagram from its socket and handles it; False if there was none. The argument is when the
# readiness was seen (one clock reading for all the sockets of a wake-up): the datagram's arrival stamp.
Reader = Callable[[int], bool]
FRAME_S = 0.020
SAMPLES_PER_FRAME = 160  # 8 kHz * 20 ms
# Arrival stamps are monotonic time in units of 1/8000 s, the RTP clock of every payload we carry (G.711,
# RFC 4733 events): RFC 3550 A.8 wants arrivals in timestamp units, and this converts once per wake-up of
# the reader instead of once per packet.
ARRIVAL_RATE = 8000
_READ_SIZE = 2048  # larger than any RTP packet we accept (a 200 ms G.711 packet is 1,612 bytes)
_INBOX_LIMIT = 128  # 64 datagrams and their arrival stamps: more means the stream no longer ticks
_monotonic = time.monotonic
_read = os.read


def arrival_stamp() -> int:
    """Now, as an arrival stamp (see ARRIVAL_RATE)."""
    return int(_monotonic() * ARRIVAL_RATE)


class Ticking(Protocol):
    def on_tick(self, frames: int = 1) -> None:
        """One media-clock tick; `frames` > 1 when the clock was held up and that many intervals passed."""


class MediaClock:
    """Drives every registered stream once per frame interval at absolute deadlines.

    With `phases` > 1 the streams are spread over that many timers offset evenly within the interval
    (5 ms apart for 4), so the per-tick work of a thousand calls comes as several short bursts instead of
    one long one, and the receive path gets the loop in between. Each stream keeps its phase for life, so
    its own packets stay exactly one interval apart.
    """

    def __init__(self, interval: float = FRAME_S, phases: int = 1) -> None:
        if phases < 1:
            raise ValueError("a media clock needs at least one phase")
        self._interval = interval
        self._phases = [_ClockPhase(self, interval * i / phases) for i in range(phases)]
        self._origin: float | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.late_ticks = 0
        # When set to a list, each tick appends (start lateness, tick duration) in seconds: for benchmarks.
        self.tick_log: list[tuple[float, float]] | None = None

    def add(self, stream: Ticking) -> None:
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        min(self._phases, key=len).add(stream)

    def discard(self, stream: Ticking) -> None:
        for phase in self._phases:
            phase.discard(stream)

    def __len__(self) -> int:
        return sum(len(phase) for phase in self._phases)

    def _first_deadline(self, offset: float) -> float:
        assert self._loop is not None
        now = self._loop.time()
        if self._origin is None:
            self._origin = now + self._interval
        # The next instant of this phase's grid (origin + offset + k * interval) that is still ahead.
        elapsed = now - self._origin - offset
        ticks = max(0, int(elapsed // self._interval) + 1)
        return self._origin + offset + ticks * self._interval


class _ClockPhase:
    def __init__(self, clock: MediaClock, offset: float) -> None:
        self._clock = clock
        self._offset = offset
        self._streams: dict[Ticking, None] = {}  # insertion-ordered: each call keeps its slot in a tick
        # The same as a tuple, rebuilt when a call comes or goes: a tick walks it without making a copy
        # (a stream may hang up, or a call join, during a tick).
        self._order: tuple[Ticking, ...] = ()
        self._handle: asyncio.TimerHandle | None = None
        self._next = 0.0

    def __len__(self) -> int:
        return len(self._streams)

    def add(self, stream: Ticking) -> None:
        self._streams[stream] = None
        self._order = tuple(self._streams)
        if self._handle is None:
            loop = self._clock._loop
            assert loop is not None
            self._next = self._clock._first_deadline(self._offset)
            self._handle = loop.call_at(self._next, self._tick)

    def discard(self, stream: Ticking) -> None:
        if stream in self._streams:
            del self._streams[stream]
            self._order = tuple(self._streams)
        if not self._streams and self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _tick(self) -> None:
        clock = self._clock
        loop = clock._loop
        assert loop is not None
        started = _monotonic()
        interval = clock._interval
        deadline = self._next
        # Deadlines that have passed: more than one when the process was held up (CPU starved, paused).
        # Streams then hand over that many received frames, so nothing the caller said is lost, but
        # send one packet, not a burst the far end would have to discard anyway.
        due = max(1, int((loop.time() - deadline) / interval) + 1)
        if due > 1:
            clock.late_ticks += due - 1
        self._next = deadline + due * interval
        for stream in self._order:
            try:
                stream.on_tick(due)
            except Exception:  # one broken stream must not stop the clock for every other call
                log.exception("media tick failed for %s", stream)
                self.discard(stream)
        if clock.tick_log is not None:
            clock.tick_log.append((started - deadline, _monotonic() - started))
        self._handle = loop.call_at(self._next, self._tick) if self._streams else None


class MediaSockets:
    """Every RTP/RTCP socket of a port pool in one epoll set, which the event loop watches as one fd.

    With one asyncio datagram endpoint per socket, each packet costs a loop callback of its own: about
    7-8 us per packet at 1,000 calls with uvloop on the 2-core bench machine, against 4 us when one
    readiness callback reads one datagram from each ready socket (bench/media.py). Reading one datagram per
    socket per wake-up keeps it fair between calls; the level-triggered set stays readable while any
    socket still holds data, so the loop calls back at once. (Draining each socket until EAGAIN would cost
    a failed read and an exception per socket per wake-up, for sockets that hold one packet per 20 ms.)

    A socket is read in one of two ways. By default through its `Reader`: a callable that reads one
    datagram and handles it, returning whether there was one (`recvfrom` and the protocol's
    `datagram_received`, or what `MediaSocketTransport.set_reader` installs). Or, once its stream knows
    where its packets come from, into an inbox (`MediaSocketTransport.set_inbox`): a list that gets each
    datagram followed by its arrival stamp, read here with `os.read` without a Python call per packet, and
    worked through by the stream on its next media-clock tick.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self._epoll = select.epoll()
        self._readers: dict[int, Reader] = {}
        self._inboxes: dict[int, list[Any]] = {}
        self._transports: dict[int, MediaSocketTransport] = {}
        loop.add_reader(self._epoll.fileno(), self.read_ready)

    def bind(
        self, host: str, port: int, factory: Callable[[], Protocol_]
    ) -> tuple[MediaSocketTransport, Protocol_]:
        """A non-blocking UDP socket on host:port, read through this set, with the factory's protocol."""
        sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_DGRAM)
        try:
            sock.setblocking(False)
            sock.bind((host, port))
        except OSError:
            sock.close()
            raise
        protocol = factory()
        return MediaSocketTransport(sock, protocol, self), protocol

    def add(self, transport: MediaSocketTransport, reader: Reader) -> None:
        fd = transport.fd
        self._readers[fd] = reader
        self._transports[fd] = transport
        self._epoll.register(fd, select.EPOLLIN)

    def set_reader(self, fd: int, reader: Reader) -> None:
        if fd in self._readers:
            self._readers[fd] = reader

    def set_inbox(self, fd: int, inbox: list[Any] | None) -> None:
        if inbox is None:
            self._inboxes.pop(fd, None)
        elif fd in self._readers:
            self._inboxes[fd] = inbox

    def remove(self, fd: int) -> None:
        self._inboxes.pop(fd, None)
        self._transports.pop(fd, None)
        if self._readers.pop(fd, None) is not None:
            self._epoll.unregister(fd)
        if not self._readers:
            self.close()

    @property
    def closed(self) -> bool:
        return self._epoll.closed

    def close(self) -> None:
        """Stop watching (when the last socket goes): the pool makes a new set for the next call."""
        if not self._epoll.closed:
            if not self.loop.is_closed():
                self.loop.remove_reader(self._epoll.fileno())
            self._epoll.close()

    def read_ready(self) -> None:
        """Read one datagram from each socket that has one: the event loop's callback for the set."""
        arrival = int(_monotonic() * ARRIVAL_RATE)
        inboxes = self._inboxes
        read = _read
        for fd, _ in self._epoll.poll(0):
            inbox = inboxes.get(fd)
            if inbox is None:
                self._read_other(fd, arrival)
                continue
            # A latched RTP socket, once per packet of every call: no Python call but the read itself.
            try:
                data = read(fd, _READ_SIZE)
            except OSError as exc:
                self._transports[fd].read_failed(exc)
                continue
            inbox.append(data)
            inbox.append(arrival)
            if len(inbox) > _INBOX_LIMIT:
                self._guarded(self._transports[fd].inbox_full, fd)

    def _read_other(self, fd: int, arrival: int) -> None:
        reader = self._readers.get(fd)
        if reader is not None:
            self._guarded(functools.partial(reader, arrival), fd)

    @staticmethod
    def _guarded(call: Callable[[], object], fd: int) -> None:
        try:
            call()
        except Exception:  # one call's bug must not stop media for the others
            log.exception("RTP receive failed on fd %d", fd)


@functools.cache
def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def _dissolve_association(fd: int) -> None:
    """connect() to AF_UNSPEC: a connected UDP socket takes datagrams from anywhere again (Linux, BSD).

    The socket module cannot express that address, hence libc. The 16 zero bytes are a sockaddr whose
    family is AF_UNSPEC (0), as long as any the kernel checks the length against.
    """
    if _libc().connect(fd, bytes(16), 16) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, os.strerror(errno))


class MediaSocketTransport(asyncio.DatagramTransport):
    """A datagram transport over a socket read by `MediaSockets` (same interface as asyncio's).

    Besides the asyncio interface it lets a stream use the socket itself on its per-packet paths, without
    a Python frame of the transport's: `set_inbox` (or `set_reader`) to read it, `fd` to write to it once
    connected, and `send_failed` for what a write raises.
    """

    def __init__(
        self, sock: socket.socket, protocol: asyncio.DatagramProtocol, sockets: MediaSockets
    ) -> None:
        super().__init__({"socket": sock, "sockname": sock.getsockname()})
        self._sock = sock
        self.fd = sock.fileno()
        self._protocol = protocol
        self._sockets = sockets
        self._closing = False
        self._recvfrom = sock.recvfrom
        self._reader: Reader = self._read_one
        self._inbox: list[Any] | None = None
        self._on_inbox_full: Callable[[], None] | None = None
        self.send_dropped = 0  # full socket buffer: RTP is late anyway, so the packet is dropped
        sockets.add(self, self._read_one)
        protocol.connection_made(self)

    def sendto(self, data: bytes | bytearray | memoryview, addr: Any = None) -> None:
        if self._closing:
            return
        try:
            self._sock.sendto(data, addr)
        except OSError as exc:
            self.send_failed(exc)

    def send_failed(self, exc: OSError) -> None:
        """What the socket's sendto raised: a full buffer drops the packet, the rest go to the protocol."""
        if isinstance(exc, BlockingIOError | InterruptedError):
            self.send_dropped += 1
        elif not self._closing:
            self._protocol.error_received(exc)

    def read_failed(self, exc: OSError) -> None:
        """What reading into the inbox raised: nothing there after all, or an error for the protocol."""
        if not isinstance(exc, BlockingIOError | InterruptedError) and not self._closing:
            self._protocol.error_received(exc)

    def connect_peer(self, addr: Any) -> None:
        """Take datagrams from `addr` only, and send there with `os.write(fd, ...)` (no address).

        A connected UDP socket spares the kernel a route lookup per packet and Python the parsing of the
        address: `send` costs about 2.8 us where `sendto` costs 3.3 on the bench machine.
        """
        self._sock.connect(addr)

    def disconnect_peer(self) -> None:
        """Take datagrams from anywhere again."""
        if not self._closing:
            _dissolve_association(self.fd)

    def set_reader(self, reader: Reader | None) -> None:
        """Read the socket with `reader` (one datagram per call; False when there was none), or by default."""
        self._reader = self._read_one if reader is None else reader
        if not self._closing:
            self._sockets.set_reader(self.fd, self._reader)

    def set_inbox(self, inbox: list[Any] | None, on_full: Callable[[], None] | None = None) -> None:
        """Read the socket into `inbox` (each datagram, then its arrival stamp), or again by the reader.

        A latched RTP stream no longer needs the source address of each packet, nor to see it before its
        next tick. `on_full` is called when the inbox holds more than 64 datagrams: its stream is no
        longer ticking and should work through it now.
        """
        self._inbox = inbox
        self._on_inbox_full = on_full
        if not self._closing:
            self._sockets.set_inbox(self.fd, inbox)

    def inbox_full(self) -> None:
        if self._on_inbox_full is not None:
            self._on_inbox_full()

    def _read_one(self, arrival: int) -> bool:
        try:
            data, addr = self._recvfrom(_READ_SIZE)
        except (BlockingIOError, InterruptedError):
            return False
        except OSError as exc:
            self._protocol.error_received(exc)
            return False
        self._protocol.datagram_received(data, addr)
        return True

    def read_pending(self, limit: int = 64) -> None:
        """Deliver what is queued on the socket now, instead of at the loop's next I/O poll."""
        arrival = int(_monotonic() * ARRIVAL_RATE)
        inbox = self._inbox
        for _ in range(limit):
            if self._closing:
                return
            if inbox is None:
                if not self._reader(arrival):
                    return
                continue
            try:
                data = _read(self.fd, _READ_SIZE)
            except OSError as exc:
                self.read_failed(exc)
                return
            inbox.append(data)
            inbox.append(arrival)

    def is_closing(self) -> bool:
        return self._closing

    def close(self) -> None:
        if self._closing:
            return
        self._closing = True
        self._sockets.remove(self.fd)
        self._inbox = None
        self._sock.close()
        loop = self._sockets.loop
        if loop.is_closed():
            self._protocol.connection_lost(None)
        else:
            loop.call_soon(self._protocol.connection_lost, None)

    def abort(self) -> None:
        self.close()

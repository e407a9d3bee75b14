"""The load generator of the media benchmark (bench/media.py): N RTP streams from one UDP socket.

It runs in a process of its own and must cost little next to the process it measures (on the 2-core bench
machine they share the CPUs with everything else), so it never handles a packet in Python: it sends every
due packet with one `sendmmsg` and takes up to 256 datagrams per `recvmmsg` (Linux), and numpy does the
per-packet arithmetic, on headers prepared once and on what the kernel wrote. What comes back is timed
with the kernel's receive timestamp (SO_TIMESTAMPNS), so its own scheduling delays do not pollute the
measurement; the analysis runs once, after the run.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import random
import resource
import socket
import struct
import time
from multiprocessing.connection import Connection
from typing import Any

import numpy as np
import numpy.typing as npt

from telephony.codecs import pcm16_to_ulaw

HOST = "127.0.0.1"
INTERVAL_S = 0.020
SAMPLES = 160  # RTP timestamp units per 20 ms packet at 8 kHz
# Linux socket options not exported by the socket module.
SO_TIMESTAMPNS = 35
SO_RXQ_OVFL = 40
MSG_DONTWAIT = 0x40
_RECV_BATCH = 256  # datagrams per recvmmsg
_RECV_SIZE = 256  # bytes kept of each: the SUT's packets are 172, only the header is read
_CONTROL_SIZE = 64  # a timestamp (32 bytes) and a drop count (24)
# Packets due within a quarter of a millisecond go out together: the SUT then sees traffic about as steady
# as from independent callers (and its event loop wakes up as often). What came back is read in batches
# every 2 ms: the kernel timestamped it on arrival.
_SEND_EVERY_S = 0.00025
_READ_EVERY_S = 0.002


class _IoVec(ctypes.Structure):
    _fields_ = [("iov_base", ctypes.c_void_p), ("iov_len", ctypes.c_size_t)]


class _MsgHdr(ctypes.Structure):
    _fields_ = [
        ("msg_name", ctypes.c_void_p),
        ("msg_namelen", ctypes.c_uint32),
        ("msg_iov", ctypes.c_void_p),
        ("msg_iovlen", ctypes.c_size_t),
        ("msg_control", ctypes.c_void_p),
        ("msg_controllen", ctypes.c_size_t),
        ("msg_flags", ctypes.c_int),
    ]


class _MMsgHdr(ctypes.Structure):
    _fields_ = [("msg_hdr", _MsgHdr), ("msg_len", ctypes.c_uint)]


_MMSG_SIZE = ctypes.sizeof(_MMsgHdr)
_libc = ctypes.CDLL(None, use_errno=True)
_sendmmsg = _libc.sendmmsg
_sendmmsg.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_uint, ctypes.c_int]
_sendmmsg.restype = ctypes.c_int
_recvmmsg = _libc.recvmmsg
_recvmmsg.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_uint, ctypes.c_int, ctypes.c_void_p]
_recvmmsg.restype = ctypes.c_int


class _Messages:
    """`count` message headers for sendmmsg/recvmmsg, each with its own buffer, address and control space.

    The buffers are numpy arrays the headers point into, so numpy reads and writes the packets in place.
    """

    def __init__(self, count: int, size: int, control: int) -> None:
        self.data = np.zeros((count, size), np.uint8)
        self.names = np.zeros((count, 16), np.uint8)  # struct sockaddr_in
        self.control = np.zeros((count, max(control, 8)), np.uint8)
        self._iov = (_IoVec * count)()
        self.headers = (_MMsgHdr * count)()
        data, names, ctl = self.data.ctypes.data, self.names.ctypes.data, self.control.ctypes.data
        iov = ctypes.addressof(self._iov)
        for i in range(count):
            self._iov[i].iov_base = data + i * size
            self._iov[i].iov_len = size
            header = self.headers[i].msg_hdr
            header.msg_name = names + i * 16
            header.msg_namelen = 16
            header.msg_iov = iov + i * ctypes.sizeof(_IoVec)
            header.msg_iovlen = 1
            if control:
                header.msg_control = ctl + i * control
                header.msg_controllen = control
        self.address = ctypes.addressof(self.headers)
        # recvmmsg rewrites each header's name and control lengths: restored from here before each call.
        self._template = bytes(self.headers)
        self.u32: npt.NDArray[np.uint32] = np.frombuffer(memoryview(self.headers).cast("B"), np.uint32)
        self.u32 = self.u32.reshape(count, -1)

    def reset(self) -> None:
        ctypes.memmove(self.address, self._template, len(self._template))


def generator_main(conn: Connection) -> None:
    """Send 20 ms PCMU to every SUT port and time what comes back; entry point of the child process."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 8 << 20)
    sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
    sock.setsockopt(socket.SOL_SOCKET, SO_RXQ_OVFL, 1)
    sock.bind((HOST, 0))
    sock.setblocking(False)
    # The SUT sends RTCP to our port + 1: hold it so the reports land somewhere harmless.
    rtcp_sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with contextlib.suppress(OSError):
        rtcp_sink.bind((HOST, sock.getsockname()[1] + 1))
    conn.send(sock.getsockname())
    ports, start, warmup, seconds, payload = conn.recv()
    conn.send(generate(sock, ports, start, warmup, seconds, payload))
    sock.close()
    rtcp_sink.close()


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _senders(ports: list[int], payload: bytes) -> _Messages:
    """One prepared packet per stream, addressed to its SUT port; random SSRC, sequence and timestamp."""
    count = len(ports)
    out = _Messages(count, 12 + len(payload), 0)
    packets = out.data
    packets[:, 0] = 0x80  # version 2, no padding, extension or CSRC
    packets[:, 1] = 0  # PCMU, no marker
    packets[:, 12:] = np.frombuffer(payload, np.uint8)
    rng = random.Random()
    header = struct.Struct("!HII")
    for i in range(count):
        header.pack_into(packets[i], 2, rng.getrandbits(16), rng.getrandbits(32), rng.getrandbits(32))
    out.names[:, :2] = np.frombuffer(struct.pack("=H", socket.AF_INET), np.uint8)
    out.names.view(">u2")[:, 1] = ports
    out.names[:, 4:8] = np.frombuffer(socket.inet_aton(HOST), np.uint8)
    return out


def generate(
    sock: socket.socket,
    ports: list[int],
    start: float,
    warmup: float,
    seconds: float,
    payload: bytes | None = None,
) -> dict[str, Any]:
    """Send every stream a packet each 20 ms (streams spread evenly over the interval) until the end of the
    window, record what comes back, and return the figures (see bench/media.py)."""
    count = len(ports)
    if payload is None:
        payload = pcm16_to_ulaw(bytes(320))
    out = _senders(ports, payload)
    sequence = out.data.view(">u2")[:, 1]  # bytes 2-3 of each packet, big-endian, wrapping like RTP's
    stamps = out.data.view(">u4")[:, 1]  # bytes 4-7
    inbox = _Messages(_RECV_BATCH, _RECV_SIZE, _CONTROL_SIZE)
    index_of_port = np.full(65536, -1, np.int32)
    index_of_port[ports] = np.arange(count, dtype=np.int32)
    capacity = int(count * (warmup + seconds + 1.5) / INTERVAL_S * 1.1) + _RECV_BATCH
    got_index = np.empty(capacity, np.int32)
    got_seq = np.empty(capacity, np.uint16)
    got_arrival = np.empty(capacity, np.int64)
    received = 0
    window_start = start + warmup
    stop = window_start + seconds
    slot_s = INTERVAL_S / count
    sent_slots = 0  # absolute slot number: stream slot % count, round slot // count
    sent = 0
    overflow = 0
    overflow_at_window: int | None = None
    cpu_before: float | None = None
    fd = sock.fileno()
    last_read = 0.0
    while True:
        now = time.monotonic()
        if cpu_before is None and now >= window_start:
            cpu_before = _cpu_seconds()
            overflow_at_window = overflow
        if now >= stop + 0.3:  # keep receiving a little after the last send for packets in flight
            break
        if start <= now < stop:
            due = int((now - start) / slot_s) + 1
            while sent_slots < due:
                first = sent_slots % count
                last = min(count, first + due - sent_slots)
                done = _sendmmsg(fd, out.address + first * _MMSG_SIZE, last - first, 0)
                if done <= 0:
                    break  # socket buffer full: the rest goes on the next round of the loop
                sequence[first : first + done] += 1
                stamps[first : first + done] += SAMPLES
                sent_slots += done
                sent += done
            timeout = max(_SEND_EVERY_S, start + due * slot_s - time.monotonic())
        elif now < start:
            timeout = min(start - now, 0.01)
        else:
            timeout = 0.01
        # Sleep rather than wait for the socket: what arrives meanwhile is read in one batch (the kernel
        # timestamps it on arrival), instead of a wake-up and a recvmmsg per datagram.
        time.sleep(timeout)
        if time.monotonic() - last_read < _READ_EVERY_S:
            continue
        last_read = time.monotonic()
        while True:
            inbox.reset()
            got = _recvmmsg(fd, inbox.address, _RECV_BATCH, MSG_DONTWAIT, None)
            if got <= 0:
                if got < 0 and ctypes.get_errno() not in (errno.EAGAIN, errno.EWOULDBLOCK):
                    raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))
                break
            received, overflow = _record(
                inbox, got, index_of_port, received, overflow, got_index, got_seq, got_arrival
            )
            if received + _RECV_BATCH > len(got_index):
                got_index, got_seq, got_arrival = (
                    np.resize(got_index, len(got_index) * 2),
                    np.resize(got_seq, len(got_seq) * 2),
                    np.resize(got_arrival, len(got_arrival) * 2),
                )
            if got < _RECV_BATCH:
                break
    cpu = _cpu_seconds() - (cpu_before or 0.0)
    wall_offset_ns = time.time_ns() - int(time.monotonic() * 1e9)  # kernel timestamps are wall-clock
    figures = _analyse(
        got_index[:received],
        got_seq[:received],
        got_arrival[:received],
        int(window_start * 1e9) + wall_offset_ns,
        int(stop * 1e9) + wall_offset_ns,
    )
    return {
        "sent": sent,
        "received": received,
        "socket_overflow": overflow - (overflow_at_window or 0),
        "cpu_percent": 100 * cpu / seconds,
        **figures,
    }


def _record(
    inbox: _Messages,
    got: int,
    index_of_port: npt.NDArray[np.int32],
    received: int,
    overflow: int,
    got_index: npt.NDArray[np.int32],
    got_seq: npt.NDArray[np.uint16],
    got_arrival: npt.NDArray[np.int64],
) -> tuple[int, int]:
    """Keep (stream, sequence number, kernel arrival time) of each PCMU packet of a recvmmsg batch."""
    ports = inbox.names.view(">u2")[:got, 1]
    index = index_of_port[ports]
    length = inbox.u32[:got, _MMSG_SIZE // 4 - 2]  # msg_len
    control = inbox.control.view(np.int32)  # struct cmsghdr: 8-byte length, level, type, then the data
    stamped = control[:got, 3] == SO_TIMESTAMPNS
    keep = (index >= 0) & (length >= 12) & ((inbox.data[:got, 1] & 0x7F) == 0) & stamped
    times = inbox.control.view(np.int64)[:got]
    arrival = times[:, 2] * 1_000_000_000 + times[:, 3]
    drops = control[:got, 11] == SO_RXQ_OVFL  # the drop count follows the 32-byte timestamp message
    if drops.any():
        overflow = max(overflow, int(control[:got, 12][drops].view(np.uint32).max()))
    kept = int(keep.sum())
    got_index[received : received + kept] = index[keep]
    got_seq[received : received + kept] = inbox.data.view(">u2")[:got, 1][keep]
    got_arrival[received : received + kept] = arrival[keep]
    return received + kept, overflow


def _analyse(
    index: npt.NDArray[np.int32],
    seq: npt.NDArray[np.uint16],
    arrival: npt.NDArray[np.int64],
    window_start_ns: int,
    stop_ns: int,
) -> dict[str, Any]:
    """Send-interval error (|interval - 20 ms|) and sequence gaps for consecutive packets of each stream
    whose interval lies in the window."""
    order = np.argsort(index, kind="stable")  # per stream, in the order the kernel delivered them
    index, seq, arrival = index[order], seq[order].astype(np.int64), arrival[order]
    pair = (index[1:] == index[:-1]) & (arrival[:-1] >= window_start_ns) & (arrival[1:] <= stop_ns)
    errors = np.sort(np.abs((arrival[1:] - arrival[:-1])[pair] / 1e6 - INTERVAL_S * 1000))
    gap = (seq[1:] - seq[:-1] - 1)[pair] & 0xFFFF
    gaps = int(gap[gap < 0x8000].sum())

    def percentile(fraction: float) -> float:
        if not len(errors):
            return float("nan")
        return float(errors[min(len(errors) - 1, int(fraction * len(errors)))])

    return {
        "gaps": gaps,
        "intervals": len(errors),
        "p50_ms": percentile(0.50),
        "p99_ms": percentile(0.99),
        "p999_ms": percentile(0.999),
        "max_ms": float(errors[-1]) if len(errors) else float("nan"),
    }

"""Media-path capacity: N concurrent RTP calls in this process against a load generator in another.

The system under test (this process, uvloop) runs N `RtpStream`s exactly as calls do: each packet is parsed,
counted (RFC 3550 statistics), put in the jitter buffer and decoded; on every media-clock tick each stream
hands a frame to webrtcvad (the agent loop's VAD) and sends one 20 ms PCMU packet, encoding queued speech.

The load generator (a separate process, so it does not steal the event loop) sends every stream a PCMU
packet every 20 ms, the N streams spread evenly over the 20 ms, and timestamps what comes back with the
kernel's receive time (SO_TIMESTAMPNS), so its own scheduling delays do not pollute the measurement.

Figures per N:
* send-interval error: for each stream, the interval between consecutive packets as received by the
  generator's socket minus 20 ms, absolute value; p50/p99/max over all streams in the measurement window.
  This is what a far-end jitter buffer sees. The SUT-side tick lateness (tick start minus its absolute
  deadline) and tick duration are reported too.
* loss both ways: packets the generator sent that the SUT's streams did not count, and sequence gaps in
  what the generator received; the generator's own socket overflows are reported separately.
* CPU of the SUT process (user + system over the window, 100 = one core) and of the generator.
The target: p99 send-interval error <= 5 ms and no loss.
"""

from __future__ import annotations

import array
import asyncio
import contextlib
import gc
import math
import multiprocessing
import os
import random
import resource
import select
import socket
import struct
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from multiprocessing.connection import Connection
from typing import Any

import webrtcvad

from telephony.codecs import pcm16_to_ulaw
from telephony.media import PCM_FRAME_BYTES, MediaClock, RtpPortPool, RtpStream

TARGET_P99_MS = 5.0
INTERVAL_S = 0.020
HOST = "127.0.0.1"
# Linux socket options not exported by the socket module.
SO_TIMESTAMPNS = 35
SO_RXQ_OVFL = 40


def speech_like_pcm(seconds: float = 1.0) -> bytes:
    """A voiced-sounding signal (harmonics of 140 Hz, syllable-rate envelope): keeps VAD and codec busy."""
    samples = array.array("h")
    for n in range(int(8000 * seconds)):
        t = n / 8000
        envelope = 0.55 + 0.45 * math.sin(2 * math.pi * 4 * t)
        value = sum(math.sin(2 * math.pi * 140 * k * t) / k for k in range(1, 6))
        samples.append(int(6000 * envelope * value))
    return samples.tobytes()


def _percentile(ordered: Sequence[float], fraction: float) -> float:
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


# --- load generator (child process) ------------------------------------------------------------------------


def generator_main(conn: Connection) -> None:
    """Send 20 ms PCMU to every SUT port and time what comes back; entry point of the child process."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
    sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
    sock.setsockopt(socket.SOL_SOCKET, SO_RXQ_OVFL, 1)
    sock.bind((HOST, 0))
    sock.setblocking(False)
    # The SUT sends RTCP to our port + 1: hold it so the reports land somewhere harmless.
    rtcp_sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with contextlib.suppress(OSError):
        rtcp_sink.bind((HOST, sock.getsockname()[1] + 1))
    conn.send(sock.getsockname())
    ports, start, warmup, seconds = conn.recv()
    conn.send(_generate(sock, ports, start, warmup, seconds))
    sock.close()
    rtcp_sink.close()


def _generate(
    sock: socket.socket, ports: list[int], start: float, warmup: float, seconds: float
) -> dict[str, Any]:
    count = len(ports)
    addrs = [(HOST, port) for port in ports]
    index = {port: i for i, port in enumerate(ports)}
    payload = pcm16_to_ulaw(speech_like_pcm(0.02))
    header = struct.Struct("!BBHII")
    buffers = [bytearray(12) + payload for _ in range(count)]
    seqs = [random.getrandbits(16) for _ in range(count)]
    stamps = [random.getrandbits(32) for _ in range(count)]
    ssrcs = [random.getrandbits(32) for _ in range(count)]
    phase = [i * INTERVAL_S / count for i in range(count)]
    window_start = start + warmup
    stop = window_start + seconds
    # Kernel receive timestamps are wall-clock: the window in that clock.
    wall_offset_ns = time.time_ns() - int(time.monotonic() * 1e9)
    window_start_ns = int(window_start * 1e9) + wall_offset_ns
    stop_ns = int(stop * 1e9) + wall_offset_ns
    errors = array.array("f")
    last_arrival = [0] * count
    next_seq = [-1] * count
    gaps = 0
    received = 0
    sent = 0
    overflow_at_window: int | None = None
    overflow = 0
    round_, slot = 0, 0
    cpu_before: float | None = None
    recvmsg = sock.recvmsg
    sendto = sock.sendto
    while True:
        now = time.monotonic()
        if cpu_before is None and now >= window_start:
            cpu_before = _cpu_seconds()
            overflow_at_window = overflow
        if now >= stop + 0.3:  # keep receiving a little after the last send for packets in flight
            break
        if now < stop:
            while True:
                due = start + round_ * INTERVAL_S + phase[slot]
                if due > now:
                    break
                buffer = buffers[slot]
                header.pack_into(buffer, 0, 0x80, 0, seqs[slot], stamps[slot], ssrcs[slot])
                seqs[slot] = (seqs[slot] + 1) & 0xFFFF
                stamps[slot] = (stamps[slot] + 160) & 0xFFFFFFFF
                sendto(buffer, addrs[slot])
                sent += 1
                slot += 1
                if slot == count:
                    slot = 0
                    round_ += 1
            timeout = max(0.0, due - time.monotonic())
        else:
            timeout = 0.01
        select.select([sock], [], [], timeout)
        while True:
            try:
                data, ancillary, _, addr = recvmsg(512, 128)
            except BlockingIOError:
                break
            arrival = 0
            for _, kind, cdata in ancillary:
                if kind == SO_TIMESTAMPNS:
                    sec, nsec = struct.unpack_from("qq", cdata)
                    arrival = sec * 1_000_000_000 + nsec
                elif kind == SO_RXQ_OVFL:
                    overflow = struct.unpack_from("I", cdata)[0]
            i = index.get(addr[1], -1)
            if i < 0 or len(data) < 12 or data[1] & 0x7F != 0:
                continue
            received += 1
            seq = data[2] << 8 | data[3]
            previous = last_arrival[i]
            last_arrival[i] = arrival
            expected = next_seq[i]
            next_seq[i] = (seq + 1) & 0xFFFF
            if previous >= window_start_ns and arrival <= stop_ns:
                errors.append(abs((arrival - previous) / 1e6 - INTERVAL_S * 1000))
                gap = (seq - expected) & 0xFFFF
                if gap < 0x8000:
                    gaps += gap
    cpu = _cpu_seconds() - (cpu_before or 0.0)
    ordered = sorted(errors)
    return {
        "sent": sent,
        "received": received,
        "gaps": gaps,
        "socket_overflow": overflow - (overflow_at_window or 0),
        "intervals": len(ordered),
        "p50_ms": _percentile(ordered, 0.50),
        "p99_ms": _percentile(ordered, 0.99),
        "p999_ms": _percentile(ordered, 0.999),
        "max_ms": ordered[-1] if ordered else float("nan"),
        "cpu_percent": 100 * cpu / seconds,
    }


# --- system under test (this process) ----------------------------------------------------------------------


class VadListener:
    """The agent loop's per-frame work without STT: one webrtcvad decision per 20 ms frame."""

    __slots__ = ("frames", "vad", "voiced")

    def __init__(self) -> None:
        self.vad = webrtcvad.Vad(2)
        self.frames = 0
        self.voiced = 0

    def __call__(self, frame: bytes) -> None:
        self.frames += 1
        if self.vad.is_speech(frame, 8000):
            self.voiced += 1


@dataclass(frozen=True, slots=True)
class MediaBenchResult:
    calls: int
    seconds: float
    loop: str
    reader: str
    clock_phases: int
    cpu_percent: float  # SUT process, 100 = one core
    cpu_us_per_call_tick: float  # SUT CPU per call per 20 ms: receive one packet, deliver a frame, send one
    load_average_before: float  # 1-minute load average: the bench machine is shared
    generator_cpu_percent: float
    packets_to_sut: int
    packets_received_by_sut: int
    packets_sent_by_sut: int
    packets_received_by_generator: int
    lost_to_sut: int
    lost_from_sut: int  # sequence gaps seen by the generator in the window
    generator_socket_overflow: int
    send_interval_error_p50_ms: float
    send_interval_error_p99_ms: float
    send_interval_error_p999_ms: float
    send_interval_error_max_ms: float
    tick_lateness_p50_ms: float
    tick_lateness_p99_ms: float
    tick_duration_p50_ms: float
    tick_duration_p99_ms: float
    late_ticks: int
    concealed_frames: int
    jitter_buffer_late: int
    jitter_buffer_discarded: int
    frames_to_vad: int
    met_target: bool


async def _run_sut(
    calls: int,
    seconds: float,
    warmup: float,
    conn: Connection,
    ports: tuple[int, int],
    shared_reader: bool,
    phases: int,
) -> tuple[dict[str, Any], dict[str, Any]]:
    loop = asyncio.get_running_loop()
    generator_addr = tuple(await loop.run_in_executor(None, conn.recv))
    clock = MediaClock(phases=phases)
    pool = RtpPortPool(*ports, shared_reader=shared_reader)
    streams: list[RtpStream] = []
    listeners: list[VadListener] = []
    speech = speech_like_pcm(1.0)

    def factory(listener: VadListener) -> Callable[[], RtpStream]:
        return lambda: RtpStream(
            clock,
            codec="PCMU",
            payload_type=0,
            telephone_event_pt=101,
            remote=(generator_addr[0], generator_addr[1]),
            on_audio=listener,
        )

    stream_ports: list[int] = []
    for i in range(calls):
        listener = VadListener()
        _, stream, port = await pool.open(HOST, factory(listener))
        # Queues of different lengths, so the top-ups below come a few calls at a time, not all at once.
        stream.play(speech + speech[: PCM_FRAME_BYTES * (i % 50)])
        streams.append(stream)
        listeners.append(listener)
        stream_ports.append(port)

    async def keep_talking() -> None:
        # Every call always has speech queued, so each tick encodes a frame as a talking agent does.
        while True:
            await asyncio.sleep(0.1)
            for stream in streams:
                if stream.queued_frames < 10:
                    stream.play(speech)

    talker = asyncio.create_task(keep_talking())
    start = time.monotonic() + 0.5
    conn.send((stream_ports, start, warmup, seconds))
    await asyncio.sleep(start + warmup - time.monotonic())
    gc.collect()
    gc.freeze()  # the streams are long-lived: keep the collector from walking them during the window
    cpu_before = _cpu_seconds()
    late_before = clock.late_ticks
    clock.tick_log = []
    await asyncio.sleep(seconds)
    cpu = _cpu_seconds() - cpu_before
    tick_log, clock.tick_log = clock.tick_log, None
    late_ticks = clock.late_ticks - late_before
    generated: dict[str, Any] = await loop.run_in_executor(None, conn.recv)
    await asyncio.sleep(0.1)  # packets still in our sockets
    talker.cancel()
    reports = [stream.report() for stream in streams]
    for stream in streams:
        stream.close()
    await asyncio.sleep(0.05)
    gc.unfreeze()
    lateness = sorted(entry[0] * 1000 for entry in tick_log)
    durations = sorted(entry[1] * 1000 for entry in tick_log)
    sut = {
        "cpu_percent": 100 * cpu / seconds,
        "received": sum(r.packets_received for r in reports),
        "sent": sum(r.packets_sent for r in reports),
        "tick_lateness_p50_ms": _percentile(lateness, 0.5),
        "tick_lateness_p99_ms": _percentile(lateness, 0.99),
        "tick_duration_p50_ms": _percentile(durations, 0.5),
        "tick_duration_p99_ms": _percentile(durations, 0.99),
        "late_ticks": late_ticks,
        "concealed": sum(r.concealed for r in reports),
        "late": sum(r.late for r in reports),
        "discarded": sum(r.discarded for r in reports),
        "frames_to_vad": sum(listener.frames for listener in listeners),
    }
    return sut, generated


def run_media_bench(
    calls: int,
    seconds: float = 30.0,
    *,
    warmup: float = 2.0,
    use_uvloop: bool = True,
    shared_reader: bool = True,
    phases: int = 1,
    ports: tuple[int, int] = (50000, 54999),
) -> MediaBenchResult:
    context = multiprocessing.get_context("spawn")
    parent, child = context.Pipe()
    generator = context.Process(target=generator_main, args=(child,), daemon=True)
    generator.start()
    loop_factory: Callable[[], asyncio.AbstractEventLoop] | None = None
    if use_uvloop:
        import uvloop

        loop_factory = uvloop.new_event_loop
    try:
        with asyncio.Runner(loop_factory=loop_factory) as runner:
            load_before = os.getloadavg()[0]
            sut, gen = runner.run(_run_sut(calls, seconds, warmup, parent, ports, shared_reader, phases))
    finally:
        generator.join(timeout=5)
        if generator.is_alive():
            generator.terminate()
    lost_to_sut = max(0, gen["sent"] - sut["received"])
    lost_from_sut = gen["gaps"]
    return MediaBenchResult(
        calls=calls,
        seconds=seconds,
        loop="uvloop" if use_uvloop else "asyncio",
        reader="epoll set" if shared_reader else "endpoint per socket",
        clock_phases=phases,
        cpu_percent=round(sut["cpu_percent"], 1),
        cpu_us_per_call_tick=round(sut["cpu_percent"] / 100 * INTERVAL_S * 1e6 / calls, 2),
        load_average_before=round(load_before, 2),
        generator_cpu_percent=round(gen["cpu_percent"], 1),
        packets_to_sut=gen["sent"],
        packets_received_by_sut=sut["received"],
        packets_sent_by_sut=sut["sent"],
        packets_received_by_generator=gen["received"],
        lost_to_sut=lost_to_sut,
        lost_from_sut=lost_from_sut,
        generator_socket_overflow=gen["socket_overflow"],
        send_interval_error_p50_ms=round(gen["p50_ms"], 3),
        send_interval_error_p99_ms=round(gen["p99_ms"], 3),
        send_interval_error_p999_ms=round(gen["p999_ms"], 3),
        send_interval_error_max_ms=round(gen["max_ms"], 3),
        tick_lateness_p50_ms=round(sut["tick_lateness_p50_ms"], 3),
        tick_lateness_p99_ms=round(sut["tick_lateness_p99_ms"], 3),
        tick_duration_p50_ms=round(sut["tick_duration_p50_ms"], 3),
        tick_duration_p99_ms=round(sut["tick_duration_p99_ms"], 3),
        late_ticks=sut["late_ticks"],
        concealed_frames=sut["concealed"],
        jitter_buffer_late=sut["late"],
        jitter_buffer_discarded=sut["discarded"],
        frames_to_vad=sut["frames_to_vad"],
        met_target=gen["p99_ms"] <= TARGET_P99_MS and lost_to_sut == 0 and lost_from_sut == 0,
    )


def as_json(result: MediaBenchResult) -> dict[str, Any]:
    return asdict(result)

"""Media-path capacity: N concurrent RTP calls in this process against a load generator in another.

The system under test (this process, uvloop) runs N `RtpStream`s exactly as calls do: each packet is parsed,
counted (RFC 3550 statistics) and put in the jitter buffer; on every media-clock tick each stream decodes a
frame and hands it to webrtcvad (the agent loop's VAD), and sends one 20 ms PCMU packet of the speech it
always has queued (encoded when queued, as the agent's replies are).

The load generator (bench/media_load.py, a separate process, so it does not steal the event loop) sends
every stream a PCMU packet every 20 ms, the N streams spread evenly over the 20 ms, and timestamps what comes
back with the kernel's receive time (SO_TIMESTAMPNS), so its own scheduling delays do not pollute the
measurement. It batches its packets through sendmmsg/recvmmsg, so it costs little next to what it measures.
bench/media_cost.py counts what one call costs per tick without a clock, for callgrind.

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
import gc
import math
import multiprocessing
import os
import resource
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from multiprocessing.connection import Connection
from typing import Any

import webrtcvad

from bench.host import python_loop_ms
from bench.media_load import HOST, INTERVAL_S, generator_main
from telephony.codecs import pcm16_to_ulaw
from telephony.media import PCM_FRAME_BYTES, MediaClock, RtpPortPool, RtpStream

TARGET_P99_MS = 5.0


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


# --- system under test (this process) ----------------------------------------------------------------------


class VadListener:
    """The agent loop's per-frame work without STT: one webrtcvad decision per 20 ms frame."""

    __slots__ = ("frames", "vad")

    def __init__(self) -> None:
        self.vad = webrtcvad.Vad(2)
        self.frames = 0

    def hear(self, frame: bytes) -> None:
        """The stream's `on_audio` (a bound method: calling an instance's __call__ costs more)."""
        self.frames += 1
        # With the length given, the wrapper needs no int(). The decision itself is not kept: the agent
        # would act on it, the benchmark only pays for it.
        self.vad.is_speech(frame, 8000, len(frame) >> 1)


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
    host_python_loop_ms: float  # bench.host.python_loop_ms() before the run: the host is shared too
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
            on_audio=listener.hear,
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
        # Every call always has speech queued, as when the agent talks: a second at a time, encoded as
        # it is queued, a frame sent per tick. A fifth of the calls is looked at every 20 ms, so the
        # top-ups come as small steady work, as replies from many calls would, not as one burst.
        turn = 0
        while True:
            await asyncio.sleep(0.02)
            for stream in streams[turn::5]:
                if stream.queued_frames < 10:
                    stream.play(speech)
            turn = (turn + 1) % 5

    # The streams are long-lived: keep the collector from walking them during the run. The full collection
    # comes before the generator starts: in a process with a large heap (a test worker that has run half
    # the suite) it takes over a second, and at the start of the window it stopped the media clock for
    # the whole of a short window.
    gc.collect()
    gc.freeze()
    talker = asyncio.create_task(keep_talking())
    start = time.monotonic() + 0.5
    conn.send((stream_ports, start, warmup, seconds, pcm16_to_ulaw(speech_like_pcm(0.02))))
    await asyncio.sleep(start + warmup - time.monotonic())
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
    phases: int = 4,  # as `switchboard serve` runs its clock
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
            host_speed = python_loop_ms()
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
        host_python_loop_ms=host_speed,
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

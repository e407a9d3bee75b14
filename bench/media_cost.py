"""What one call costs the media path per 20 ms, counted rather than timed (for callgrind or perf).

`switchboard bench media` needs a quiet machine; this does not. It drives N `RtpStream`s through the same
code as the benchmark's system under test (loopback sockets read through the shared epoll set, a frame to
webrtcvad per tick, speech queued and sent), but in lock step, without the event loop's clock: each round
the driver sends every stream one PCMU packet, the epoll set is read, and every stream ticks once. Only the
rounds after the warm-up (jitter buffers priming, the first steady runs starting) run inside
`operator.call`, so

    valgrind --tool=callgrind --collect-atstart=no --toggle-collect=_operator_call \\
        [--cache-sim=yes --LL=1048576,16,64] .venv/bin/python -m bench.media_cost --calls 1000 --rounds 12

counts them alone: Ir divided by calls x rounds is the instructions of one call-tick (receive a packet,
play a frame through VAD, send a packet), and with the cache model the last-level misses of one, which
with many calls cost more than the instructions. Without valgrind it prints the CPU time per call-tick.
`--warmup 0` counts the warm-up too (as this tool did before steady runs existed).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import operator
import random
import resource
import socket
import struct
import sys
from collections.abc import Callable

from bench.media import VadListener, speech_like_pcm
from telephony.codecs import pcm16_to_ulaw
from telephony.media import MediaClock, RtpStream
from telephony.media_io import MediaSockets

HOST = "127.0.0.1"


async def drive(calls: int, rounds: int, warmup: int = 0) -> tuple[int, int, float, float]:
    """Run `warmup` then `rounds` lock-step rounds over `calls` streams; returns (received, sent, user s,
    system s) of the rounds after the warm-up."""
    loop = asyncio.get_running_loop()
    peer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    peer.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
    peer.bind((HOST, 0))
    peer.setblocking(False)
    remote = peer.getsockname()
    clock = MediaClock(phases=4)  # its timers never fire: the driver does not yield to the loop
    sockets = MediaSockets(loop)
    speech = speech_like_pcm(1.0)
    streams: list[RtpStream] = []
    ports: list[int] = []
    for _ in range(calls):
        listener = VadListener()
        transport, stream = sockets.bind(HOST, 0, _factory(clock, remote, listener))
        stream.play(speech)
        streams.append(stream)
        ports.append(transport.get_extra_info("sockname")[1])
    packets = [bytearray(12) + pcm16_to_ulaw(speech_like_pcm(0.02)) for _ in range(calls)]
    header = struct.Struct("!BBHII")
    rng = random.Random(1)
    seqs = [rng.getrandbits(16) for _ in range(calls)]
    addresses = [(HOST, port) for port in ports]

    def one_round() -> None:
        sockets.read_ready()
        for stream in streams:
            stream.on_tick(1)
        # Speech all along, as in the benchmark: each call queues another second every 50 ticks.
        for stream in streams[turn[0] :: 50]:
            stream.play(speech)
        turn[0] = (turn[0] + 1) % 50

    turn = [0]

    gc.collect()
    gc.freeze()
    user = system = 0.0
    received_before = sent_before = 0
    for done in range(warmup + rounds):
        if done == warmup:
            received_before = sum(stream.stats.packets_received for stream in streams)
            sent_before = sum(stream.stats.packets_sent for stream in streams)
        for i in range(calls):
            header.pack_into(packets[i], 0, 0x80, 0, seqs[i], seqs[i] * 160 & 0xFFFFFFFF, 0x5EED + i)
            seqs[i] = (seqs[i] + 1) & 0xFFFF
            peer.sendto(packets[i], addresses[i])
        if done < warmup:
            one_round()
        else:
            before = resource.getrusage(resource.RUSAGE_SELF)
            operator.call(one_round)
            after = resource.getrusage(resource.RUSAGE_SELF)
            user += after.ru_utime - before.ru_utime
            system += after.ru_stime - before.ru_stime
        while True:  # what the streams sent: not part of the cost
            try:
                peer.recv(2048)
            except BlockingIOError:
                break
    received = sum(stream.stats.packets_received for stream in streams) - received_before
    sent = sum(stream.stats.packets_sent for stream in streams) - sent_before
    for stream in streams:
        stream.close()
    peer.close()
    return received, sent, user, system


def _factory(clock: MediaClock, remote: tuple[str, int], listener: VadListener) -> Callable[[], RtpStream]:
    return lambda: RtpStream(
        clock, codec="PCMU", payload_type=0, telephone_event_pt=101, remote=remote, on_audio=listener.hear
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--calls", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=50, help="20 ms rounds counted")
    parser.add_argument("--warmup", type=int, default=5, help="rounds before, not counted (default 5)")
    args = parser.parse_args(argv)
    import uvloop

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        received, sent, user, system = runner.run(drive(args.calls, args.rounds, args.warmup))
    ticks = args.calls * args.rounds
    print(
        f"calls={args.calls} rounds={args.rounds} received={received} sent={sent} "
        f"user_us_per_call_tick={1e6 * user / ticks:.2f} system_us_per_call_tick={1e6 * system / ticks:.2f}",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""The jitter buffer driven tick by tick: no clock, no sleeps."""

from __future__ import annotations

import struct
import sys
import warnings
from collections.abc import Iterable

import pytest

from telephony.codecs import codec_for
from telephony.jitter import Arrival, JitterBuffer, PlayoutPolicy

if sys.version_info < (3, 13):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        import audioop
else:  # pragma: no cover - exercised on 3.13+ only
    import audioop

SSRC = 0x1234


def frame(seq: int, samples: int = 160) -> bytes:
    """A recognisable frame: every sample holds the packet's number (mod 2**14, so halving stays exact)."""
    return struct.pack("<h", (seq % 16000) * 2) * samples


def sample(pcm: bytes) -> int:
    value: int = struct.unpack_from("<h", pcm)[0]
    return value


class Driver:
    """Feeds packets at given ticks and records what each tick delivered."""

    def __init__(self, buffer: JitterBuffer) -> None:
        self.buffer = buffer
        self.tick = 0
        self.out: list[bytes | None] = []

    def push(self, *seqs: int, ssrc: int = SSRC, marker: bool = False) -> list[Arrival]:
        return [self.buffer.push(seq & 0xFFFF, ssrc, marker, frame(seq)) for seq in seqs]

    def pop(self, ticks: int = 1) -> list[bytes | None]:
        got = [self.buffer.pop() for _ in range(ticks)]
        self.tick += ticks
        self.out += got
        return got

    def steady(self, seqs: Iterable[int]) -> list[bytes | None]:
        """One packet arrives before each tick, as from a well-behaved peer."""
        got: list[bytes | None] = []
        for seq in seqs:
            self.push(seq)
            got += self.pop()
        return got


def played(frames: Iterable[bytes | None]) -> list[int | None]:
    return [None if f is None else sample(f) // 2 for f in frames]


def test_priming_then_one_frame_per_tick_in_order() -> None:
    driver = Driver(JitterBuffer())
    out = driver.steady(range(100, 110))
    # Two ticks of priming (40 ms target), then every packet exactly once, in order.
    assert played(out) == [None, None, *range(100, 108)]
    assert driver.buffer.depth_frames == 2
    assert driver.buffer.delivered == 8 and driver.buffer.concealed == 0


def test_reordered_packets_play_in_sequence() -> None:
    driver = Driver(JitterBuffer())
    driver.push(1)
    driver.pop()
    driver.push(3)
    driver.pop()
    assert driver.push(2) == [Arrival.ACCEPTED]
    driver.push(4)
    out = driver.pop(4)
    assert played(out) == [1, 2, 3, 4]


def test_packet_reordered_before_the_first_one_during_priming() -> None:
    driver = Driver(JitterBuffer())
    driver.push(11)
    driver.pop()
    driver.push(10)
    driver.pop()
    assert played(driver.pop(2)) == [10, 11]


def test_duplicates_are_dropped_before_and_after_playout() -> None:
    driver = Driver(JitterBuffer())
    assert driver.push(5, 5) == [Arrival.ACCEPTED, Arrival.DUPLICATE]
    driver.steady(range(6, 10))
    assert driver.push(5) == [Arrival.DUPLICATE]  # already played
    assert driver.buffer.duplicates == 2
    assert played(x for x in driver.out if x is not None) == [5, 6]


def test_single_loss_is_concealed_with_an_attenuated_repeat() -> None:
    driver = Driver(JitterBuffer())
    out = driver.steady([1, 2, 3, 5, 6, 7, 8])
    real = [f for f in out if f is not None]
    assert played(real) == [1, 2, 3, 1, 5]  # frame 3 at half level stands in for 4 (3 * 2 / 2 // 2 == 1)
    assert sample(real[3]) == sample(frame(3)) // 2
    assert driver.buffer.concealed == 1
    # The lost packet turning up now is late, not played.
    assert driver.push(4) == [Arrival.LATE]


def test_long_gap_with_later_packets_repeats_twice_then_silence() -> None:
    buffer = JitterBuffer(PlayoutPolicy(min_delay_frames=2, max_delay_frames=6, cap_frames=12))
    driver = Driver(buffer)
    driver.push(1000)
    driver.pop(2)
    driver.push(1005)  # 1001-1004 lost, 1005 already here: a gap, not a stall
    out = driver.pop(6)
    levels = [sample(f) for f in out if f is not None]
    base = sample(frame(1000))
    assert levels == [base, base // 2, base // 4, 0, 0, sample(frame(1005))]
    assert buffer.concealed == 4


def test_loss_burst_during_a_stall_does_not_add_delay() -> None:
    driver = Driver(JitterBuffer())
    driver.steady(range(0, 20))
    depth_before = driver.buffer.depth_frames
    # Packets 20-27 are lost: the buffer runs dry, then 28 arrives on time.
    for _ in range(8):
        driver.pop()
    driver.steady(range(28, 40))
    buffer = driver.buffer
    assert buffer.stalls > 0 and buffer.skipped > 0
    assert buffer.depth_frames == depth_before
    # Frame 28 plays exactly as long after its arrival as frame 19 did.
    arrival = {seq: tick for tick, seq in enumerate(list(range(0, 20)) + [None] * 8 + list(range(28, 40)))}
    assert driver.out.index(frame(28)) - arrival[28] == driver.out.index(frame(19)) - arrival[19]


def test_delayed_packets_raise_the_target_and_the_excess_drains() -> None:
    policy = PlayoutPolicy(shrink_window=10)
    driver = Driver(JitterBuffer(policy))
    driver.steady(range(0, 20))
    assert driver.buffer.target == 2
    # A delay spike: nothing for 5 ticks, then 20-24 at once (nothing lost).
    driver.pop(5)
    driver.push(20, 21, 22, 23, 24)
    driver.steady(range(25, 80))
    buffer = driver.buffer
    assert buffer.target == 3  # the spike exceeded 40 ms once
    assert buffer.discarded > 0
    assert buffer.depth_frames == 3  # latency came back down to the new target, it did not keep the spike
    assert buffer.late == 0 and buffer.concealed == 0


def test_burst_beyond_the_cap_keeps_the_newest_and_keeps_playing() -> None:
    driver = Driver(JitterBuffer())
    driver.steady(range(0, 10))
    arrivals = driver.push(*range(10, 30))  # 400 ms arrive at once
    assert set(arrivals) == {Arrival.ACCEPTED}
    buffer = driver.buffer
    # Each time the cap is reached the oldest go, down to the target depth: 8-16, then 17-25.
    assert buffer.depth_frames == 4 < buffer.policy.cap_frames
    assert buffer.discarded == 18 and buffer.resyncs == 0
    assert played(driver.pop(2)) == [26, 27]  # no re-priming gap


def test_target_relaxes_after_calm() -> None:
    policy = PlayoutPolicy(relax_after=30, shrink_window=5)
    driver = Driver(JitterBuffer(policy))
    driver.steady(range(0, 10))
    driver.pop(3)  # 8 and 9 play, then a stall: 10 is late, so the target grows by a frame
    driver.push(10, 11, 12)
    assert driver.buffer.target == 3
    driver.steady(range(13, 80))
    assert driver.buffer.target == 2
    assert driver.buffer.depth_frames == 2


def test_ssrc_change_starts_a_new_playout() -> None:
    driver = Driver(JitterBuffer())
    driver.steady(range(0, 10))
    assert driver.buffer.push(500, 0xBEEF, False, frame(500)) == Arrival.RESYNC
    out = []
    for seq in range(501, 506):
        driver.buffer.push(seq, 0xBEEF, False, frame(seq))
        out.append(driver.buffer.pop())
    assert played(out) == [None, None, 500, 501, 502]
    assert driver.buffer.resyncs == 1


def test_sequence_wraps_around() -> None:
    driver = Driver(JitterBuffer())
    seqs = [65533, 65534, 65535, 65536, 65537, 65538]
    out = driver.steady(seqs)
    assert [f for f in out if f is not None] == [frame(s) for s in seqs[:4]]
    assert driver.buffer.concealed == 0 and driver.buffer.late == 0


def test_forward_jump_resyncs() -> None:
    driver = Driver(JitterBuffer())
    driver.steady(range(0, 10))
    assert driver.push(5000) == [Arrival.RESYNC]
    assert played(driver.steady([5001, 5002, 5003])) == [None, None, 5000]


def test_restarted_numbering_needs_two_packets() -> None:
    driver = Driver(JitterBuffer())
    driver.steady(range(1000, 1010))
    assert driver.push(200) == [Arrival.LATE]  # a stray very old packet ...
    assert driver.push(201) == [Arrival.RESYNC]  # ... unless the next one follows it


def test_marker_after_a_stall_reprimes() -> None:
    driver = Driver(JitterBuffer())
    driver.steady(range(0, 10))
    driver.pop(20)  # the far end went quiet (hold, silence suppression)
    assert driver.buffer.stalled
    assert driver.push(10, marker=True) == [Arrival.RESYNC]
    assert played(driver.steady([11, 12, 13])) == [None, None, 10]


def test_long_stall_goes_idle_and_the_next_packet_primes() -> None:
    driver = Driver(JitterBuffer(PlayoutPolicy(resync_after=5)))
    driver.steady(range(0, 10))
    driver.pop(7)  # 8 and 9 play, then five ticks with nothing
    assert not driver.buffer.active
    assert driver.push(300) == [Arrival.ACCEPTED]
    assert played(driver.steady([301, 302, 303])) == [None, None, 300]


@pytest.mark.parametrize("samples", [80, 240, 320])
def test_other_packet_times_are_recut_into_20ms_frames(samples: int) -> None:
    buffer = JitterBuffer()
    pcm = b"".join(struct.pack("<h", i) for i in range(8000))  # one second, every sample distinct
    packets = [pcm[i : i + 2 * samples] for i in range(0, len(pcm), 2 * samples)]
    out: list[bytes] = []
    packets_per_tick = 160 / samples  # packets arrive at their own pace; frames leave at 20 ms
    due = 0.0
    sent = 0
    for _ in range(60):
        due += packets_per_tick
        while sent < len(packets) and sent < due:
            buffer.push(sent, SSRC, False, packets[sent])
            sent += 1
        got = buffer.pop()
        if got is not None:
            out.append(got)
    joined = b"".join(out)
    assert all(len(f) == 320 for f in out) and len(out) >= 40
    assert joined == pcm[: len(joined)]
    assert buffer.concealed == 0


def test_policy_is_validated() -> None:
    with pytest.raises(ValueError):
        PlayoutPolicy(min_delay_frames=0)
    with pytest.raises(ValueError):
        PlayoutPolicy(max_delay_frames=10, cap_frames=10)


def loud(seq: int) -> bytes:
    return struct.pack("<h", 8000 + seq) * 160


def test_delay_is_shrunk_in_quiet_frames_first() -> None:
    buffer = JitterBuffer(PlayoutPolicy(shrink_window=10))
    out: list[bytes | None] = []

    # Speech, with a pause (frames 40-49) some time after a delay spike left the buffer too deep.
    def pcm(seq: int) -> bytes:
        return frame(0) if 40 <= seq < 50 else loud(seq)

    for seq in range(0, 20):
        buffer.push(seq, SSRC, False, pcm(seq))
        out.append(buffer.pop())
    out += [buffer.pop() for _ in range(5)]  # delay spike: 20-24 arrive late, together
    for seq in range(20, 25):
        buffer.push(seq, SSRC, False, pcm(seq))
    for seq in range(25, 80):
        buffer.push(seq, SSRC, False, pcm(seq))
        out.append(buffer.pop())
    assert buffer.discarded == 2 and buffer.depth_frames == buffer.target == 3
    heard = [f for f in out if f is not None]
    speech = [f for f in heard if f != frame(0)]
    # Every speech frame played, in order (the last few are still buffered); the pause lost two frames.
    assert speech == [loud(seq) for seq in [*range(0, 40), *range(50, 80)]][: len(speech)]
    assert len(speech) == len(heard) - 8


def test_delay_shrinks_even_without_a_pause() -> None:
    buffer = JitterBuffer(PlayoutPolicy(shrink_window=10))
    for seq in range(0, 20):
        buffer.push(seq, SSRC, False, loud(seq))
        buffer.pop()
    for _ in range(5):
        buffer.pop()
    for seq in range(20, 25):
        buffer.push(seq, SSRC, False, loud(seq))
    for seq in range(25, 80):
        buffer.push(seq, SSRC, False, loud(seq))
        buffer.pop()
    assert buffer.discarded == 2 and buffer.depth_frames == 3


PCMU = codec_for("PCMU")


def level(pcm16: bytes) -> int:
    return audioop.rms(pcm16, 2)


def test_codec_payloads_pass_unchanged_and_losses_are_concealed_in_pcm() -> None:
    # A buffer holding G.711 payloads (decoded by its user after pop): a lost packet is stood in for by
    # the last payload at half level, which means decoding, attenuating and encoding again.
    buffer = JitterBuffer(frame_bytes=160, codec=PCMU)
    payloads = {seq: PCMU.encode(loud(seq)) for seq in range(1, 9)}
    out: list[bytes | None] = []
    for seq in [1, 2, 3, 5, 6, 7, 8]:  # 4 is lost
        buffer.push(seq, SSRC, False, payloads[seq])
        out.append(buffer.pop())
    real = [f for f in out if f is not None]
    assert real[:3] == [payloads[1], payloads[2], payloads[3]] and real[4] == payloads[5]
    stand_in = real[3]
    assert len(stand_in) == 160 and stand_in != payloads[3]
    expected = level(PCMU.decode(payloads[3])) / 2
    assert abs(level(PCMU.decode(stand_in)) - expected) < expected / 16  # within G.711's quantisation


def test_codec_silence_after_the_repeats_is_the_codecs_silence() -> None:
    buffer = JitterBuffer(PlayoutPolicy(cap_frames=12), frame_bytes=160, codec=PCMU)
    buffer.push(1000, SSRC, False, PCMU.encode(loud(1000)))
    buffer.pop(), buffer.pop()
    buffer.push(1005, SSRC, False, PCMU.encode(loud(1005)))  # 1001-1004 lost
    out = [buffer.pop() for _ in range(6)]
    assert out[3] == out[4] == PCMU.encode(bytes(320)) == b"\xff" * 160  # mu-law's zero, not 0x00
    assert buffer.concealed == 4


def test_codec_payloads_are_judged_quiet_by_their_decoded_level() -> None:
    # Speech whose mu-law bytes, read as PCM16, would look quiet: every other sample is full-scale
    # negative (code 0x00), so each byte pair reads as a value below 256. Only the real pause may go.
    def speech(seq: int) -> bytes:
        samples = [value for i in range(80) for value in ((seq * 37 + i * 113) % 16000 - 8000, -32124)]
        return PCMU.encode(struct.pack("<160h", *samples))

    silence = PCMU.encode(bytes(320))
    assert level(speech(0)) < PlayoutPolicy().quiet_rms <= level(PCMU.decode(speech(0)))
    buffer = JitterBuffer(PlayoutPolicy(shrink_window=10), frame_bytes=160, codec=PCMU)
    out: list[bytes | None] = []

    def payload(seq: int) -> bytes:  # the pause starts a few frames into the window that shrinks the delay
        return silence if 44 <= seq < 54 else speech(seq)

    for seq in range(0, 20):
        buffer.push(seq, SSRC, False, payload(seq))
        out.append(buffer.pop())
    out += [buffer.pop() for _ in range(5)]  # delay spike: 20-24 arrive late, together
    for seq in range(20, 25):
        buffer.push(seq, SSRC, False, payload(seq))
    for seq in range(25, 80):
        buffer.push(seq, SSRC, False, payload(seq))
        out.append(buffer.pop())
    assert buffer.discarded == 2
    heard = [f for f in out if f is not None and f != silence]
    assert heard == [speech(seq) for seq in [*range(0, 44), *range(54, 80)]][: len(heard)]
    assert out.count(silence) == 8  # the two dropped frames came out of the pause

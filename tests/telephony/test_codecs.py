from __future__ import annotations

import random
import sys
import warnings
from collections.abc import Callable

import numpy as np
import pytest

from telephony.codecs import (
    SILENCE_ALAW_20MS,
    SILENCE_ULAW_20MS,
    Resampler,
    alaw_to_pcm16,
    codec_for,
    pcm16_to_alaw,
    pcm16_to_ulaw,
    ulaw_to_pcm16,
)

if sys.version_info < (3, 13):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        import audioop
else:  # pragma: no cover - exercised on 3.13+ only
    import audioop


def sine(frequency: float, rate: int, seconds: float, amplitude: float) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    return np.round(amplitude * 32767 * np.sin(2 * np.pi * frequency * t)).astype("<i2")


def samples(pcm: bytes) -> np.ndarray:
    return np.frombuffer(pcm, dtype="<i2").astype(np.int64)


def snr_db(reference: np.ndarray, decoded: np.ndarray) -> float:
    noise = reference - decoded
    return float(10 * np.log10(np.sum(reference**2) / np.sum(noise**2)))


@pytest.mark.parametrize(
    ("encode", "decode"),
    [(pcm16_to_ulaw, ulaw_to_pcm16), (pcm16_to_alaw, alaw_to_pcm16)],
    ids=["ulaw", "alaw"],
)
@pytest.mark.parametrize("amplitude", [0.9, 0.25, 0.02])
def test_g711_round_trip_error_is_bounded(
    encode: Callable[[bytes], bytes], decode: Callable[[bytes], bytes], amplitude: float
) -> None:
    reference = sine(1004, 8000, 1.0, amplitude)  # 1004 Hz: the usual test tone, not a divisor of 8 kHz
    encoded = encode(reference.tobytes())
    assert len(encoded) == len(reference)
    decoded = samples(decode(encoded))
    error = np.abs(decoded - reference.astype(np.int64))
    # Companding: the quantisation step grows with the magnitude, so the error is relative (< 1/32 of the
    # sample, half a step of a 16-step segment) plus a small constant for the finest segment.
    assert np.all(error <= np.abs(reference) / 32 + 16)
    # G.711 gives roughly 35-39 dB SNR over a wide range of levels; that flatness is the point of it.
    assert snr_db(reference.astype(np.int64), decoded) > 33


def test_known_code_points() -> None:
    assert ulaw_to_pcm16(b"\xff\x7f\x00\x80") == np.array([0, 0, -32124, 32124], dtype="<i2").tobytes()
    assert alaw_to_pcm16(b"\xd5\x55\x2a\xaa") == np.array([8, -8, -32256, 32256], dtype="<i2").tobytes()
    assert ulaw_to_pcm16(SILENCE_ULAW_20MS) == bytes(320)
    assert np.all(np.abs(samples(alaw_to_pcm16(SILENCE_ALAW_20MS))) <= 8)
    assert pcm16_to_ulaw(bytes(320)) == SILENCE_ULAW_20MS
    assert pcm16_to_alaw(bytes(320)) == SILENCE_ALAW_20MS


def test_decode_then_encode_is_identity_on_every_code() -> None:
    codes = bytes(range(256))
    assert pcm16_to_alaw(alaw_to_pcm16(codes)) == codes
    # mu-law has two zeros (0x7F is "negative zero"); everything else maps back to itself.
    assert pcm16_to_ulaw(ulaw_to_pcm16(codes)) == codes.replace(b"\x7f", b"\xff")


def test_long_chunks_encode_as_audioop_does() -> None:
    # From 1,024 samples on, the encoders use a lookup table instead of audioop: every sample value once.
    every_sample = np.arange(-32768, 32768, dtype="<i2").tobytes()
    assert pcm16_to_ulaw(every_sample) == audioop.lin2ulaw(every_sample, 2)
    assert pcm16_to_alaw(every_sample) == audioop.lin2alaw(every_sample, 2)


def test_odd_length_pcm_drops_the_dangling_byte() -> None:
    assert pcm16_to_ulaw(b"\x00\x00\x01") == b"\xff"


def test_codec_for() -> None:
    pcmu, pcma = codec_for("pcmu"), codec_for("PCMA")
    assert (pcmu.name, pcmu.payload_type, pcma.name, pcma.payload_type) == ("PCMU", 0, "PCMA", 8)
    tone = sine(440, 8000, 0.02, 0.5).tobytes()
    assert pcmu.encode(tone) == pcm16_to_ulaw(tone) and pcma.encode(tone) == pcm16_to_alaw(tone)
    assert pcmu.decode(b"\x00") == ulaw_to_pcm16(b"\x00") and pcma.decode(b"\x00") == alaw_to_pcm16(b"\x00")
    assert pcmu.silence_20ms == SILENCE_ULAW_20MS and pcma.silence_20ms == SILENCE_ALAW_20MS
    with pytest.raises(ValueError):
        codec_for("G729")


def dominant_frequency(pcm: bytes, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(samples(pcm) * np.hanning(len(pcm) // 2)))
    return float(np.argmax(spectrum) * rate / (len(pcm) // 2))


@pytest.mark.parametrize(
    ("from_rate", "to_rate"), [(8000, 16000), (16000, 8000), (22050, 8000), (8000, 8000)]
)
def test_streaming_resampler_matches_one_shot(from_rate: int, to_rate: int) -> None:
    pcm = sine(440, from_rate, 1.0, 0.5).tobytes()
    one_shot = Resampler(from_rate, to_rate).process(pcm)
    streaming = Resampler(from_rate, to_rate)
    rng = random.Random(7)
    out = []
    position = 0
    while position < len(pcm):
        size = rng.randint(1, 700)  # odd sizes too: chunks may split a sample
        out.append(streaming.process(pcm[position : position + size]))
        position += size
    chunked = b"".join(out)
    # ratecv carries its filter state across calls, so chunking changes nothing, not even one sample.
    assert chunked == one_shot
    assert abs(len(chunked) // 2 - to_rate) <= 2  # one second in, one second out
    assert abs(dominant_frequency(chunked, to_rate) - 440) < 2


def test_resampler_rejects_bad_rates() -> None:
    with pytest.raises(ValueError):
        Resampler(0, 8000)

"""Word error rate and cost of the phone-call recogniser on the demo business.

Speech is synthesised with espeak-ng voices the phone-band mapping was not fitted on, sent through the
phone path (8 kHz, G.711 mu-law) and recognised utterance by utterance, fed in 20 ms frames as a call
would. Prints WER per voice and per sentence set, and timing / memory figures.

    .venv/bin/python bench/stt_wer.py                    # n-gram LM (the default search)
    .venv/bin/python bench/stt_wer.py --search grammar   # JSGF grammar, same audio
    .venv/bin/python bench/stt_wer.py --passes 1         # one decoding pass (SWITCHBOARD_STT_PASSES=1)
    .venv/bin/python bench/stt_wer.py --economy          # what a speech worker that is busy decodes with
    .venv/bin/python bench/stt_wer.py --deep-economy     # ... and one with requests waiting on it
    .venv/bin/python bench/stt_wer.py --voices m3,f2,m7 --verbose
    .venv/bin/python bench/stt_wer.py --as-call --pause-ms 600     # what a call decodes of a paused line
    .venv/bin/python bench/stt_wer.py --as-call --lead-in-ms 300 --pause-decoded-ms 10000  # all of it

--as-call puts each line between stretches of quiet line noise and feeds the recogniser what a call
session would (`agent.turn_taking.RecognitionFeed` driven by `agent.vad.Endpointer`): a short lead-in,
the speech, and only the start of a pause. --pause-ms splits each line at its middle word with a pause.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agent.stt import Recognizer, SpeechModel
from agent.tts import EspeakSynthesizer
from agent.turn_taking import LEAD_IN_FRAMES, PAUSE_DECODED_MS, RecognitionFeed
from agent.vad import Endpointer, SpeechEnded, SpeechStarted
from bench.wer import word_error_rate
from tests.agent.conftest import (
    CALLER_LINES,
    DEMO_VOCABULARY,
    HELD_OUT_LINES,
    phone_line,
    phone_path,
)

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)  # audioop-lts replaces it on 3.13+
    import audioop

FRAME_BYTES = 320  # 20 ms at 8 kHz
# --short-answers: whole turns of one to three words, the case a short lead-in could clip the onset of.
SHORT_ANSWERS = (
    "yes",
    "no",
    "okay",
    "right",
    "yeah",
    "sure",
    "yes please",
    "no thanks",
    "that's right",
    "correct",
    "tomorrow",
    "monday",
    "at ten",
    "in the morning",
    "thank you",
    "that's all",
    "goodbye",
    "two thirty",
)
LINE_NOISE_RMS = 20  # quiet line noise around the speech in --as-call, about -64 dBFS


def line_noise(ms: int, rng: np.random.Generator, rms: float = LINE_NOISE_RMS) -> bytes:
    return rng.normal(0.0, rms, ms * 8).astype("<i2").tobytes()


def spoken(
    sentence: str, voice: EspeakSynthesizer, *, pause_ms: int, rng: np.random.Generator, noise_rms: float
) -> bytes:
    """The sentence as synthesised; with `pause_ms`, split at its middle word by that much line noise."""
    if not pause_ms:
        return voice.synthesize_8k(sentence)
    words = sentence.split()
    half = max(1, len(words) // 2)
    return (
        voice.synthesize_8k(" ".join(words[:half]))
        + line_noise(pause_ms, rng, noise_rms)
        + voice.synthesize_8k(" ".join(words[half:]))
    )


def as_call(speech: bytes, feed: RecognitionFeed, rng: np.random.Generator, noise_rms: float) -> bytes:
    """What a call session gives the recogniser of `speech` said on a quiet phone line: the frames the
    feed passes while the endpointer (with a hangover long enough not to split a paused line) hears it."""
    pcm = line_noise(700, rng, noise_rms) + speech + line_noise(1200, rng, noise_rms)
    pcm = audioop.ulaw2lin(audioop.lin2ulaw(pcm, 2), 2)
    endpointer = Endpointer(hangover_ms=1000)
    decoded: list[bytes] = []
    for offset in range(0, len(pcm) - FRAME_BYTES + 1, FRAME_BYTES):
        frame = pcm[offset : offset + FRAME_BYTES]
        event = endpointer.process(frame)
        if isinstance(event, SpeechStarted):
            decoded += feed.speech_started(frame)
        elif endpointer.in_speech:
            decoded += feed.in_speech(frame, endpointer.trailing_silence_ms)
        elif isinstance(event, SpeechEnded):
            decoded += feed.speech_ended(frame, endpointer.stream_ms - event.at_ms)
            break
        else:
            feed.before_speech(frame)
    return b"".join(decoded)


def rss_kib() -> int:
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def recognise_framewise(
    recognizer: Recognizer,
    pcm: bytes,
    feed_costs: list[float],
    end_costs: list[float],
    *,
    economy: bool = False,
    deep: bool = False,
) -> str:
    if economy or deep:
        recognizer.start_economy_utterance(deep=deep)
    else:
        recognizer.start_utterance()
    for offset in range(0, len(pcm), FRAME_BYTES):
        started = time.perf_counter()
        recognizer.feed(pcm[offset : offset + FRAME_BYTES])
        feed_costs.append(time.perf_counter() - started)
    started = time.perf_counter()
    text = recognizer.end_utterance()
    end_costs.append(time.perf_counter() - started)
    return text


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--search", choices=("ngram", "grammar"), default="ngram")
    parser.add_argument("--passes", type=int, choices=(1, 2), default=2, help="n-gram decoding passes")
    parser.add_argument("--smoothing", choices=("kneser_ney", "witten_bell"), default="kneser_ney")
    parser.add_argument("--voices", default="m3,f2", help="espeak-ng en-us variants to speak with")
    parser.add_argument(
        "--economy", action="store_true", help="the economy settings a speech worker that is behind uses"
    )
    parser.add_argument(
        "--deep-economy", action="store_true", help="what a speech worker with requests waiting uses"
    )
    parser.add_argument("--verbose", action="store_true", help="print every misrecognised sentence")
    parser.add_argument("--as-call", action="store_true", help="decode what a call session would")
    parser.add_argument("--pause-ms", type=int, default=0, help="a pause in the middle of every line")
    parser.add_argument(
        "--line-noise-rms", type=float, default=LINE_NOISE_RMS, help="of the silences (0: digital silence)"
    )
    parser.add_argument("--lead-in-ms", type=int, default=LEAD_IN_FRAMES * 20, help="with --as-call")
    parser.add_argument("--pause-decoded-ms", type=int, default=PAUSE_DECODED_MS, help="with --as-call")
    parser.add_argument(
        "--short-answers", action="store_true", help="lone short answers instead of the sentence sets"
    )
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="stt-bench-") as scratch:
        workdir = Path(scratch)
        started = time.perf_counter()
        SpeechModel.build(
            DEMO_VOCABULARY,
            workdir / "cold",
            search=args.search,
            passes=args.passes,
            smoothing=args.smoothing,
            mapping_cache=workdir / "cache",
        )
        cold_build = time.perf_counter() - started
        started = time.perf_counter()
        model = SpeechModel.build(
            DEMO_VOCABULARY,
            workdir / "model",
            search=args.search,
            passes=args.passes,
            smoothing=args.smoothing,
            mapping_cache=workdir / "cache",
        )
        build = time.perf_counter() - started
        print(
            f"search={args.search} passes={args.passes} economy={args.economy} deep={args.deep_economy} "
            f"smoothing={args.smoothing} "
            f"sentences={model.files.sentence_count} "
            f"words={len(model.files.lexicon.pronunciations)} derived={list(model.files.lexicon.derived)}"
        )
        print(
            f"SpeechModel.build: {cold_build * 1000:.0f} ms fitting the phone-band mapping, "
            f"{build * 1000:.0f} ms with it cached"
        )

        before = rss_kib()
        creation: list[float] = []
        recognizers = []
        for _ in range(5):
            started = time.perf_counter()
            recognizers.append(model.new_recognizer())
            creation.append(time.perf_counter() - started)
        per_recognizer = (rss_kib() - before) / len(recognizers)
        print(
            f"new_recognizer (incl. warm-up): median {statistics.median(creation) * 1000:.0f} ms; "
            f"memory {per_recognizer / 1024:.1f} MiB RSS per recognizer"
        )

        all_pairs: list[tuple[str, str]] = []
        first_pairs: list[tuple[str, str]] = []
        feed_costs: list[float] = []
        end_costs: list[float] = []
        audio_seconds = 0.0
        rng = np.random.default_rng(1)

        def heard_as(sentence: str, voice: EspeakSynthesizer) -> bytes:
            speech = spoken(sentence, voice, pause_ms=args.pause_ms, rng=rng, noise_rms=args.line_noise_rms)
            if not args.as_call:
                return phone_path(speech)
            feed = RecognitionFeed(
                lead_in_frames=args.lead_in_ms // 20, pause_decoded_ms=args.pause_decoded_ms
            )
            return as_call(speech, feed, rng, args.line_noise_rms)

        for variant in args.voices.split(","):
            voice = EspeakSynthesizer(variant=variant)
            recognizer = recognizers.pop() if recognizers else model.new_recognizer()
            line_sets: tuple[tuple[str, tuple[str, ...]], ...] = (
                (("short answers", SHORT_ANSWERS),)
                if args.short_answers
                else (("caller lines", CALLER_LINES), ("held-out lines", HELD_OUT_LINES))
            )
            for label, lines in line_sets:
                pairs = []
                for sentence in lines:
                    pcm = heard_as(sentence, voice)
                    audio_seconds += len(pcm) / 16000
                    heard = recognise_framewise(
                        recognizer, pcm, feed_costs, end_costs, economy=args.economy, deep=args.deep_economy
                    )
                    pairs.append((sentence, heard))
                all_pairs.extend(pairs)
                print(f"  voice en-us+{variant:7s} {label:15s} WER {word_error_rate(pairs):6.1%}")
                if args.verbose:
                    for reference, hypothesis in pairs:
                        if reference != hypothesis:
                            print(f"      said  {reference}\n      heard {hypothesis}")
            # The first utterance of a fresh recogniser, for every held-out line (warm-up check).
            for sentence in HELD_OUT_LINES[:8]:
                fresh = model.new_recognizer()
                heard = recognise_framewise(
                    fresh, phone_line(sentence, voice), [], [], economy=args.economy, deep=args.deep_economy
                )
                first_pairs.append((sentence, heard))
        print(
            f"WER overall {word_error_rate(all_pairs):.1%} over {len(all_pairs)} utterances; "
            f"first utterance of a fresh recogniser {word_error_rate(first_pairs):.1%}"
        )
        decode_seconds = sum(feed_costs) + sum(end_costs)
        print(
            f"feed per 20 ms frame: mean {statistics.mean(feed_costs) * 1e6:.0f} us, "
            f"p95 {statistics.quantiles(feed_costs, n=20)[-1] * 1e6:.0f} us, "
            f"max {max(feed_costs) * 1000:.1f} ms; real-time factor {decode_seconds / audio_seconds:.3f} "
            f"({audio_seconds:.1f} s of audio decoded in {decode_seconds:.1f} s)"
        )
        print(
            f"end_utterance latency: median {statistics.median(end_costs) * 1000:.1f} ms, "
            f"p95 {statistics.quantiles(end_costs, n=20)[-1] * 1000:.1f} ms"
        )


if __name__ == "__main__":
    main()

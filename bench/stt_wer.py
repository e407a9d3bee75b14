"""Word error rate and cost of the phone-call recogniser on the demo business.

Speech is synthesised with espeak-ng voices the phone-band mapping was not fitted on, sent through the
phone path (8 kHz, G.711 mu-law) and recognised utterance by utterance, fed in 20 ms frames as a call
would. Prints WER per voice and per sentence set, and timing / memory figures.

    .venv/bin/python bench/stt_wer.py                    # n-gram LM (the default search)
    .venv/bin/python bench/stt_wer.py --search grammar   # JSGF grammar, same audio
    .venv/bin/python bench/stt_wer.py --passes 1         # one decoding pass (SWITCHBOARD_STT_PASSES=1)
    .venv/bin/python bench/stt_wer.py --economy          # what a speech worker that is behind decodes with
    .venv/bin/python bench/stt_wer.py --voices m3,f2,m7 --verbose
"""

from __future__ import annotations

import argparse
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agent.stt import Recognizer, SpeechModel
from agent.tts import EspeakSynthesizer
from tests.agent.conftest import (
    CALLER_LINES,
    DEMO_VOCABULARY,
    HELD_OUT_LINES,
    phone_line,
    word_error_rate,
)

FRAME_BYTES = 320  # 20 ms at 8 kHz


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
) -> str:
    if economy:
        recognizer.start_economy_utterance()
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
    parser.add_argument("--verbose", action="store_true", help="print every misrecognised sentence")
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
            f"search={args.search} passes={args.passes} economy={args.economy} smoothing={args.smoothing} "
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
        for variant in args.voices.split(","):
            voice = EspeakSynthesizer(variant=variant)
            recognizer = recognizers.pop() if recognizers else model.new_recognizer()
            for label, lines in (("caller lines", CALLER_LINES), ("held-out lines", HELD_OUT_LINES)):
                pairs = []
                for sentence in lines:
                    pcm = phone_line(sentence, voice)
                    audio_seconds += len(pcm) / 16000
                    heard = recognise_framewise(recognizer, pcm, feed_costs, end_costs, economy=args.economy)
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
                heard = recognise_framewise(fresh, phone_line(sentence, voice), [], [], economy=args.economy)
                first_pairs.append((sentence, heard))
        print(
            f"WER overall {word_error_rate(all_pairs):.1%} over {len(all_pairs)} utterances; "
            f"first utterance of a fresh recogniser {word_error_rate(first_pairs):.1%}"
        )
        decode_seconds = sum(feed_costs) + sum(end_costs)
        print(
            f"feed per 20 ms frame: mean {statistics.mean(feed_costs) * 1e6:.0f} us, "
            f"p95 {statistics.quantiles(feed_costs, n=20)[-1] * 1e6:.0f} us, "
            f"max {max(feed_costs) * 1000:.1f} ms; real-time factor {decode_seconds / audio_seconds:.3f}"
        )
        print(
            f"end_utterance latency: median {statistics.median(end_costs) * 1000:.1f} ms, "
            f"p95 {statistics.quantiles(end_costs, n=20)[-1] * 1000:.1f} ms"
        )


if __name__ == "__main__":
    main()

"""The recogniser end to end on the phone path, and the domain model it is built from.

Audio: espeak-ng voices en-us+m3 and en-us+f2 (not used to fit the phone-band mapping) -> 8 kHz ->
G.711 mu-law encode/decode -> Recognizer. Bounds are set from measured WERs with some headroom
(bench/stt_wer.py prints the figures).
"""

from __future__ import annotations

import dataclasses
import math
import os
import pickle
import re
from pathlib import Path

import pocketsphinx
import pytest

from agent.lm import (
    arpabet_from_ipa,
    build_lexicon,
    domain_corpus,
    domain_grammar,
    spoken_form,
    trigram_arpa,
    write_domain_model,
)
from agent.stt import Recognizer, SpeechModel, SpeechModels, SttError
from agent.tts import EspeakSynthesizer
from agent.vocabulary import DomainVocabulary
from bench.wer import word_error_rate

from .conftest import (
    CALLER_LINES,
    DEMO_VOCABULARY,
    HELD_OUT_LINES,
    TEST_VOICES,
    phone_line,
)

CMUDICT = Path(pocketsphinx.get_model_path("en-us/cmudict-en-us.dict"))
FRAME = 320


# --- The domain model -----------------------------------------------------------------------------------


def test_corpus_is_deterministic_and_uses_the_business_words() -> None:
    corpus = domain_corpus(DEMO_VOCABULARY)
    assert corpus == domain_corpus(DEMO_VOCABULARY)
    assert len(set(corpus)) > 5000
    text = "\n".join(corpus)
    for phrase in ("oil change", "tire rotation", "synthetic oil", "priya raman", "riverside auto care"):
        assert phrase in text
    assert "a one zero four two" in text and "b two oh seven seven" in text
    for phrase in ("next tuesday", "at two thirty", "in the afternoon", "tomorrow at ten"):
        assert phrase in text


def test_held_out_lines_are_phrased_differently_from_the_corpus() -> None:
    corpus = set(domain_corpus(DEMO_VOCABULARY))
    assert not corpus.intersection(HELD_OUT_LINES)
    vocabulary = {word for sentence in corpus for word in sentence.split()}
    assert {word for line in HELD_OUT_LINES for word in line.split()} <= vocabulary


def test_corpus_follows_the_vocabulary_when_crm_data_changes() -> None:
    changed = DomainVocabulary(
        business_name="Lakeside Tyres",
        services=("wheel alignment",),
        products=("snow chains",),
        customer_names=("Omar Haddad",),
        order_numbers=("C3150",),
    )
    text = "\n".join(domain_corpus(changed))
    assert "wheel alignment" in text and "snow chains" in text and "omar haddad" in text
    assert "c three one five zero" in text
    assert "oil change" not in text


@pytest.mark.parametrize(
    ("written", "spoken"),
    [
        ("205/55R16 tire", "two oh five fifty five r sixteen tire"),
        ("5W-30 Synthetic Oil", "five w thirty synthetic oil"),
        ("Group 24F battery", "group twenty four f battery"),
        ("22 inch wiper blades", "twenty two inch wiper blades"),
    ],
)
def test_vocabulary_is_turned_into_spoken_words(written: str, spoken: str) -> None:
    assert spoken_form(written) == spoken


def arpa_probability(arpa: str, history: tuple[str, ...], word: str) -> float:
    """p(word | history) by ARPA back-off, read straight from the text."""
    entries: dict[tuple[str, ...], tuple[float, float]] = {}
    for line in arpa.splitlines():
        fields = line.split("\t")
        if len(fields) >= 2 and re.fullmatch(r"-?\d+(\.\d+)?", fields[0]):
            entries[tuple(fields[1].split())] = (
                float(fields[0]),
                float(fields[2]) if len(fields) > 2 else 0.0,
            )
    log_back_off = 0.0
    while True:
        ngram = (*history, word)
        if ngram in entries:
            return 10 ** (entries[ngram][0] + log_back_off)
        log_back_off += entries.get(history, (0.0, 0.0))[1]
        history = history[1:]


@pytest.mark.parametrize("smoothing", ["kneser_ney", "witten_bell"])
def test_trigram_model_is_a_proper_distribution(smoothing: str) -> None:
    corpus = domain_corpus(DEMO_VOCABULARY)[:3000]
    arpa = trigram_arpa(corpus, smoothing)  # type: ignore[arg-type]
    vocabulary = sorted({word for sentence in corpus for word in sentence.split()} | {"</s>"})
    for history in [("<s>",), ("<s>", "i'd"), ("at", "ten"), ("oil", "change"), ("the", "wiper"), ("zzz",)]:
        total = sum(arpa_probability(arpa, history, word) for word in vocabulary)
        assert total == pytest.approx(1.0, abs=1e-3), history
    unseen = arpa_probability(arpa, ("wiper", "blades"), "tomorrow")
    assert 0 < unseen < arpa_probability(arpa, ("wiper", "blades"), "in")


def test_lm_and_grammar_load_in_pocketsphinx(tmp_path: Path) -> None:
    files = write_domain_model(DEMO_VOCABULARY, tmp_path, CMUDICT)
    assert re.search(r"ngram 3=\d{4,}", files.language_model.read_text())
    grammar = domain_grammar(DEMO_VOCABULARY)
    assert grammar.startswith("#JSGF V1.0;") and "public <utterance>" in grammar
    decoder = pocketsphinx.Decoder(lm=str(files.language_model), dict=str(files.dictionary), loglevel="FATAL")
    assert decoder.lookup_word("whitfield")


def test_words_missing_from_cmudict_are_pronounced_by_espeak() -> None:
    lexicon = build_lexicon({"priya", "oil", "zorbulator"}, CMUDICT)
    assert set(lexicon.derived) == {"priya", "zorbulator"}
    assert lexicon.pronunciations["priya"][0][:2] == ("P", "R")
    assert lexicon.pronunciations["oil"] == (("OY", "L"),)
    assert not lexicon.dropped
    assert arpabet_from_ipa("tʃˈɜːtʃ") == ("CH", "ER", "CH")
    assert arpabet_from_ipa("qʘ") is None  # clicks: no phone in the model, the word gets dropped


# --- Recognition on the phone path -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def phone_audio(voices: dict[str, EspeakSynthesizer]) -> dict[tuple[str, str], bytes]:
    return {
        (variant, line): phone_line(line, voice)
        for variant, voice in voices.items()
        for line in (*CALLER_LINES, *HELD_OUT_LINES)
    }


def test_word_error_rate_on_phone_audio(
    speech_model: SpeechModel, phone_audio: dict[tuple[str, str], bytes]
) -> None:
    rates: dict[str, float] = {}
    everything: list[tuple[str, str]] = []
    for variant in TEST_VOICES:
        recognizer = speech_model.new_recognizer()
        for label, lines in (("caller", CALLER_LINES), ("held-out", HELD_OUT_LINES)):
            pairs = [(line, recognizer.transcribe(phone_audio[(variant, line)])) for line in lines]
            rates[f"{variant} {label}"] = word_error_rate(pairs)
            everything.extend(pairs)
    overall = word_error_rate(everything)
    print(
        f"\nWER on the phone path: overall {overall:.1%}; "
        + ", ".join(f"{k} {v:.1%}" for k, v in rates.items())
    )
    # Measured: overall 5-7 %, worst voice/set 9 % (en-us+m3, November 2026).
    assert overall <= 0.10
    assert all(rate <= 0.15 for rate in rates.values()), rates


def test_first_utterance_of_a_fresh_recognizer_is_understood(
    speech_model: SpeechModel, phone_audio: dict[tuple[str, str], bytes]
) -> None:
    pairs = []
    for variant in TEST_VOICES:
        for line in CALLER_LINES[:6]:
            pairs.append((line, speech_model.new_recognizer().transcribe(phone_audio[(variant, line)])))
    rate = word_error_rate(pairs)
    print(f"\nWER of first utterances of fresh recognizers: {rate:.1%}")
    # Measured 0-6 % warmed up; a cold decoder scored 17 % on the same kind of test.
    assert rate <= 0.12


def test_streaming_in_20_ms_frames_matches_one_shot(
    speech_model: SpeechModel, phone_audio: dict[tuple[str, str], bytes]
) -> None:
    line = "next tuesday at two thirty in the afternoon"
    audio = phone_audio[("f2", line)]
    one_shot = speech_model.new_recognizer().transcribe(audio)
    streaming = speech_model.new_recognizer()
    streaming.start_utterance()
    partials = []
    for offset in range(0, len(audio), FRAME):
        streaming.feed(audio[offset : offset + FRAME])
        partials.append(streaming.partial())
    final = streaming.end_utterance()
    assert final == one_shot
    assert final == line
    assert any(partial and partial != final for partial in partials)  # hypotheses grow as audio arrives
    assert all(partial == partial.lower() for partial in partials)
    assert streaming.partial() == ""  # no utterance open


def test_odd_sized_chunks_are_decoded_like_frames(
    speech_model: SpeechModel, phone_audio: dict[tuple[str, str], bytes]
) -> None:
    audio = phone_audio[("m3", "what are your opening hours")]
    recognizer = speech_model.new_recognizer()
    recognizer.start_utterance()
    offset = 0
    for size in [2, 158, 1000, 6, 4000] * 100:
        recognizer.feed(audio[offset : offset + size])
        offset += size
    assert recognizer.end_utterance() == speech_model.new_recognizer().transcribe(audio)


def test_silence_gives_an_empty_transcript(speech_model: SpeechModel) -> None:
    assert speech_model.new_recognizer().transcribe(bytes(16000)) == ""


def test_recognizer_refuses_calls_out_of_order(speech_model: SpeechModel) -> None:
    recognizer: Recognizer = speech_model.new_recognizer()
    with pytest.raises(RuntimeError):
        recognizer.feed(bytes(FRAME))
    with pytest.raises(RuntimeError):
        recognizer.end_utterance()
    recognizer.start_utterance()
    with pytest.raises(RuntimeError):
        recognizer.start_utterance()
    with pytest.raises(ValueError):
        recognizer.feed(bytes(3))


def test_unusable_workdir_is_an_stt_error(tmp_path: Path) -> None:
    not_a_directory = tmp_path / "file"
    not_a_directory.write_text("")
    with pytest.raises(SttError):
        SpeechModel.build(DEMO_VOCABULARY, not_a_directory)


def test_rebuilding_reuses_the_cached_phone_band_mapping(tmp_path: Path, speech_model: SpeechModel) -> None:
    first = SpeechModel.build(DEMO_VOCABULARY, tmp_path / "one", mapping_cache=tmp_path / "cache")
    cached = list((tmp_path / "cache").glob("phone-band-mapping-*.npz"))
    assert len(cached) == 1
    modified = cached[0].stat().st_mtime_ns
    second = SpeechModel.build(DEMO_VOCABULARY, tmp_path / "two", mapping_cache=tmp_path / "cache")
    assert cached[0].stat().st_mtime_ns == modified
    assert (second.mapping.weights == first.mapping.weights).all()
    assert not math.isnan(float(first.mapping.bias.sum()))


def test_recognizers_are_independent(
    speech_model: SpeechModel, phone_audio: dict[tuple[str, str], bytes]
) -> None:
    first, second = speech_model.new_recognizer(), speech_model.new_recognizer()
    first.start_utterance()
    second.start_utterance()
    yes, hours = phone_audio[("m3", "yes")], phone_audio[("f2", "what are your opening hours")]
    # Interleaved frame by frame, as two calls served by one worker thread would be.
    for offset in range(0, max(len(yes), len(hours)), FRAME):
        first.feed(yes[offset : offset + FRAME])
        second.feed(hours[offset : offset + FRAME])
    assert first.end_utterance() == "yes"
    assert second.end_utterance() == "what are your opening hours"


def _prefix_agreement(partial: str, final: str) -> float:
    """The share of ``final``'s words that ``partial`` already has, in order, from the start."""
    agreed = 0
    for heard, meant in zip(partial.split(), final.split(), strict=False):
        if heard != meant:
            break
        agreed += 1
    return agreed / len(final.split())


def test_partials_grow_towards_the_final_text(
    speech_model: SpeechModel, phone_audio: dict[tuple[str, str], bytes]
) -> None:
    """Polled every 100 ms while 20 ms frames arrive, as the call session does for endpointing."""
    lines = [line for line in CALLER_LINES if len(line.split()) >= 5]
    by_quarter: list[list[float]] = [[], [], [], []]
    for variant in TEST_VOICES:
        recognizer = speech_model.new_recognizer()
        for line in lines:
            audio = phone_audio[(variant, line)]
            recognizer.start_utterance()
            polls: list[tuple[float, str]] = []
            for index, offset in enumerate(range(0, len(audio), FRAME)):
                recognizer.feed(audio[offset : offset + FRAME])
                if index % 5 == 4:
                    partial = recognizer.partial()
                    assert recognizer.partial() == partial  # no new audio, same answer
                    polls.append(((offset + FRAME) / len(audio), partial))
            final = recognizer.end_utterance()
            for quarter in range(4):
                upto = [partial for position, partial in polls if position <= (quarter + 1) / 4]
                by_quarter[quarter].append(_prefix_agreement(upto[-1], final) if upto else 0.0)
    means = [sum(values) / len(values) for values in by_quarter]
    print("\nshare of the final transcript already in the partial, by quarter of the audio:", means)
    assert means[0] < means[1] < means[2] <= means[3]
    # Once the audio is in, the partial holds most of the final text: the final adds a second decoding
    # pass (measured 0.79 on these lines), which is why the session finalises early rather than using
    # the partial as the transcript.
    assert means[3] >= 0.7
    assert means[1] >= 0.2  # halfway through, the first words are there


def test_vocabulary_fingerprint_ignores_order_and_case() -> None:
    shuffled = dataclasses.replace(
        DEMO_VOCABULARY,
        services=tuple(reversed(DEMO_VOCABULARY.services)),
        customer_names=tuple(name.upper() for name in DEMO_VOCABULARY.customer_names),
    )
    assert shuffled.fingerprint() == DEMO_VOCABULARY.fingerprint()
    grown = dataclasses.replace(DEMO_VOCABULARY, customer_names=(*DEMO_VOCABULARY.customer_names, "Ana Ruiz"))
    assert grown.fingerprint() != DEMO_VOCABULARY.fingerprint()


def test_speech_models_rebuild_when_the_crm_vocabulary_changes(
    tmp_path: Path, speech_model: SpeechModel, voices: dict[str, EspeakSynthesizer]
) -> None:
    # The session model's directory holds the fitted phone-band mapping; reusing it must not refit.
    cache = speech_model.files.language_model.parent
    (mapping_file,) = cache.glob("phone-band-mapping-*.npz")
    fitted_at = mapping_file.stat().st_mtime_ns
    models = SpeechModels(DEMO_VOCABULARY, tmp_path / "speech", mapping_cache=cache)
    first = models.current
    reordered = dataclasses.replace(DEMO_VOCABULARY, services=tuple(reversed(DEMO_VOCABULARY.services)))
    assert not models.refresh(reordered)
    assert models.current is first

    in_call = models.new_recognizer()  # a call that started before the data changed
    changed = dataclasses.replace(
        DEMO_VOCABULARY,
        services=(*DEMO_VOCABULARY.services, "wheel alignment"),
        customer_names=(*DEMO_VOCABULARY.customer_names, "Svetlana Okafor"),
    )
    assert models.refresh(changed)
    assert models.current is not first
    assert models.fingerprint == changed.fingerprint()
    assert mapping_file.stat().st_mtime_ns == fitted_at
    assert (
        models.current.mapping.weights == first.mapping.weights
    ).all()  # read from the cache, not refitted

    voice = voices["f2"]
    booking, name = (
        phone_line("i'd like to book a wheel alignment", voice),
        phone_line("my name is svetlana okafor", voice),
    )
    new_call = models.new_recognizer()
    assert "wheel alignment" in new_call.transcribe(booking)
    assert "svetlana okafor" in new_call.transcribe(name)
    # The call in progress keeps its model, which has no such name.
    assert "svetlana" not in in_call.transcribe(name)

    assert not models.refresh(changed)  # same data again: nothing rebuilt
    assert models.refresh(DEMO_VOCABULARY)
    assert len(list((tmp_path / "speech" / "models").iterdir())) == 2  # current and previous build


def test_a_voice_nothing_was_fitted_or_tuned_on_with_held_out_phrasing(speech_model: SpeechModel) -> None:
    """Issue 5's target: <= 10 % WER on sentences phrased differently from the LM's corpus, at 8 kHz
    mu-law, by a voice the mapping was not fitted on (`_MAPPING_VOICES`) nor the tests tuned on (m3, f2):
    espeak-ng's m8 at 150 words per minute. Measured 7.2 % over two takes (espeak varies a little)."""
    voice = EspeakSynthesizer(variant="m8", rate_wpm=150)
    pairs = []
    for _take in range(2):
        recognizer = speech_model.new_recognizer()
        pairs += [(line, recognizer.transcribe(phone_line(line, voice))) for line in HELD_OUT_LINES]
    rate = word_error_rate(pairs)
    print(f"\nWER of the held-out voice m8@150 on held-out lines: {rate:.1%}")
    assert rate <= 0.10


def test_one_pass_decoding_meets_the_target_and_survives_batched_feeds(
    tmp_path: Path, speech_model: SpeechModel, phone_audio: dict[tuple[str, str], bytes]
) -> None:
    """SWITCHBOARD_STT_PASSES=1: the held-out phrasings by the voice nothing was tuned on stay within the
    10 % target (measured 8.2-9.3 %), and a whole utterance fed at once (a resumed turn, a loaded
    server's batch) is decoded like one fed frame by frame: pocketsphinx 5.1.1 without its second pass
    finds no words when handed 8 or more cepstral frames in one call."""
    one_pass = SpeechModel.build(DEMO_VOCABULARY, tmp_path / "one-pass", passes=1)
    voice = EspeakSynthesizer(variant="m8", rate_wpm=150)
    recognizer = one_pass.new_recognizer()
    pairs = [(line, recognizer.transcribe(phone_line(line, voice))) for line in HELD_OUT_LINES]
    rate = word_error_rate(pairs)
    print(f"\none pass: WER of the held-out voice m8@150 on held-out lines: {rate:.1%}")
    assert rate <= 0.10

    line = "next tuesday at two thirty in the afternoon"
    audio = phone_audio[("f2", line)]
    framewise = one_pass.new_recognizer()
    framewise.start_utterance()
    for offset in range(0, len(audio), FRAME):
        framewise.feed(audio[offset : offset + FRAME])
    batched = one_pass.new_recognizer()
    batched.start_utterance()
    batched.feed(audio)
    assert batched.end_utterance() == framewise.end_utterance() == line


def test_a_rebuild_runs_outside_the_serving_process(
    tmp_path: Path, speech_model: SpeechModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    """In the server's process a rebuild held the GIL in long stretches (a 20 ms event-loop timer ran up
    to 290 ms late): it runs in a child process. A build in this process would fail here."""
    cache = speech_model.files.language_model.parent
    models = SpeechModels(DEMO_VOCABULARY, tmp_path / "speech", mapping_cache=cache)

    def not_here(*args: object, **kwargs: object) -> SpeechModel:
        raise AssertionError("the speech model was rebuilt in the serving process")

    monkeypatch.setattr(SpeechModel, "build", not_here)
    changed = dataclasses.replace(
        DEMO_VOCABULARY, customer_names=(*DEMO_VOCABULARY.customer_names, "Svetlana Okafor")
    )
    assert models.refresh(changed)
    assert "svetlana" in models.new_recognizer().transcribe(
        phone_line("my name is svetlana okafor", EspeakSynthesizer(variant="f2"))
    )


def test_a_failed_rebuild_keeps_the_current_model(tmp_path: Path, speech_model: SpeechModel) -> None:
    cache = speech_model.files.language_model.parent
    models = SpeechModels(DEMO_VOCABULARY, tmp_path / "speech", mapping_cache=cache)
    first = models.current
    changed = dataclasses.replace(DEMO_VOCABULARY, services=(*DEMO_VOCABULARY.services, "detailing"))
    # Where the rebuild will write its files, a file: the child cannot write the new model.
    (tmp_path / "speech" / "models" / f"{changed.fingerprint()[:16]}-{os.getpid()}-2").write_text("")
    with pytest.raises(SttError, match="cannot write the speech model"):
        models.refresh(changed)
    assert models.current is first
    assert models.new_recognizer().transcribe(phone_line("yes", EspeakSynthesizer(variant="f2"))) == "yes"


def _transcribe_economy(recognizer: Recognizer, pcm: bytes) -> str:
    recognizer.start_economy_utterance()
    recognizer.feed(pcm)
    return recognizer.end_utterance()


def test_deep_economy_decoding_is_a_third_decoder_that_still_understands_callers(
    speech_model: SpeechModel, phone_audio: dict[tuple[str, str], bytes]
) -> None:
    """What a speech worker that is behind (requests waiting on it) decodes with: cheaper than economy,
    for more errors (measured here 12.6 % against economy's 9.1 %; bench/stt_wer.py --deep-economy), and
    the call's adaptation moves with it."""
    recognizer = speech_model.new_recognizer()
    depths = [recognizer.economy_depth]
    recognizer.transcribe(phone_audio[("m3", CALLER_LINES[0])])
    adapted = recognizer.cepstral_mean()
    recognizer.start_economy_utterance(deep=True)
    depths.append(recognizer.economy_depth)
    assert recognizer.economy
    assert recognizer.cepstral_mean() == adapted
    recognizer.end_utterance()
    recognizer.start_economy_utterance()
    depths.append(recognizer.economy_depth)
    recognizer.end_utterance()
    recognizer.start_utterance()
    depths.append(recognizer.economy_depth)
    recognizer.end_utterance()
    assert depths == [0, 2, 1, 0]

    pairs = []
    for variant in TEST_VOICES:
        recognizer = speech_model.new_recognizer()
        for line in (*CALLER_LINES, *HELD_OUT_LINES):
            recognizer.start_economy_utterance(deep=True)
            recognizer.feed(phone_audio[(variant, line)])
            pairs.append((line, recognizer.end_utterance()))
    rate = word_error_rate(pairs)
    print(f"\nWER of deep economy decoding on the phone path: {rate:.1%}")
    assert rate <= 0.15


def test_economy_decoding_keeps_the_calls_adaptation_and_understands_callers(
    speech_model: SpeechModel, phone_audio: dict[tuple[str, str], bytes]
) -> None:
    """What a speech worker that is falling behind decodes with (agent/stt_pool.py): the cepstral mean a
    call's audio adapted moves to the economy decoder and back, and its accuracy stays near the full
    settings' (bench/stt_wer.py --economy: 7.3 % against 6.9 % on m3/f2)."""
    recognizer = speech_model.new_recognizer()
    modes = [recognizer.economy]
    recognizer.transcribe(phone_audio[("m3", CALLER_LINES[0])])
    adapted = recognizer.cepstral_mean()
    recognizer.start_economy_utterance()
    modes.append(recognizer.economy)
    assert recognizer.cepstral_mean() == adapted
    recognizer.feed(phone_audio[("m3", CALLER_LINES[1])])
    assert word_error_rate([(CALLER_LINES[1], recognizer.end_utterance())]) <= 0.2
    moved = recognizer.cepstral_mean()
    assert moved != adapted  # the economy decoder went on adapting
    recognizer.start_utterance()
    modes.append(recognizer.economy)
    assert recognizer.cepstral_mean() == moved
    recognizer.end_utterance()
    assert modes == [False, True, False]

    pairs = []
    for variant in TEST_VOICES:
        recognizer = speech_model.new_recognizer()
        for line in (*CALLER_LINES, *HELD_OUT_LINES):
            pairs.append((line, _transcribe_economy(recognizer, phone_audio[(variant, line)])))
    rate = word_error_rate(pairs)
    print(f"\nWER of economy decoding on the phone path: {rate:.1%}")
    assert rate <= 0.10


def test_calls_share_decoders_one_utterance_at_a_time_each_with_its_own_normalisation(
    speech_model: SpeechModel, phone_audio: dict[tuple[str, str], bytes]
) -> None:
    """A decoder is lent for an utterance and given back at its end: five calls taking turns make no new
    decoder, two utterances at once need two; the cepstral mean is the call's, not the decoder's."""
    line, audio = CALLER_LINES[0], phone_audio[("m3", CALLER_LINES[0])]
    speech_model = pickle.loads(pickle.dumps(speech_model))  # a shelf of its own, empty
    warm = speech_model.new_recognizer()
    assert warm.transcribe(audio) == line  # a decoder is on the shelf now
    fresh_mean = speech_model.new_recognizer().cepstral_mean()
    made = speech_model.decoders_made
    calls = [speech_model.new_recognizer() for _ in range(5)]
    assert [call.transcribe(audio) for call in calls] == [line] * 5
    assert speech_model.decoders_made == made
    # Each call went on adapting to its audio; a new call starts from the telephone mean, whatever the
    # decoder it borrows heard last.
    assert calls[0].cepstral_mean() != fresh_mean
    assert speech_model.new_recognizer().cepstral_mean() == fresh_mean

    first, second = calls[:2]
    first.start_utterance()
    second.start_utterance()
    assert speech_model.decoders_made == made + 1
    first.feed(audio)
    second.close()  # a call that ends mid-utterance gives its decoder back
    assert first.end_utterance() == line
    third = speech_model.new_recognizer()
    third.start_utterance()
    other = speech_model.new_recognizer()
    other.start_utterance()
    assert speech_model.decoders_made == made + 1
    third.close()
    other.close()


def test_a_model_goes_to_a_worker_process_without_its_decoders(speech_model: SpeechModel) -> None:
    copy = pickle.loads(pickle.dumps(speech_model))
    assert copy.decoders_made == 0
    recognizer = copy.new_recognizer()
    assert recognizer.cepstral_mean() == speech_model.new_recognizer().cepstral_mean()
    recognizer.start_utterance()
    assert copy.decoders_made == 1
    recognizer.close()


def test_a_borrowed_decoder_carries_nothing_of_the_calls_it_decoded_before(
    speech_model: SpeechModel, phone_audio: dict[tuple[str, str], bytes]
) -> None:
    """A call's transcripts and normalisation are the same whether its utterances borrow a decoder that
    decodes other calls' audio in between or one that only ever hears this call: a call never hears
    another (pocketsphinx's live normalisation keeps more than its mean; each utterance starts over
    from the call's mean, whichever decoder it is on)."""
    clips = list(phone_audio.values())[:10]
    alone = pickle.loads(pickle.dumps(speech_model)).new_recognizer()  # its shelf serves only this call
    shared = pickle.loads(pickle.dumps(speech_model))
    on_shared, stranger = shared.new_recognizer(), shared.new_recognizer()
    for index, clip in enumerate(clips):
        stranger.transcribe(clips[(index * 7 + 3) % len(clips)])  # other audio on the same decoder
        assert on_shared.transcribe(clip) == alone.transcribe(clip), index
        assert on_shared.cepstral_mean() == alone.cepstral_mean(), index
    assert shared.decoders_made == 1  # the stranger and the call took turns on one decoder
    assert alone.cepstral_mean() != speech_model.new_recognizer().cepstral_mean()  # the call adapted

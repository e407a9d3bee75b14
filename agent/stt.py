"""Speech-to-text for phone calls with pocketsphinx and a model built from the business's vocabulary.

A SpeechModel is built once per vocabulary (LM or grammar, lexicon, a tuned copy of the acoustic model
folder) and hands out one Recognizer per call. Engine failures surface as SttError.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal

import pocketsphinx

from agent.lm import DomainModelFiles, Smoothing, write_domain_model
from agent.vocabulary import DomainVocabulary

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    import audioop

__all__ = ["Recognizer", "SearchKind", "SpeechModel", "SttError"]

log = logging.getLogger(__name__)

SearchKind = Literal["ngram", "grammar"]

_PHONE_RATE: Final = 8000
_MODEL_RATE: Final = 16000  # the acoustic model's filterbank reaches 6.8 kHz, so 8 kHz audio is upsampled
_WARM_UP_TEXT: Final = (
    "Hello, thank you for calling. I would like to book an appointment for tomorrow morning at ten, please."
)


class SttError(Exception):
    """The recogniser failed: model files unusable, decoder could not be created or decoding failed."""


def _tuned_acoustic_model(workdir: Path) -> Path:
    """A copy of the wheel's en-US acoustic model whose feat.params uses live cepstral mean normalisation.

    The shipped feat.params forces ``-cmn batch`` (which overrides anything passed in code) and batch CMN
    holds the final result back by 0.4-0.7 s. The large files are symlinked, not copied: they are
    memory-mapped read-only, so every decoder in the process shares the same pages.
    """
    source = Path(pocketsphinx.get_model_path("en-us/en-us"))
    target = workdir / "acoustic-model"
    target.mkdir(parents=True, exist_ok=True)
    for item in source.iterdir():
        link = target / item.name
        if item.name == "feat.params" or link.exists():
            continue
        try:
            os.symlink(item, link)
        except OSError:
            shutil.copyfile(item, link)
    params = (source / "feat.params").read_text(encoding="ascii").replace("-cmn batch", "-cmn live")
    (target / "feat.params").write_text(params, encoding="ascii")
    return target


def telephone_warm_up_clip() -> bytes:
    """Known speech as a caller's line delivers it: espeak-ng, 8 kHz, through G.711 mu-law and back."""
    from agent.tts import EspeakSynthesizer, TtsError

    try:
        pcm = EspeakSynthesizer(variant="m3").synthesize_8k(_WARM_UP_TEXT)
    except TtsError as exc:
        raise SttError(f"cannot synthesise the warm-up clip: {exc}") from exc
    return audioop.ulaw2lin(audioop.lin2ulaw(pcm, 2), 2)


@dataclass(frozen=True, slots=True)
class _DecoderSettings:
    acoustic_model: Path
    dictionary: Path
    search_file: Path
    search: SearchKind

    def new_decoder(self) -> pocketsphinx.Decoder:
        search_option = (
            {"lm": str(self.search_file)} if self.search == "ngram" else {"jsgf": str(self.search_file)}
        )
        try:
            return pocketsphinx.Decoder(
                hmm=str(self.acoustic_model),
                dict=str(self.dictionary),
                samprate=_MODEL_RATE,
                loglevel="FATAL",
                **search_option,
            )
        except (RuntimeError, ValueError) as exc:
            raise SttError(f"cannot create a pocketsphinx decoder: {exc}") from exc


class Recognizer:
    """One call's decoder. Not thread-safe: the call session drives it from one worker thread at a time."""

    def __init__(self, decoder: pocketsphinx.Decoder) -> None:
        self._decoder = decoder
        self._resample_state: tuple[int, tuple[tuple[int, int], ...]] | None = None
        self._in_utterance = False

    def start_utterance(self) -> None:
        if self._in_utterance:
            raise RuntimeError("start_utterance() while an utterance is open")
        self._resample_state = None  # utterances are separate stretches of audio
        try:
            self._decoder.start_utt()
        except RuntimeError as exc:
            raise SttError(f"pocketsphinx could not start an utterance: {exc}") from exc
        self._in_utterance = True

    def feed(self, pcm16_8k: bytes) -> None:
        """Decode more of the utterance: 16-bit little-endian mono at 8 kHz, any length."""
        if not self._in_utterance:
            raise RuntimeError("feed() outside an utterance; call start_utterance() first")
        if not pcm16_8k:
            return
        if len(pcm16_8k) % 2:
            raise ValueError("PCM16 audio must have an even number of bytes")
        wideband, self._resample_state = audioop.ratecv(
            pcm16_8k, 2, 1, _PHONE_RATE, _MODEL_RATE, self._resample_state
        )
        try:
            self._decoder.process_raw(wideband, False, False)
        except RuntimeError as exc:
            raise SttError(f"pocketsphinx failed to decode audio: {exc}") from exc

    def partial(self) -> str:
        """The best hypothesis so far, lower case; "" before any word is recognised."""
        if not self._in_utterance:
            return ""
        return self._hypothesis()

    def end_utterance(self) -> str:
        """Finish the utterance and return its final transcript, lower case."""
        if not self._in_utterance:
            raise RuntimeError("end_utterance() without start_utterance()")
        self._in_utterance = False
        try:
            self._decoder.end_utt()
        except RuntimeError as exc:
            raise SttError(f"pocketsphinx failed to finish the utterance: {exc}") from exc
        return self._hypothesis()

    def transcribe(self, pcm16_8k: bytes) -> str:
        """A whole utterance at once (tests, benchmarks, warm-up)."""
        self.start_utterance()
        self.feed(pcm16_8k)
        return self.end_utterance()

    def _hypothesis(self) -> str:
        hypothesis = self._decoder.hyp()
        return hypothesis.hypstr.lower() if hypothesis is not None and hypothesis.hypstr else ""


class SpeechModel:
    """The recogniser's model for one vocabulary; read-only once built and shared by all calls."""

    def __init__(self, settings: _DecoderSettings, files: DomainModelFiles, warm_up_pcm8k: bytes) -> None:
        self._settings = settings
        self.files = files
        self._warm_up_pcm8k = warm_up_pcm8k

    @property
    def search(self) -> SearchKind:
        return self._settings.search

    @classmethod
    def build(
        cls,
        vocab: DomainVocabulary,
        workdir: Path,
        *,
        search: SearchKind = "ngram",
        smoothing: Smoothing = "kneser_ney",
        warm_up_pcm8k: bytes | None = None,
    ) -> SpeechModel:
        """Write the LM, grammar, lexicon and tuned acoustic model into ``workdir`` and check they load."""
        started = time.perf_counter()
        try:
            files = write_domain_model(
                vocab, workdir, Path(pocketsphinx.get_model_path("en-us/cmudict-en-us.dict")), smoothing
            )
            acoustic_model = _tuned_acoustic_model(workdir)
        except OSError as exc:
            raise SttError(f"cannot write the speech model into {workdir}: {exc}") from exc
        settings = _DecoderSettings(
            acoustic_model=acoustic_model,
            dictionary=files.dictionary,
            search_file=files.language_model if search == "ngram" else files.grammar,
            search=search,
        )
        model = cls(settings, files, warm_up_pcm8k if warm_up_pcm8k is not None else telephone_warm_up_clip())
        model.new_recognizer()  # fail now, not on the first call, if the files do not load
        log.info(
            "speech model (%s) built in %.0f ms: %d sentences, %d words, derived %s, dropped %s",
            search,
            (time.perf_counter() - started) * 1000,
            files.sentence_count,
            len(files.lexicon.pronunciations),
            files.lexicon.derived,
            files.lexicon.dropped,
        )
        return model

    def new_recognizer(self) -> Recognizer:
        """A fresh decoder for one call, already adapted to telephone audio.

        A cold decoder starts cepstral mean normalisation (and noise estimation) from wideband defaults
        and misrecognises most of the caller's first utterance; decoding a short clip of known
        telephone-band speech first moves both to where phone audio sits.
        """
        recognizer = Recognizer(self._settings.new_decoder())
        recognizer.transcribe(self._warm_up_pcm8k)
        return recognizer

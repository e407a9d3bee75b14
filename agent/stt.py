"""Speech-to-text for phone calls with pocketsphinx and a model built from the business's vocabulary.

A SpeechModel is built once per vocabulary (LM or grammar, lexicon, a tuned copy of the acoustic model
folder, the phone-band feature mapping) and hands out one Recognizer per call. Engine failures surface
as SttError.

Why a feature mapping: the only acoustic model available offline was trained on 16 kHz speech and its
filterbank reaches 6.8 kHz. Fed upsampled 8 kHz telephone audio, a third of its filters see nothing and
word error rates on the demo sentences sat at 18-30 %, against ~1 % on the same sentences at 16 kHz.
So instead of upsampling, the recogniser computes log-mel features of the 8 kHz audio itself and maps
them (nine frames of context, one ridge regression) to the cepstra the model's own front end would
have produced from wideband speech, and hands those to pocketsphinx with ``process_cep``. The mapping
is fitted on parallel wideband / telephone renderings of espeak-ng speech (voices other than the ones
the tests use), takes a few seconds, and is cached next to the model.
"""

from __future__ import annotations

import concurrent.futures
import concurrent.futures.process
import functools
import hashlib
import logging
import multiprocessing
import os
import shutil
import tempfile
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal

import numpy as np
import numpy.typing as npt
import pocketsphinx

from agent.lm import DomainModelFiles, Smoothing, write_domain_model
from agent.vocabulary import DomainVocabulary

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    import audioop

__all__ = [
    "Passes",
    "PhoneBandMapping",
    "Recognizer",
    "SearchKind",
    "SpeechModel",
    "SttError",
    "fit_phone_band_mapping",
    "telephone_warm_up_clip",
]

log = logging.getLogger(__name__)

SearchKind = Literal["ngram", "grammar"]
# Decoding passes of the n-gram search. 2 (default): the lexicon-tree search, then a flat-lexicon re-search
# of the whole utterance when it ends. 1: the tree search alone, with wider beams, and a best-path search
# over its lattice. Measured with bench/stt_wer.py (voices m8/m3/f2, phone path, November 2026): one pass
# costs ~25 % less decoding CPU (real-time factor 0.067 -> 0.050) and ends an utterance in 7 ms instead of
# 47 ms (median), for more errors: WER 6.9-8.0 % -> 8.6 % overall, 7.4-9.7 % -> 7.8-9.3 % on the held-out
# phrasings, 2-8 % -> 6-14 % on the phrasings the model was built from. In `bench agent` the gain is
# smaller: speech workers used ~15 % less CPU at 50 calls, and a turn is no sooner at low load, because
# the session finalises the transcript during the hangover (speculation), which hides the second pass.
Passes = Literal[1, 2]
# Economy decoding: what a speech worker that is falling behind starts new utterances with (see
# agent/stt_pool.py): one pass, and the 4 best Gaussians per codebook instead of 8 (evaluating Gaussians is
# ~70 % of decoding). Measured with bench/stt_wer.py --economy (phone path, November 2026): real-time
# factor 0.070 -> 0.043 on voices m3/f2 and 0.080 -> 0.047 on m8/m7/f4, ~40 % less CPU per utterance,
# for WER 6.2 -> 7.0 % (m3/f2) and 12.9 -> 14.8 % (m8/m7/f4). Other cheap settings measured then cost more
# accuracy for less gain: frame downsampling (ds 2) with one pass 0.050 / 9.1 % on m3/f2, and with topn 4
# as well 0.043 / 12.1 %.
# Deep economy: what a worker that is not just busy but behind (requests waiting, agent/stt_pool.py)
# starts new utterances with: narrower beams (beam 1e-50, word beam 1e-40) and frame downsampling (ds 2:
# the codebooks' full Gaussian search every other frame, the previous frame's 4 best re-scored in between;
# that search is most of ptm_mgau_frame_eval, itself ~55 % of a loaded worker's CPU in `perf`).
# Measured with bench/stt_wer.py --deep-economy --as-call, voices m3/f2/m8/m7/f4 (interleaved runs,
# November 2026): real-time factor 0.031-0.034, WER 14.7-15.1 %, against 0.037-0.038 / 14.2-14.6 % for
# the earlier deep settings (the 2 best Gaussians, no downsampling) and 0.042 / 11.1 % for economy;
# downsampling with the 2 best was 0.024 / 16.9 % on m3/f2/m8 (against 0.034 / 10.4-11.0 %), and phone-loop
# lookahead off (pl_window 0) or maxhmmpf 1500 saved nothing. The earlier settings, in
# `bench agent` at 70 calls (November 2026, a slow and noisy host): p95 909-1799 ms without it, 368 ms
# with it (three runs: 368, 344 and 1712, the last from one 20-second stretch), callers' WER 3.0-3.5
# against 3.4 %.
_TOPN: Final = 8
_ECONOMY_TOPN: Final = 4
_DEEP_ECONOMY_TOPN: Final = 4
EconomyDepth = Literal[0, 1, 2]  # full settings, economy, deep economy
_Floats = npt.NDArray[np.float64]

_MODEL_RATE: Final = 16000
_WARM_UP_TEXT: Final = (
    "Hello, thank you for calling. I would like to book an appointment for tomorrow morning at ten, please."
)


class SttError(Exception):
    """The recogniser failed: model files unusable, decoder could not be created or decoding failed."""


# --- Phone-band features -----------------------------------------------------------------------------------

# Frames line up with pocketsphinx's front end: 25.6 ms windows every 10 ms (205 / 80 samples at 8 kHz).
_WINDOW: Final = 205
_SHIFT: Final = 80
_NFFT: Final = 256
_MEL_FILTERS: Final = 18
_CONTEXT: Final = 4  # frames either side; costs 40 ms of look-ahead
_CEPSTRA: Final = 13
_PARTIAL_EVERY: Final = 4  # cepstral frames (10 ms each) between two fresh partials
_CEP_FRAMES_PER_CALL: Final = 4  # cepstral frames per process_cep call (see Recognizer._decode)
_PRE_EMPHASIS: Final = 0.97
_ENERGY_FLOOR: Final = 1.0  # keeps digital silence (G.711 zero) finite after the log


def _mel_filterbank() -> _Floats:
    def to_mel(hz: _Floats) -> _Floats:
        return 2595.0 * np.log10(1.0 + hz / 700.0)

    edges_mel = np.linspace(to_mel(np.array(100.0)), to_mel(np.array(3800.0)), _MEL_FILTERS + 2)
    edges = 700.0 * (10.0 ** (edges_mel / 2595.0) - 1.0)
    bins = np.fft.rfftfreq(_NFFT, 1.0 / 8000)
    low, centre, high = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    rising, falling = (bins - low) / (centre - low), (high - bins) / (high - centre)
    bank: _Floats = np.clip(np.minimum(rising, falling), 0.0, None)
    return bank


_FILTERBANK: Final = _mel_filterbank()
_HAMMING: Final = np.hamming(_WINDOW)


class _LogMelStream:
    """Streaming log-mel frames of 8 kHz PCM16, identical whether audio arrives whole or in pieces."""

    def __init__(self) -> None:
        self._pending = np.zeros(0, dtype=np.float64)  # pre-emphasised samples not yet fully consumed
        self._last_sample = 0.0

    def push(self, pcm16: bytes) -> _Floats:
        samples = np.frombuffer(pcm16, dtype="<i2").astype(np.float64)
        if samples.size:
            emphasised = samples - _PRE_EMPHASIS * np.concatenate(([self._last_sample], samples[:-1]))
            self._last_sample = float(samples[-1])
            self._pending = np.concatenate((self._pending, emphasised))
        count = 1 + (self._pending.size - _WINDOW) // _SHIFT if self._pending.size >= _WINDOW else 0
        if count == 0:
            return np.zeros((0, _MEL_FILTERS))
        index = np.arange(_WINDOW)[None, :] + _SHIFT * np.arange(count)[:, None]
        power = np.abs(np.fft.rfft(self._pending[index] * _HAMMING, _NFFT)) ** 2
        self._pending = self._pending[count * _SHIFT :]
        frames: _Floats = np.log(power @ _FILTERBANK.T + _ENERGY_FLOOR)
        return frames


@dataclass(frozen=True, slots=True)
class PhoneBandMapping:
    """Linear map from stacked 8 kHz log-mel frames to the acoustic model's wideband cepstra."""

    weights: npt.NDArray[np.float32]  # ((2 * context + 1) * mel filters, cepstra)
    bias: npt.NDArray[np.float32]  # (cepstra,)

    def save(self, path: Path) -> None:
        with path.open("wb") as file:
            np.savez(file, weights=self.weights, bias=self.bias)

    @classmethod
    def load(cls, path: Path) -> PhoneBandMapping:
        with np.load(path) as data:
            return cls(weights=data["weights"], bias=data["bias"])


class _CepstrumStream:
    """8 kHz PCM16 in, estimated wideband cepstra out (float32 rows), with ``_CONTEXT`` frames of delay."""

    def __init__(self, mapping: PhoneBandMapping) -> None:
        self._mapping = mapping
        self._log_mel = _LogMelStream()
        self._history = np.zeros((0, _MEL_FILTERS))  # frames still needed as left/right context

    def push(self, pcm16: bytes) -> npt.NDArray[np.float32]:
        return self._map(self._log_mel.push(pcm16), final=False)

    def flush(self) -> npt.NDArray[np.float32]:
        return self._map(np.zeros((0, _MEL_FILTERS)), final=True)

    def _map(self, frames: _Floats, *, final: bool) -> npt.NDArray[np.float32]:
        if frames.size and not self._history.size:
            # The first frame stands in for the left context of the utterance's start.
            frames = np.concatenate((np.repeat(frames[:1], _CONTEXT, axis=0), frames))
        frames = np.concatenate((self._history, frames))
        if final and frames.size:
            frames = np.concatenate((frames, np.repeat(frames[-1:], _CONTEXT, axis=0)))
        ready = frames.shape[0] - 2 * _CONTEXT
        if ready <= 0:
            self._history = np.zeros((0, _MEL_FILTERS)) if final else frames
            return np.zeros((0, _CEPSTRA), dtype=np.float32)
        stacked = np.hstack([frames[offset : offset + ready] for offset in range(2 * _CONTEXT + 1)])
        self._history = np.zeros((0, _MEL_FILTERS)) if final else frames[ready:]
        cepstra: npt.NDArray[np.float32] = (stacked @ self._mapping.weights + self._mapping.bias).astype(
            np.float32
        )
        return cepstra


# Vocabulary-independent speech for fitting the mapping; wide phonetic coverage plus what callers of a
# service business say (numbers, days, months, letters).
_MAPPING_SENTENCES: Final = (
    "Thanks for calling, this is the service desk, how can I help you today?",
    "My car makes a strange noise when I brake on the highway.",
    "Could you check whether the parts arrived on Thursday or Friday?",
    "I was charged twice for the same visit last month.",
    "The shop opens at eight thirty and closes at six in the evening.",
    "Please spell your last name slowly for me.",
    "Zero, one, two, three, four, five, six, seven, eight, nine.",
    "Twelve, twenty, thirty three, forty four, fifty five, sixty six, seventy seven, ninety nine.",
    "Monday, Tuesday, Wednesday, Thursday, Friday, Saturday and Sunday.",
    "January, February, March, April, May, June, July, August, September, October, November, December.",
    "She asked whether the fresh fish should be served with cheese sauce.",
    "A judge measured the vision of each young soldier in the church.",
    "We fixed the heater, the wipers and both rear lights yesterday.",
    "His thick leather jacket was soaked through by the cold rain.",
    "Would you rather wait in the lounge or have us drive you home?",
    "The invoice shows a discount of fifteen percent on labour.",
    "Yes, that sounds good. No, that doesn't work for me. Maybe later.",
    "I'll hold, but please don't keep me waiting for too long.",
    "Our address is forty two Elm Street, just past the bridge.",
    "Is the order ready for pickup, or should I come back tomorrow?",
    "The engine oil looked dark and thick, so we changed the filter too.",
    "Who should I ask about the warranty on these new tires?",
    "Either the battery or the alternator is failing, we think.",
    "Push the button twice, then turn the key all the way.",
    "Hello? Can you hear me? The line is really bad today.",
    "Goodbye, and thank you very much for your help.",
    "A, B, C, D, E, F, G, H, I, J, K, L, M.",
    "N, O, P, Q, R, S, T, U, V, W, X, Y, Z.",
    "Usually the queue is shorter in the early morning or after lunch.",
    "The visual check showed worn pads and a scratched rotor.",
)
# Tests and benchmarks speak with en-us+m3 and en-us+f2; keeping them out of the fit means the WER they
# report is on voices the mapping has never heard.
_MAPPING_VOICES: Final = ("m1", "m2", "m4", "m5", "m6", "m7", "f1", "f3", "f4", "f5", "klatt", "klatt3")
_MAPPING_RATES: Final = (150, 170, 195)
_SENTENCES_PER_VOICE: Final = 10
_RIDGE: Final = 0.01  # times the frame count, on standardised inputs
_MAPPING_RECIPE: Final = hashlib.sha256(
    repr(
        (
            _MAPPING_SENTENCES,
            _MAPPING_VOICES,
            _MAPPING_RATES,
            _SENTENCES_PER_VOICE,
            _RIDGE,
            _MEL_FILTERS,
            _CONTEXT,
        )
    ).encode()
).hexdigest()[:12]


def _wideband_cepstra(acoustic_model: Path, pcm16_16k: bytes, scratch: Path) -> _Floats:
    """The acoustic model's own front-end output for ``pcm16_16k``, read back from -mfclogdir.

    The decoder around it only exists to run the front end: a one-word keyword search with GMM scoring
    on every 50th frame costs almost nothing.
    """
    (scratch / "front-end.dict").write_text("hello HH AH L OW\n", encoding="ascii")
    log_dir = scratch / "cepstra"
    log_dir.mkdir()
    decoder = pocketsphinx.Decoder(
        hmm=str(acoustic_model),
        dict=str(scratch / "front-end.dict"),
        keyphrase="hello",
        ds=50,
        topn=1,
        beam=1e-2,
        pbeam=1e-2,
        maxhmmpf=5,
        samprate=_MODEL_RATE,
        loglevel="FATAL",
        mfclogdir=str(log_dir),
    )
    decoder.start_utt()
    decoder.process_raw(pcm16_16k, False, True)
    decoder.end_utt()
    (logged,) = log_dir.iterdir()
    raw = logged.read_bytes()
    # Sphinx feature files: a big-endian int32 count of floats, then big-endian float32 values.
    count = int(np.frombuffer(raw[:4], dtype=">i4")[0])
    cepstra: _Floats = (
        np.frombuffer(raw[4:], dtype=">f4", count=count).reshape(-1, _CEPSTRA).astype(np.float64)
    )
    return cepstra


def fit_phone_band_mapping(acoustic_model: Path) -> PhoneBandMapping:
    """Fit the mapping on parallel wideband / telephone renderings of the same espeak-ng speech."""
    from agent.tts import EspeakSynthesizer, TelephoneDownsampler

    parts: list[bytes] = []
    native_rate = 0
    for index, variant in enumerate(_MAPPING_VOICES):
        synthesizer = EspeakSynthesizer(variant=variant, rate_wpm=_MAPPING_RATES[index % len(_MAPPING_RATES)])
        native_rate = synthesizer.sample_rate
        gap = bytes(int(0.3 * native_rate) * 2)
        for turn in range(_SENTENCES_PER_VOICE):  # round robin: every sentence, several voices each
            sentence = _MAPPING_SENTENCES[(index * _SENTENCES_PER_VOICE + turn) % len(_MAPPING_SENTENCES)]
            parts.extend((gap, *synthesizer.synthesize(sentence)))
    native = b"".join(parts)
    wideband, _ = audioop.ratecv(native, 2, 1, native_rate, _MODEL_RATE, None)
    telephone = TelephoneDownsampler(native_rate).process(native)
    telephone = audioop.ulaw2lin(audioop.lin2ulaw(telephone, 2), 2)

    with tempfile.TemporaryDirectory(prefix="phone-band-") as scratch:
        targets = _wideband_cepstra(acoustic_model, wideband, Path(scratch))
    inputs = _LogMelStream().push(telephone)
    frames = min(len(inputs), len(targets))
    padded = np.pad(inputs, ((_CONTEXT, _CONTEXT), (0, 0)), mode="edge")
    stacked = np.hstack([padded[offset : offset + frames] for offset in range(2 * _CONTEXT + 1)])
    targets = targets[:frames]

    mean, scale = stacked.mean(axis=0), stacked.std(axis=0) + 1e-6
    standardised = (stacked - mean) / scale
    target_mean = targets.mean(axis=0)
    gram = standardised.T @ standardised + _RIDGE * frames * np.eye(stacked.shape[1])
    solution = np.linalg.solve(gram, standardised.T @ (targets - target_mean))
    weights = solution / scale[:, None]  # fold the standardisation into the map itself
    bias = target_mean - mean @ weights
    return PhoneBandMapping(weights=weights.astype(np.float32), bias=bias.astype(np.float32))


# --- Decoder files ------------------------------------------------------------------------------------------


def _tuned_acoustic_model(workdir: Path) -> Path:
    """A copy of the wheel's en-US acoustic model whose feat.params uses live cepstral mean normalisation.

    The shipped feat.params forces ``-cmn batch`` (which overrides anything passed in code) and batch CMN
    holds the final result back by 0.4-0.7 s. The other files are symlinked, not copied: nothing in them
    changes, and the largest (sendump, the mixture weights) is memory-mapped, so decoders share its pages.
    """
    source = Path(pocketsphinx.get_model_path("en-us/en-us"))
    target = workdir / "acoustic-model"
    target.mkdir(parents=True, exist_ok=True)
    for item in source.iterdir():
        link = target / item.name
        if item.name == "feat.params" or (link.exists() and link.resolve() == item.resolve()):
            continue
        if link.is_symlink():
            link.unlink()  # left by an older installation of the model
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
        pcm = EspeakSynthesizer(variant="m1").synthesize_8k(_WARM_UP_TEXT)
    except TtsError as exc:
        raise SttError(f"cannot synthesise the warm-up clip: {exc}") from exc
    return audioop.ulaw2lin(audioop.lin2ulaw(pcm, 2), 2)


@dataclass(frozen=True, slots=True)
class _DecoderSettings:
    acoustic_model: Path
    dictionary: Path
    search_file: Path
    search: SearchKind
    passes: Passes = 2

    def new_decoder(self, depth: EconomyDepth = 0) -> pocketsphinx.Decoder:
        """A decoder for one call; `depth` 1 or 2: the cheaper settings a falling-behind worker switches
        to (see ``_ECONOMY_TOPN`` and ``_DEEP_ECONOMY_TOPN``)."""
        search: dict[str, object]
        if self.search == "grammar":
            search = {"jsgf": str(self.search_file)}
        elif depth == 2:
            search = {"lm": str(self.search_file), "fwdflat": False, "beam": 1e-50, "wbeam": 1e-40, "ds": 2}
        elif self.passes == 1 or depth == 1:
            search = {"lm": str(self.search_file), "fwdflat": False, "beam": 1e-60, "wbeam": 1e-48}
        else:
            search = {"lm": str(self.search_file)}
        topn = (_TOPN, _ECONOMY_TOPN, _DEEP_ECONOMY_TOPN)[depth]
        try:
            return pocketsphinx.Decoder(
                hmm=str(self.acoustic_model),
                dict=str(self.dictionary),
                samprate=_MODEL_RATE,
                # The estimated cepstra are noisier than real ones; more Gaussians per frame helps.
                topn=topn,
                loglevel="FATAL",
                **search,
            )
        except (RuntimeError, ValueError) as exc:
            raise SttError(f"cannot create a pocketsphinx decoder: {exc}") from exc


# --- Per-call recogniser and the shared model ---------------------------------------------------------------


class _DecoderShelf:
    """A model's decoders that no utterance is using, by depth, lent to recognisers one utterance at a
    time. Thread-safe.

    Making a decoder costs ~25 ms of CPU (it reads the model files), and a call needs up to three of them
    (full, economy, deep economy); the cheaper ones were made when a worker fell behind, just when it could
    least afford it. What a decoder keeps of the audio it heard is its live normalisation, and each
    utterance sets that afresh from the call's cepstral mean (`set_cmn` resets pocketsphinx's running sums
    too), so a call's transcripts are the same on any decoder (tests/agent/test_stt.py). Decoders are
    therefore shared: a server makes as many as utterances are decoded at once, not three per call, and a
    new call costs nothing. At 100 calls in `bench agent` a speech worker's RSS went from 1.2-1.3 GiB to
    ~450 MiB.
    """

    def __init__(self, settings: _DecoderSettings) -> None:
        self._settings = settings
        self._idle: dict[EconomyDepth, list[pocketsphinx.Decoder]] = {0: [], 1: [], 2: []}
        self._lock = threading.Lock()
        self.made = 0

    def take(self, depth: EconomyDepth) -> pocketsphinx.Decoder:
        with self._lock:
            idle = self._idle[depth]
            if idle:
                return idle.pop()
        decoder = self._settings.new_decoder(depth)
        with self._lock:
            self.made += 1
        return decoder

    def give(self, depth: EconomyDepth, decoder: pocketsphinx.Decoder) -> None:
        with self._lock:
            self._idle[depth].append(decoder)

    def idle(self, depth: EconomyDepth) -> int:
        with self._lock:
            return len(self._idle[depth])


class Recognizer:
    """One call's recogniser. The call session drives it from one worker thread at a time; `close` may come
    from another while an operation runs (a call that ends mid-utterance), and waits for it.

    Each utterance borrows a decoder from the model's shelf (`_DecoderShelf`) and gives it back when it
    ends; the call's cepstral mean (its telephone line's normalisation) goes into the decoder at the start
    and comes back out at the end, so an utterance on any decoder, at any depth, starts from what the
    call's audio has adapted. `start_economy_utterance` decodes an utterance on cheaper settings.
    """

    def __init__(
        self,
        shelf: _DecoderShelf,
        mapping: PhoneBandMapping,
        cepstral_mean: str | None,
        *,
        economy: bool = True,
    ) -> None:
        """`cepstral_mean`: where the call's normalisation starts (None: the decoder's default)."""
        self._shelf = shelf
        self._mapping = mapping
        self._cmn = cepstral_mean
        self._can_economise = economy
        self._decoder: pocketsphinx.Decoder | None = None  # the open utterance's
        self._busy = threading.Lock()  # held by every operation that touches the decoder
        self._depth: EconomyDepth = 0  # of the open (or last) utterance
        self._cepstra = _CepstrumStream(mapping)
        self._frames = 0  # cepstral frames decoded in this utterance
        self._partial = ("", -_PARTIAL_EVERY)  # the last partial and the frame count it was taken at

    @property
    def economy(self) -> bool:
        """Whether the open (or last) utterance is decoded on cheaper settings."""
        return self._depth > 0

    @property
    def economy_depth(self) -> EconomyDepth:
        """0: the open (or last) utterance is decoded on the full settings, 1: economy, 2: deep economy."""
        return self._depth

    def start_economy_utterance(self, *, deep: bool = False) -> None:
        """As `start_utterance`, on the economy settings (~40 % less CPU, more errors; see the notes on
        ``_ECONOMY_TOPN``), or with `deep` cheaper still (``_DEEP_ECONOMY_TOPN``). Without economy
        decoders, the same as `start_utterance`."""
        with self._busy:
            self._start(2 if deep else 1)

    def start_utterance(self) -> None:
        with self._busy:
            self._start(0)

    def _start(self, depth: EconomyDepth) -> None:
        if self._decoder is not None:
            raise RuntimeError("start_utterance() while an utterance is open")
        if not self._can_economise:
            depth = 0
        try:
            decoder = self._shelf.take(depth)
        except SttError:
            if not depth:
                raise
            log.exception("no economy decoder; decoding on the full settings")
            self._can_economise = False
            depth = 0
            decoder = self._shelf.take(depth)
        try:
            if self._cmn is not None:
                decoder.set_cmn(self._cmn)
            decoder.start_utt()
        except (RuntimeError, ValueError) as exc:
            raise SttError(f"pocketsphinx could not start an utterance: {exc}") from exc
        self._decoder, self._depth = decoder, depth
        self._cepstra = _CepstrumStream(self._mapping)  # utterances are separate stretches of audio
        self._frames = 0
        self._partial = ("", -_PARTIAL_EVERY)

    def feed(self, pcm16_8k: bytes) -> None:
        """Decode more of the utterance: 16-bit little-endian mono at 8 kHz, any length."""
        if self._decoder is None:
            raise RuntimeError("feed() outside an utterance; call start_utterance() first")
        if len(pcm16_8k) % 2:
            raise ValueError("PCM16 audio must have an even number of bytes")
        with self._busy:
            self._decode(self._cepstra.push(pcm16_8k))

    def partial(self) -> str:
        """The best hypothesis so far, lower case; "" before any word is recognised.

        Taken afresh once per 40 ms of decoded audio at most (a backtrace per 20 ms feed was ~5 % of a
        loaded server's speech CPU); in between, the last one is returned.
        """
        with self._busy:
            if self._decoder is None:
                return ""
            text, taken_at = self._partial
            if self._frames - taken_at >= _PARTIAL_EVERY:
                text = self._hypothesis()
                self._partial = (text, self._frames)
            return text

    def end_utterance(self) -> str:
        """Finish the utterance and return its final transcript, lower case."""
        with self._busy:
            return self._end()

    def _end(self) -> str:
        decoder = self._decoder
        if decoder is None:
            raise RuntimeError("end_utterance() without start_utterance()")
        try:
            self._decode(self._cepstra.flush())
            decoder.end_utt()
            text = self._hypothesis()
            self._cmn = str(decoder.get_cmn(False))
        except RuntimeError as exc:
            raise SttError(f"pocketsphinx failed to finish the utterance: {exc}") from exc
        finally:
            self._decoder = None  # a decoder that failed is not given back
        self._shelf.give(self._depth, decoder)
        return text

    def close(self) -> None:
        """The call is over: an utterance still open is dropped and its decoder given back."""
        with self._busy:
            self._close()

    def _close(self) -> None:
        decoder, self._decoder = self._decoder, None
        if decoder is None:
            return
        try:
            decoder.end_utt()
        except RuntimeError:
            return
        self._shelf.give(self._depth, decoder)

    def transcribe(self, pcm16_8k: bytes) -> str:
        """A whole utterance at once (warm-up, tests, benchmarks)."""
        self.start_utterance()
        self.feed(pcm16_8k)
        return self.end_utterance()

    def cepstral_mean(self) -> str:
        """The call's cepstral mean (comma-separated), after the audio it has heard."""
        if self._decoder is None and self._cmn is not None:
            return self._cmn
        decoder = self._decoder if self._decoder is not None else self._shelf.take(0)
        try:
            return str(decoder.get_cmn(False))
        finally:
            if decoder is not self._decoder:
                self._shelf.give(0, decoder)

    def _decode(self, cepstra: npt.NDArray[np.float32]) -> None:
        if not len(cepstra):
            return
        assert self._decoder is not None
        self._frames += len(cepstra)
        data = cepstra.astype("<f4")
        try:
            # A few frames per call: pocketsphinx 5.1.1 without the second pass, given 8 or more cepstral
            # frames at once (a loaded server's batched feed, a resumed turn), finds no words at all.
            for start in range(0, len(data), _CEP_FRAMES_PER_CALL):
                self._decoder.process_cep(data[start : start + _CEP_FRAMES_PER_CALL].tobytes(), False, False)
        except RuntimeError as exc:
            raise SttError(f"pocketsphinx failed to decode audio: {exc}") from exc

    def _hypothesis(self) -> str:
        assert self._decoder is not None
        hypothesis = self._decoder.hyp()
        return hypothesis.hypstr.lower() if hypothesis is not None and hypothesis.hypstr else ""


class SpeechModel:
    """The recogniser's model for one vocabulary; read-only once built and shared by all calls."""

    def __init__(
        self,
        settings: _DecoderSettings,
        files: DomainModelFiles,
        mapping: PhoneBandMapping,
        telephone_cmn: str,
        shelf: _DecoderShelf | None = None,
    ) -> None:
        """`shelf`: decoders already made for these settings (the build's probe); None for an empty one."""
        self._settings = settings
        self.files = files
        self.mapping = mapping
        self._telephone_cmn = telephone_cmn
        self._shelf = shelf if shelf is not None else _DecoderShelf(settings)

    def __getstate__(self) -> dict[str, Any]:
        """Pickled (for a worker process) without its idle decoders: each process makes its own."""
        state = self.__dict__.copy()
        del state["_shelf"]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._shelf = _DecoderShelf(self._settings)

    @property
    def decoders_made(self) -> int:
        """Decoders this model has made in this process (the shelf lends them out again)."""
        return self._shelf.made

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
        passes: Passes = 2,
        smoothing: Smoothing = "kneser_ney",
        mapping_cache: Path | None = None,
        warm_up_pcm8k: bytes | None = None,
    ) -> SpeechModel:
        """Write the LM, grammar, lexicon, tuned acoustic model and phone-band mapping into ``workdir``.

        The mapping does not depend on the vocabulary; pass the same ``mapping_cache`` directory to
        rebuilds (default: ``workdir``) and it is fitted only once.
        """
        started = time.perf_counter()
        try:
            files = write_domain_model(
                vocab, workdir, Path(pocketsphinx.get_model_path("en-us/cmudict-en-us.dict")), smoothing
            )
            acoustic_model = _tuned_acoustic_model(workdir)
            mapping = _cached_mapping(acoustic_model, mapping_cache or workdir)
        except OSError as exc:
            raise SttError(f"cannot write the speech model into {workdir}: {exc}") from exc
        except RuntimeError as exc:
            raise SttError(f"pocketsphinx failed while fitting the phone-band mapping: {exc}") from exc
        settings = _DecoderSettings(
            acoustic_model=acoustic_model,
            dictionary=files.dictionary,
            search_file=files.language_model if search == "ngram" else files.grammar,
            search=search,
            passes=passes,
        )
        # Decoding the warm-up clip here also proves the files load, before the first call needs them.
        shelf = _DecoderShelf(settings)
        probe = Recognizer(shelf, mapping, None, economy=False)
        probe.transcribe(warm_up_pcm8k if warm_up_pcm8k is not None else telephone_warm_up_clip())
        model = cls(settings, files, mapping, probe.cepstral_mean(), shelf)  # with the probe's decoder on it
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
        """A recogniser for one call, already adapted to telephone audio; its utterances borrow decoders
        from the model's shelf (`_DecoderShelf`), so making one costs next to nothing.

        A cold decoder starts cepstral mean normalisation from defaults far from where phone audio sits:
        first utterances of fresh decoders had 17 % WER cold against 6 % warmed up. Decoding the
        warm-up clip for every call costs ~0.5 s of CPU, so the clip is decoded once at build time and
        each call starts from the cepstral mean that left behind (same 6 %).
        """
        return Recognizer(self._shelf, self.mapping, self._telephone_cmn)


class SpeechModels:
    """The speech model for the business's current vocabulary, rebuilt when that vocabulary changes.

    A `SpeechEngine`: ``new_recognizer()`` hands out recognisers of the current model. ``refresh()``
    compares the vocabulary's fingerprint with the current model's and rebuilds only on a change. The
    rebuild runs in a child process (a build takes 1-3 s): in a thread of the server it held the GIL in
    long stretches, and a 20 ms timer on the event loop ran up to 290 ms late during it (median 9 ms),
    which is dead air on every call; with the child, at most 14 ms (median 2 ms), three rebuilds each.
    The first model is built in the calling process (start-up, before any call). The new model replaces
    the old one in a single assignment, so calls that start afterwards get the new model while calls in
    progress keep the recogniser (and decoder) they have. The phone-band mapping does not depend on the
    vocabulary and is read from the cache in ``workdir``, never refitted by a rebuild.

    Each build gets a directory of its own under ``workdir/models``; the current and the previous one
    are kept (a recogniser pool may still create decoders from the previous model until it is told
    about the new one), older ones are removed.
    """

    _KEEP: Final = 2

    def __init__(
        self,
        vocab: DomainVocabulary,
        workdir: Path,
        *,
        search: SearchKind = "ngram",
        passes: Passes = 2,
        mapping_cache: Path | None = None,
    ) -> None:
        self._workdir = workdir
        self._search: SearchKind = search
        self._passes: Passes = passes
        self._mapping_cache = mapping_cache or workdir
        self._lock = threading.Lock()  # one build at a time
        self._builds = 0
        self._directories: list[Path] = []
        fingerprint = vocab.fingerprint()
        self._current: tuple[str, SpeechModel] = (fingerprint, self._build(vocab, fingerprint))

    @property
    def current(self) -> SpeechModel:
        return self._current[1]

    @property
    def fingerprint(self) -> str:
        """The fingerprint of the vocabulary the current model was built from."""
        return self._current[0]

    def new_recognizer(self) -> Recognizer:
        return self._current[1].new_recognizer()

    def refresh(self, vocab: DomainVocabulary) -> bool:
        """Rebuild if ``vocab`` differs from the current model's; True if the model was replaced.

        Raises SttError if the build fails; the current model then stays in service.
        """
        fingerprint = vocab.fingerprint()
        if fingerprint == self._current[0]:
            return False
        with self._lock:
            if fingerprint == self._current[0]:  # another thread built it while this one waited
                return False
            model = self._build(vocab, fingerprint, in_child=True)
            self._current = (fingerprint, model)
            self._remove_old_builds()
        log.info("speech model rebuilt for vocabulary %s", fingerprint[:12])
        return True

    def _build(self, vocab: DomainVocabulary, fingerprint: str, *, in_child: bool = False) -> SpeechModel:
        self._builds += 1
        directory = self._workdir / "models" / f"{fingerprint[:16]}-{os.getpid()}-{self._builds}"
        if directory.exists():
            shutil.rmtree(directory, ignore_errors=True)  # left by an earlier process with the same pid
        build = functools.partial(
            _build_model, search=self._search, passes=self._passes, mapping_cache=self._mapping_cache
        )
        try:
            model = _in_child_process(build, vocab, directory) if in_child else build(vocab, directory)
        except SttError:
            shutil.rmtree(directory, ignore_errors=True)
            raise
        self._directories.append(directory)
        return model

    def _remove_old_builds(self) -> None:
        while len(self._directories) > self._KEEP:
            shutil.rmtree(self._directories.pop(0), ignore_errors=True)


def _build_model(
    vocab: DomainVocabulary, directory: Path, *, search: SearchKind, passes: Passes, mapping_cache: Path
) -> SpeechModel:
    """`SpeechModel.build`, looked up where it runs (a child process imports this module afresh)."""
    return SpeechModel.build(vocab, directory, search=search, passes=passes, mapping_cache=mapping_cache)


def _in_child_process(
    build: Callable[[DomainVocabulary, Path], SpeechModel], vocab: DomainVocabulary, directory: Path
) -> SpeechModel:
    """`build(vocab, directory)` in a fresh child process (spawned: nothing of this one's threads or
    locks is inherited); the model comes back pickled (paths, the mapping's arrays, a cepstral mean)."""
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(max_workers=1, mp_context=context) as child:
        try:
            return child.submit(build, vocab, directory).result()
        except concurrent.futures.process.BrokenProcessPool as exc:
            raise SttError(f"the process building the speech model died: {exc}") from exc


def _cached_mapping(acoustic_model: Path, cache_dir: Path) -> PhoneBandMapping:
    path = cache_dir / f"phone-band-mapping-{_MAPPING_RECIPE}.npz"
    if path.exists():
        try:
            return PhoneBandMapping.load(path)
        except (OSError, ValueError, KeyError) as exc:
            log.warning("ignoring unreadable phone-band mapping %s: %s", path, exc)
    started = time.perf_counter()
    mapping = fit_phone_band_mapping(acoustic_model)
    cache_dir.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".tmp")
    mapping.save(partial)
    partial.replace(path)  # atomic: concurrent builds never read half a file
    log.info("fitted the phone-band mapping in %.0f ms", (time.perf_counter() - started) * 1000)
    return mapping

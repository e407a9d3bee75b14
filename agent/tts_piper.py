"""Text-to-speech with piper (VITS voices run by onnxruntime): the production-profile `Synthesizer`.

A piper voice is two files: ``<name>.onnx`` (the network) and ``<name>.onnx.json`` beside it (sample rate,
espeak-ng voice, phoneme -> id map, speakers). Everything that can be wrong with them is checked when the
synthesiser is built, so a bad deployment fails at start-up with the path in the message, not in the
middle of a call. piper 1.8.0 phonemises with its own statically linked espeak-ng and data, independent
of the libespeak-ng that `agent.tts` drives.

Threads: one `PiperSynthesizer` serves every call. onnxruntime documents ``InferenceSession::Run`` as
thread-safe (several threads may run one session at once), and piper serialises its process-wide espeak-ng
phonemiser behind its own lock, so no lock is needed here; the voice object holds no other state that
synthesis changes (phonemisers piper creates lazily for other languages are created by the warm-up run).
"""

from __future__ import annotations

import json
import math
from collections.abc import Generator, Mapping
from pathlib import Path
from typing import Any, Final

import onnxruntime  # type: ignore[import-untyped,unused-ignore]
from piper import PiperConfig, PiperVoice, SynthesisConfig

from agent.tts import TELEPHONE_RATE, TtsError, speakable_text, to_telephone

__all__ = ["PiperSynthesizer"]

# The inputs piper 1.8.0 feeds every voice (piper/voice.py phoneme_ids_to_audio); "sid" only for
# multi-speaker voices.
_MODEL_INPUTS: Final = ("input", "input_lengths", "scales")
_SPEAKER_INPUT: Final = "sid"
# piper.const: begin / end of sentence and the pad id placed after every phoneme.
_REQUIRED_PHONEMES: Final = ("^", "$", "_")
# Short enough to cost one small inference, long enough to touch phonemiser, id map and model.
_WARM_UP_TEXT: Final = "Hello."


def _config_path(voice_path: Path) -> Path:
    return voice_path.with_name(voice_path.name + ".json")


def _read_voice_config(voice_path: Path) -> PiperConfig:
    """Parse and check ``<voice>.onnx.json``; every problem becomes a TtsError naming the file."""
    if not voice_path.is_file():
        raise TtsError(f"piper voice {voice_path} does not exist")
    config_path = _config_path(voice_path)
    if not config_path.is_file():
        raise TtsError(
            f"piper voice {voice_path} has no {config_path.name} beside it (piper reads its config there)"
        )
    try:
        raw: Any = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise TtsError(f"piper voice config {config_path} is unreadable: {exc}") from exc
    if not isinstance(raw, dict):
        raise TtsError(f"piper voice config {config_path} is not a JSON object")

    audio = raw.get("audio")
    sample_rate = audio.get("sample_rate") if isinstance(audio, dict) else None
    if not isinstance(sample_rate, int) or isinstance(sample_rate, bool) or sample_rate < TELEPHONE_RATE:
        raise TtsError(
            f"piper voice config {config_path} needs audio.sample_rate, an integer of at least "
            f"{TELEPHONE_RATE} Hz (got {sample_rate!r})"
        )
    id_map = raw.get("phoneme_id_map")
    if not isinstance(id_map, Mapping) or not id_map:
        raise TtsError(f"piper voice config {config_path} has no phoneme_id_map")
    missing = [p for p in _REQUIRED_PHONEMES if not _is_id_list(id_map.get(p))]
    if missing:
        raise TtsError(
            f"piper voice config {config_path}: phoneme_id_map lacks ids for {' '.join(missing)} "
            "(sentence start, end and pad)"
        )
    num_speakers = raw.get("num_speakers")
    if not isinstance(num_speakers, int) or isinstance(num_speakers, bool) or num_speakers < 1:
        raise TtsError(f"piper voice config {config_path} needs num_speakers >= 1 (got {num_speakers!r})")
    try:
        return PiperConfig.from_dict(raw)
    except KeyError as exc:
        raise TtsError(f"piper voice config {config_path} lacks {exc}") from exc
    except (TypeError, ValueError) as exc:
        raise TtsError(f"piper voice config {config_path} is invalid: {exc}") from exc


def _is_id_list(value: object) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(i, int) for i in value)


def _load_session(voice_path: Path, config: PiperConfig, use_cuda: bool) -> Any:
    """An onnxruntime session for the voice, checked to take the inputs piper will feed it."""
    providers: list[str | tuple[str, dict[str, str]]] = ["CPUExecutionProvider"]
    if use_cuda:
        available = onnxruntime.get_available_providers()
        if "CUDAExecutionProvider" not in available:
            raise TtsError(
                f"piper voice {voice_path}: use_cuda was asked for but this onnxruntime has no CUDA provider "
                f"(available: {', '.join(available)}; install onnxruntime-gpu)"
            )
        # piper's own choice: the heuristic cuDNN search avoids a slow exhaustive search on first run.
        providers = [("CUDAExecutionProvider", {"cudnn_conv_algo_search": "HEURISTIC"})]
    try:
        session = onnxruntime.InferenceSession(
            str(voice_path), sess_options=onnxruntime.SessionOptions(), providers=providers
        )
    except Exception as exc:  # onnxruntime's errors (InvalidProtobuf, Fail, ...) derive from Exception only
        raise TtsError(f"piper voice {voice_path} is not a model onnxruntime can load: {exc}") from exc
    inputs = {node.name for node in session.get_inputs()}
    wanted = set(_MODEL_INPUTS) | ({_SPEAKER_INPUT} if config.num_speakers > 1 else set())
    if not wanted <= inputs:
        missing = ", ".join(sorted(wanted - inputs))
        raise TtsError(
            f"piper voice {voice_path} does not take piper's inputs: missing {missing} "
            f"(model inputs: {', '.join(sorted(inputs))})"
        )
    if not session.get_outputs():
        raise TtsError(f"piper voice {voice_path} has no output")
    return session


class PiperSynthesizer:
    """One piper voice shared by all calls; text in, 8 kHz PCM16 out, sentence by sentence."""

    def __init__(
        self,
        voice_path: Path,
        *,
        speaker_id: int | None = None,
        length_scale: float | None = None,
        use_cuda: bool = False,
    ) -> None:
        if length_scale is not None and not (math.isfinite(length_scale) and 0 < length_scale <= 10):
            raise ValueError(f"length_scale must be within (0, 10], got {length_scale}")
        self.voice_path = voice_path
        config = _read_voice_config(voice_path)
        if speaker_id is not None and not 0 <= speaker_id < config.num_speakers:
            raise TtsError(
                f"piper voice {voice_path} has {config.num_speakers} speaker(s) (ids 0.."
                f"{config.num_speakers - 1}); speaker_id {speaker_id} is out of range"
            )
        session = _load_session(voice_path, config, use_cuda)
        self.sample_rate: int = config.sample_rate
        self.num_speakers: int = config.num_speakers
        self._voice = PiperVoice(session=session, config=config)
        self._syn_config = SynthesisConfig(speaker_id=speaker_id, length_scale=length_scale)
        # One real synthesis now: an espeak voice piper's data lacks, or a model that cannot run on
        # phoneme ids, fails here; and onnxruntime's first, slow run is not paid by the first caller.
        try:
            for _ in self._voice.synthesize(_WARM_UP_TEXT, self._syn_config):
                pass
        except Exception as exc:
            raise TtsError(f"piper voice {voice_path} cannot synthesise speech: {exc}") from exc

    def synthesize(self, text: str) -> Generator[bytes, None, None]:
        """PCM16 mono at ``sample_rate``, one chunk per sentence as piper produces them."""
        spoken = speakable_text(text)
        if not spoken:
            return
        chunks = iter(self._voice.synthesize(spoken, self._syn_config))
        while True:
            # Only piper's own work is inside the try: an exception thrown into this generator at the
            # yield (the caller closing it on barge-in) must pass through untouched.
            try:
                chunk = next(chunks, None)
            except Exception as exc:  # piper and onnxruntime raise plain RuntimeError, KeyError, Fail, ...
                raise TtsError(f"piper voice {self.voice_path} failed: {exc}") from exc
            if chunk is None:
                return
            yield chunk.audio_int16_bytes

    def stream_8k(self, text: str) -> Generator[bytes, None, None]:
        """8 kHz PCM16, one chunk per sentence, each resampled as soon as piper hands it over.

        A generator, so a reply cut short by barge-in can be closed and piper stops before the next sentence.
        """
        yield from to_telephone(self.synthesize(text), self.sample_rate)

    def synthesize_8k(self, text: str) -> bytes:
        """The whole text as 8 kHz PCM16."""
        return b"".join(self.stream_8k(text))

"""A tiny random-weight Whisper model in CTranslate2 format, built offline in well under a second.

It has Whisper's real architecture (two convolutions over 80 mel bins, 1500 encoder positions, 448 decoder
positions, cross-attention) and a tokenizer with every special token faster-whisper and CTranslate2 look
up, so loading and decoding run exactly the code paths a real model runs; only the words are meaningless.
The text vocabulary is printable ASCII characters (plus ``<unk>`` for anything else), so whatever the
random weights say is at least readable in a test failure.

Layout of the folder, as CTranslate2's converter writes it: ``model.bin``, ``config.json``,
``vocabulary.json``; as faster-whisper reads it besides: ``tokenizer.json``, ``preprocessor_config.json``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Final

import numpy as np
import numpy.typing as npt
import tokenizers
from ctranslate2.specs import whisper_spec  # type: ignore[import-untyped]
from tokenizers import decoders, models, pre_tokenizers

_WIDTH: Final = 64
_HEADS: Final = 2
_FFN: Final = 128
_LAYERS: Final = 1
_ENCODER_POSITIONS: Final = 1500  # 30 s of 10 ms mel frames, halved by conv2's stride
_DECODER_POSITIONS: Final = 448
# Larger than a trained model's scale on the paths from audio to the decoder, so the random model's
# output actually depends on the audio (with unit gains it says the same thing for every input, and a
# test comparing two decoding paths could not tell audio apart).
_AUDIO_GAIN: Final = 10.0

SPECIAL_TOKENS: Final = (
    "<|endoftext|>",
    "<|startoftranscript|>",
    "<|en|>",
    "<|translate|>",
    "<|transcribe|>",
    "<|startoflm|>",
    "<|startofprev|>",
    "<|nospeech|>",
    "<|notimestamps|>",
)
_TIMESTAMPS: Final = tuple(f"<|{index * 0.02:.2f}|>" for index in range(1501))

_Array = npt.NDArray[np.float32]
LayerSpec = Any  # ctranslate2.specs.model_spec.LayerSpec; ctranslate2 ships no type information


def _byte_level_alphabet() -> dict[int, str]:
    """GPT-2's byte-to-character table, which tokenizers' ByteLevel pre-tokenizer and decoder use."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    table = {byte: chr(byte) for byte in printable}
    shifted = 0
    for byte in range(256):
        if byte not in table:
            table[byte] = chr(256 + shifted)
            shifted += 1
    return table


def _vocabulary() -> list[str]:
    alphabet = _byte_level_alphabet()
    return ["<unk>", *(alphabet[byte] for byte in range(0x20, 0x7F)), *SPECIAL_TOKENS, *_TIMESTAMPS]


def _tokenizer(vocabulary: list[str]) -> tokenizers.Tokenizer:
    ids = {token: index for index, token in enumerate(vocabulary)}
    tokenizer = tokenizers.Tokenizer(models.BPE(vocab=ids, merges=[], unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.add_special_tokens(
        [tokenizers.AddedToken(token, special=True) for token in (*SPECIAL_TOKENS, *_TIMESTAMPS)]
    )
    return tokenizer


def build_tiny_whisper(directory: Path, *, seed: int = 0, mel_bins: int = 80) -> Path:
    """Write the model into ``directory`` (created) and return it.

    ``mel_bins`` other than 80 gives a model whose first convolution disagrees with the 80-bin front end
    that ``preprocessor_config.json`` describes: it loads, and fails on the first decode.
    """
    rng = np.random.default_rng(seed)
    vocabulary = _vocabulary()

    def weight(*shape: int, gain: float = 1.0) -> _Array:
        fan_in = int(np.prod(shape[1:]))
        values: _Array = (rng.standard_normal(shape) * (gain / fan_in**0.5)).astype(np.float32)
        return values

    def zeros(size: int) -> _Array:
        return np.zeros(size, dtype=np.float32)

    def layer_norm(spec: LayerSpec) -> None:
        spec.gamma = np.ones(_WIDTH, dtype=np.float32)
        spec.beta = zeros(_WIDTH)

    def linear(spec: LayerSpec, rows: int, columns: int, gain: float = 1.0) -> None:
        spec.weight = weight(rows, columns, gain=gain)
        spec.bias = zeros(rows)

    spec = whisper_spec.WhisperSpec(_LAYERS, _HEADS, _LAYERS, _HEADS)
    encoder = spec.encoder
    encoder.conv1.weight = weight(_WIDTH, mel_bins, 3, gain=_AUDIO_GAIN)
    encoder.conv1.bias = zeros(_WIDTH)
    encoder.conv2.weight = weight(_WIDTH, _WIDTH, 3)
    encoder.conv2.bias = zeros(_WIDTH)
    positions = np.arange(_ENCODER_POSITIONS)[:, None]
    frequencies = np.exp(-np.log(10000.0) * np.arange(_WIDTH // 2) / (_WIDTH // 2 - 1))[None, :]
    encoder.position_encodings.encodings = np.concatenate(
        (np.sin(positions * frequencies), np.cos(positions * frequencies)), axis=1
    ).astype(np.float32)
    layer_norm(encoder.layer_norm)
    for layer in encoder.layer:
        layer_norm(layer.self_attention.layer_norm)
        linear(layer.self_attention.linear[0], 3 * _WIDTH, _WIDTH)  # fused query, key, value
        linear(layer.self_attention.linear[1], _WIDTH, _WIDTH)
        layer_norm(layer.ffn.layer_norm)
        linear(layer.ffn.linear_0, _FFN, _WIDTH)
        linear(layer.ffn.linear_1, _WIDTH, _FFN)

    decoder = spec.decoder
    decoder.embeddings.weight = weight(len(vocabulary), _WIDTH, gain=np.sqrt(_WIDTH))
    decoder.position_encodings.encodings = weight(_DECODER_POSITIONS, _WIDTH, gain=0.1 * np.sqrt(_WIDTH))
    layer_norm(decoder.layer_norm)
    decoder.projection.weight = weight(len(vocabulary), _WIDTH)  # untied: tied random weights echo the prompt
    # A trained model never follows <|notimestamps|> with a timestamp; CTranslate2 does not enforce that,
    # and a random model emitting them would split each window into many segments and decodes.
    decoder.projection.bias = np.where(
        np.arange(len(vocabulary)) >= len(vocabulary) - len(_TIMESTAMPS), -1e4, 0.0
    ).astype(np.float32)
    for layer in decoder.layer:
        layer_norm(layer.self_attention.layer_norm)
        linear(layer.self_attention.linear[0], 3 * _WIDTH, _WIDTH)
        linear(layer.self_attention.linear[1], _WIDTH, _WIDTH)
        layer_norm(layer.attention.layer_norm)
        linear(layer.attention.linear[0], _WIDTH, _WIDTH, gain=_AUDIO_GAIN)  # query
        linear(layer.attention.linear[1], 2 * _WIDTH, _WIDTH, gain=_AUDIO_GAIN)  # fused key, value
        linear(layer.attention.linear[2], _WIDTH, _WIDTH)
        layer_norm(layer.ffn.layer_norm)
        linear(layer.ffn.linear_0, _FFN, _WIDTH)
        linear(layer.ffn.linear_1, _WIDTH, _FFN)

    spec.register_vocabulary(vocabulary)
    ids = {token: index for index, token in enumerate(vocabulary)}
    spec.config.suppress_ids = []
    spec.config.suppress_ids_begin = [ids["<|endoftext|>"]]
    spec.config.lang_ids = []  # English-only: CTranslate2 calls a model multilingual from 51865 tokens up
    spec.config.alignment_heads = [(0, head) for head in range(_HEADS)]
    spec.validate()
    spec.optimize(quantization="float32")

    directory.mkdir(parents=True, exist_ok=True)
    spec.save(str(directory))
    _tokenizer(vocabulary).save(str(directory / "tokenizer.json"))
    preprocessor = {
        "feature_size": 80,
        "sampling_rate": 16000,
        "hop_length": 160,
        "chunk_length": 30,
        "n_fft": 400,
    }
    (directory / "preprocessor_config.json").write_text(json.dumps(preprocessor), encoding="utf-8")
    return directory

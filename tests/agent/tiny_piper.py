"""A tiny piper voice built offline: a real ONNX graph with piper's model signature, and its .onnx.json.

A real piper voice is a 60 MB VITS network that has to be downloaded. This graph takes the same inputs
piper 1.8.0 feeds a voice (``input`` int64 [1, T] phoneme ids, ``input_lengths`` int64 [1], ``scales``
float32 [noise, length, noise_w], and ``sid`` int64 [1] when the voice has several speakers) and returns
float32 audio [1, 1, N], like VITS. Its output is predictable, so tests can check what reaches the caller:

- every phoneme id lasts ``HOP_LENGTH * length_scale`` samples (VITS's frames are ``hop_length`` samples),
  so N = floor(T * HOP_LENGTH * length_scale);
- the waveform is a sine at ``TONE_HZ + SPEAKER_STEP_HZ * sid`` whose amplitude follows the phoneme ids,
  so the pitch tells which speaker ran and survives resampling only if the rates are right.

``max_phoneme_ids`` makes the graph fail at run time (an out-of-range Gather in onnxruntime) for longer
inputs, the way a real model breaks on input it cannot handle, after loading fine.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Final

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from piper.phoneme_ids import DEFAULT_PHONEME_ID_MAP

HOP_LENGTH: Final = 256
TONE_HZ: Final = 300.0
SPEAKER_STEP_HZ: Final = 100.0
DEFAULT_SAMPLE_RATE: Final = 22050


def _const(name: str, value: Any, dtype: type) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(value, dtype=dtype), name=name)


def tiny_model(*, sample_rate: int, num_speakers: int, max_phoneme_ids: int | None = None) -> onnx.ModelProto:
    """The ONNX graph described in the module docstring."""
    inputs = [
        helper.make_tensor_value_info("input", TensorProto.INT64, [1, "phonemes"]),
        helper.make_tensor_value_info("input_lengths", TensorProto.INT64, [1]),
        helper.make_tensor_value_info("scales", TensorProto.FLOAT, [3]),
    ]
    if num_speakers > 1:
        inputs.append(helper.make_tensor_value_info("sid", TensorProto.INT64, [1]))
    output = helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 1, "samples"])
    initializers = [
        _const("one_i", 1, np.int64),
        _const("axis0", [0], np.int64),
        _const("hop", float(HOP_LENGTH), np.float32),
        _const("zero_f", 0.0, np.float32),
        _const("one_f", 1.0, np.float32),
        _const("amp_step", 0.005, np.float32),
        _const("tone", [TONE_HZ], np.float32),
        _const("radians_per_sample", 2 * math.pi / sample_rate, np.float32),
        _const("out_shape", [1, 1, -1], np.int64),
    ]
    nodes = [
        # Samples per phoneme id and the output length N.
        helper.make_node("Gather", ["scales", "one_i"], ["length_scale"], axis=0),
        helper.make_node("Mul", ["length_scale", "hop"], ["samples_per_id"]),
        helper.make_node("Cast", ["input_lengths"], ["length_f"], to=TensorProto.FLOAT),
        helper.make_node("Mul", ["length_f", "samples_per_id"], ["total_f"]),
        helper.make_node("Floor", ["total_f"], ["total_floor"]),
        helper.make_node("Squeeze", ["total_floor", "axis0"], ["total"]),
        helper.make_node("Range", ["zero_f", "total", "one_f"], ["n"]),
        # Which phoneme id each sample belongs to, and its amplitude (id + 1) * 0.005.
        helper.make_node("Div", ["n", "samples_per_id"], ["n_over"]),
        helper.make_node("Floor", ["n_over"], ["slot_f"]),
        helper.make_node("Cast", ["slot_f"], ["slot"], to=TensorProto.INT64),
        helper.make_node("Sub", ["input_lengths", "one_i"], ["last_slot"]),
        helper.make_node("Min", ["slot", "last_slot"], ["slot_clamped"]),
        helper.make_node("Squeeze", ["input", "axis0"], ["ids"]),
        helper.make_node("Cast", ["ids"], ["ids_f"], to=TensorProto.FLOAT),
        helper.make_node("Gather", ["ids_f", "slot_clamped"], ["id_per_sample"], axis=0),
        helper.make_node("Add", ["id_per_sample", "one_f"], ["id_plus_one"]),
        helper.make_node("Mul", ["id_plus_one", "amp_step"], ["amplitude"]),
    ]
    # The tone's frequency, raised per speaker.
    if num_speakers > 1:
        initializers.append(_const("speaker_step", [SPEAKER_STEP_HZ], np.float32))
        nodes += [
            helper.make_node("Cast", ["sid"], ["sid_f"], to=TensorProto.FLOAT),
            helper.make_node("Mul", ["sid_f", "speaker_step"], ["speaker_offset"]),
            helper.make_node("Add", ["tone", "speaker_offset"], ["frequency_base"]),
        ]
    else:
        nodes.append(helper.make_node("Identity", ["tone"], ["frequency_base"]))
    if max_phoneme_ids is not None:
        # Looking up index T in a table of max_phoneme_ids zeros fails once T reaches max_phoneme_ids.
        initializers.append(_const("limit_table", np.zeros(max_phoneme_ids), np.float32))
        nodes += [
            helper.make_node("Gather", ["limit_table", "input_lengths"], ["limit_guard"], axis=0),
            helper.make_node("Add", ["frequency_base", "limit_guard"], ["frequency"]),
        ]
    else:
        nodes.append(helper.make_node("Identity", ["frequency_base"], ["frequency"]))
    nodes += [
        helper.make_node("Mul", ["n", "frequency"], ["cycles"]),
        helper.make_node("Mul", ["cycles", "radians_per_sample"], ["phase"]),
        helper.make_node("Sin", ["phase"], ["wave"]),
        helper.make_node("Mul", ["wave", "amplitude"], ["audio"]),
        helper.make_node("Reshape", ["audio", "out_shape"], ["output"]),
    ]
    graph = helper.make_graph(nodes, "tiny_piper", inputs, [output], initializer=initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="switchboard")
    model.ir_version = 8  # what onnxruntime 1.x reads without complaint
    onnx.checker.check_model(model, full_check=True)
    return model


def voice_config(*, sample_rate: int, num_speakers: int, espeak_voice: str = "en-us") -> dict[str, Any]:
    """The .onnx.json piper 1.8.0 reads (piper.config.PiperConfig.from_dict), as piper's trainer writes it."""
    id_map = {phoneme: list(ids) for phoneme, ids in DEFAULT_PHONEME_ID_MAP.items()}
    return {
        "audio": {"sample_rate": sample_rate, "quality": "x_low"},
        "espeak": {"voice": espeak_voice},
        "language": {"code": "en_US"},
        "inference": {"noise_scale": 0.667, "length_scale": 1.0, "noise_w": 0.8},
        "phoneme_type": "espeak",
        "phoneme_id_map": id_map,
        "num_symbols": 1 + max(i for ids in id_map.values() for i in ids),
        "num_speakers": num_speakers,
        "speaker_id_map": {f"speaker{i}": i for i in range(num_speakers)} if num_speakers > 1 else {},
        "piper_version": "1.0.0",
    }


def build_tiny_voice(
    directory: Path,
    *,
    name: str = "tiny",
    sample_rate: int = DEFAULT_SAMPLE_RATE,
    num_speakers: int = 1,
    max_phoneme_ids: int | None = None,
) -> Path:
    """Write ``<name>.onnx`` and ``<name>.onnx.json`` into ``directory``; return the .onnx path."""
    directory.mkdir(parents=True, exist_ok=True)
    model_path = directory / f"{name}.onnx"
    model = tiny_model(sample_rate=sample_rate, num_speakers=num_speakers, max_phoneme_ids=max_phoneme_ids)
    onnx.save(model, str(model_path))
    config = voice_config(sample_rate=sample_rate, num_speakers=num_speakers)
    Path(f"{model_path}.json").write_text(json.dumps(config, ensure_ascii=False), encoding="utf-8")
    return model_path

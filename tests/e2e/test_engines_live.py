"""The production engines and the language-model path, each on a live call to `switchboard serve`.

A caller on our own SIP/RTP stack speaks synthesised audio and keeps every frame the agent sends back.
The engine profile runs faster-whisper and piper on the tiny models the agent tests build (random
Whisper weights, a piper voice that plays a 300 Hz tone per phoneme), so what is checked is that audio
flows through both engines end to end, not what the words are. The model path runs against the scripted
OpenAI-protocol server in this process: its words must be what the caller hears, its tool calls must
reach the CRM, and when it fails or hangs the caller must still hear the policy's recovery in time.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from agent.dialogue import DialoguePolicy
from agent.engines import Synthesizer
from agent.llm import DEFAULT_SYSTEM_PROMPT
from agent.session import split_sentences
from agent.tts import EspeakSynthesizer
from agent.turn_taking import trim_leading_silence
from crm.db import create_engine_for, session_factory
from tests.agent.openai_server import Completion, HttpError, OpenAIServer, Script, ScriptedToolCall
from tests.agent.tiny_piper import TONE_HZ, build_tiny_voice
from tests.agent.tiny_whisper import build_tiny_whisper
from tests.e2e.conftest import RunningServer, running_server, switchboard_command
from tests.e2e.live_caller import FRAME_S, Caller, Heard, dial, loud
from tools.schemas import TOOL_DEFINITIONS
from tools.toolbox import DatabaseToolBox

pytestmark = pytest.mark.e2e

MODEL = "switchboard-e2e-model"
DANA = "+15550100001"  # a seeded customer with order A1042
# Recognised word for word by the domain language model (checked against the server's log while writing
# this test), and no rule of the deterministic policy covers it: the router sends it to the model.
OPEN_ENDED = "i have a question about my car"


# --- the caller ---------------------------------------------------------------------------------------


def _dial(server: RunningServer, number: str) -> contextlib.AbstractAsyncContextManager[Caller]:
    return dial(server, number, ports=(46000, 46999))


def _transcript(server: RunningServer, call_id: str, *, ended: bool = True) -> dict[str, Any]:
    """The call's transcript from the HTTP API; with `ended`, once the server has closed the call."""
    deadline = time.monotonic() + 5
    while True:
        with urllib.request.urlopen(f"{server.api}/api/calls/{call_id}", timeout=5) as response:
            result: dict[str, Any] = json.load(response)
        if not ended or result["ended_at"] is not None or time.monotonic() > deadline:
            return result
        time.sleep(0.1)


def _after_caller(transcript: dict[str, Any]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The caller's (only) turn and the agent turns that followed it."""
    turns = transcript["turns"]
    callers = [i for i, t in enumerate(turns) if t["speaker"] == "caller"]
    assert len(callers) == 1, turns
    return turns[callers[0]], [t for t in turns[callers[0] + 1 :] if t["speaker"] == "agent"]


def _expected_span_s(synthesizer: Synthesizer, text: str) -> float:
    """How long `text` sounds from its first to its last loud frame, said the way the session says it:
    clause by clause, leading silence trimmed from the first."""
    clauses = [synthesizer.synthesize_8k(clause) for clause in split_sentences(text)]
    pcm = trim_leading_silence(clauses[0]) + b"".join(clauses[1:])
    size = int(FRAME_S * 8000) * 2
    spoken = [i for i in range(0, len(pcm), size) if loud(pcm[i : i + size])]
    return (spoken[-1] - spoken[0]) / 16000 + FRAME_S


def _dominant_hz(frames: list[bytes]) -> float:
    samples = np.frombuffer(b"".join(frames), dtype=np.int16).astype(np.float64)
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(samples.size)))
    return float(np.argmax(spectrum) * 8000 / samples.size)


# --- production engines: faster-whisper + piper ------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_engines(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("engines")
    return build_tiny_whisper(root / "whisper"), build_tiny_voice(root / "piper")


@pytest.fixture(scope="module")
def engine_server(
    tmp_path_factory: pytest.TempPathFactory, tiny_engines: tuple[Path, Path]
) -> Iterator[RunningServer]:
    whisper_dir, voice = tiny_engines
    env = {
        "SWITCHBOARD_STT": "faster-whisper",
        "SWITCHBOARD_WHISPER_MODEL_DIR": str(whisper_dir),
        "SWITCHBOARD_TTS": "piper",
        "SWITCHBOARD_PIPER_VOICE": str(voice),
    }
    with running_server(tmp_path_factory.mktemp("serve-engines"), env=env) as running:
        yield running


async def test_a_call_runs_on_faster_whisper_and_piper(
    engine_server: RunningServer, tiny_engines: tuple[Path, Path]
) -> None:
    from agent.tts_piper import PiperSynthesizer

    voice = PiperSynthesizer(tiny_engines[1])
    line = EspeakSynthesizer(variant="m3").synthesize_8k("i'd like to book an oil change for tomorrow")
    async with _dial(engine_server, "+15550100077") as caller:
        greeting = await caller.agent_turn()
        await caller.speak(line)
        reply = await caller.agent_turn()
        call_id = caller.call.call_id
    transcript = _transcript(engine_server, call_id)

    assert "whisper model" in engine_server.log()  # the engine that loaded is faster-whisper
    turns = transcript["turns"]
    assert turns[0]["speaker"] == "agent" and turns[0]["telemetry"]["kind"] == "greeting"
    heard_turn, answers = _after_caller(transcript)
    # The random model's words are meaningless; that it heard something and the agent answered is the point.
    assert heard_turn["text"] and heard_turn["stt_ms"] is not None, heard_turn
    assert answers, turns
    telemetry = answers[-1]["telemetry"]
    assert telemetry["kind"] == "utterance" and telemetry["stt_ms"] is not None
    assert telemetry["e2e_ms"] > 0 and telemetry["tts_first_audio_ms"] > 0 and telemetry["intent"]
    # Both replies came as piper's tone and last as long as the voice makes their text last.
    for heard, text in ((greeting, turns[0]["text"]), (reply, answers[-1]["text"])):
        assert abs(_dominant_hz(heard.frames) - TONE_HZ) < 15, _dominant_hz(heard.frames)
        expected = _expected_span_s(voice, text)
        assert abs(heard.span_s - expected) < 0.1 + 0.05 * expected, (heard.span_s, expected, text)
    assert transcript["hangup_by"] == "caller", transcript


def _serve_until_exit(data_dir: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    environment = dict(os.environ, SWITCHBOARD_DATA_DIR=str(data_dir), **env)
    environment.pop("SWITCHBOARD_DATABASE_URL", None)
    command = [*switchboard_command(), "serve", "--http-port", "0", "--sip-port", "0"]
    return subprocess.run(command, capture_output=True, text=True, timeout=60, env=environment, check=False)


@pytest.mark.parametrize("case", ["whisper-dir-without-model", "piper-without-voice", "piper-voice-missing"])
def test_serve_refuses_an_unusable_engine_with_a_clear_message(
    tmp_path: Path, tiny_engines: tuple[Path, Path], case: str
) -> None:
    empty = tmp_path / "models"
    empty.mkdir()
    missing_voice = empty / "voice.onnx"
    env, names = {
        "whisper-dir-without-model": (
            {"SWITCHBOARD_STT": "faster-whisper", "SWITCHBOARD_WHISPER_MODEL_DIR": str(empty)},
            ["SWITCHBOARD_WHISPER_MODEL_DIR", str(empty), "model.bin"],
        ),
        "piper-without-voice": ({"SWITCHBOARD_TTS": "piper"}, ["SWITCHBOARD_PIPER_VOICE"]),
        # faster-whisper (which loads fine) spares the pocketsphinx build before the voice is loaded.
        "piper-voice-missing": (
            {
                "SWITCHBOARD_STT": "faster-whisper",
                "SWITCHBOARD_WHISPER_MODEL_DIR": str(tiny_engines[0]),
                "SWITCHBOARD_TTS": "piper",
                "SWITCHBOARD_PIPER_VOICE": str(missing_voice),
            },
            ["SWITCHBOARD_PIPER_VOICE", str(missing_voice), "does not exist"],
        ),
    }[case]
    completed = _serve_until_exit(tmp_path / "data", env)
    assert completed.returncode != 0
    last_line = completed.stderr.strip().splitlines()[-1]
    assert last_line.startswith("switchboard serve: "), completed.stderr
    assert all(name in last_line for name in names), last_line
    assert "Traceback" not in completed.stderr


# --- the language-model path ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def model_server() -> Iterator[OpenAIServer]:
    with OpenAIServer(model=MODEL) as server:
        yield server


@pytest.fixture(scope="module")
def llm_server(
    tmp_path_factory: pytest.TempPathFactory, model_server: OpenAIServer
) -> Iterator[RunningServer]:
    env = {"SWITCHBOARD_LLM_URL": model_server.base_url, "SWITCHBOARD_LLM_MODEL": MODEL}
    with running_server(tmp_path_factory.mktemp("serve-llm"), env=env) as running:
        yield running


@pytest.fixture
def model(model_server: OpenAIServer) -> OpenAIServer:
    model_server.reset()
    return model_server


@dataclass
class OpenEndedTurn:
    transcript: dict[str, Any]
    spoken_at: float  # when the caller's last frame left
    answer: Heard  # everything the agent said after it


async def _ask_open_ended(server: RunningServer, *, quiet_s: float = 1.0) -> OpenEndedTurn:
    """One call: the greeting, the open-ended line, and the agent's answer until `quiet_s` of silence."""
    line = EspeakSynthesizer(variant="m3").synthesize_8k(OPEN_ENDED)
    async with _dial(server, DANA) as caller:
        await caller.agent_turn(quiet_s=0.7)  # the greeting
        _, spoken_at = await caller.speak(line)
        answer = await caller.agent_turn(quiet_s=quiet_s)
        call_id = caller.call.call_id
    return OpenEndedTurn(_transcript(server, call_id), spoken_at, answer)


def _speaking_voice() -> EspeakSynthesizer:
    return EspeakSynthesizer(voice="en-us", rate_wpm=175)  # what serve uses by default


def _assert_request_shape(body: dict[str, Any], transcript: dict[str, Any], caller_text: str) -> None:
    """The request carries every tool definition, the system prompt with what the call knows so far
    (the caller was recognised by number), and the caller's words as the user's message."""
    assert body["model"] == MODEL and body["stream"] is True
    assert [tool["function"]["name"] for tool in body["tools"]] == [d.name for d in TOOL_DEFINITIONS]
    system = body["messages"][0]
    assert system["role"] == "system" and system["content"].startswith(DEFAULT_SYSTEM_PROMPT)
    assert transcript["customer"] and transcript["customer"] in system["content"], system
    assert {"role": "user", "content": caller_text} in body["messages"]


async def test_an_open_ended_request_is_answered_with_the_models_words(
    llm_server: RunningServer, model: OpenAIServer
) -> None:
    pieces = ["I can help with that. ", "Tell me what the car is doing, ", "and when it started."]
    model.script(Completion(text=pieces))
    turn = await _ask_open_ended(llm_server)

    caller, answers = _after_caller(turn.transcript)
    assert caller["text"] == OPEN_ENDED, llm_server.log()
    assert len(model.requests) == 1 and model.unused_scripts == 0
    _assert_request_shape(model.requests[0].body, turn.transcript, caller["text"])
    assert model.requests[0].body["messages"][-1] == {"role": "user", "content": caller["text"]}
    reply = answers[-1]
    assert reply["text"] == " ".join("".join(pieces).split())
    assert reply["intent"] == "llm" and reply["telemetry"]["llm_ms"] > 0, reply
    # What the caller heard lasts as long as those words take to say.
    expected = _expected_span_s(_speaking_voice(), reply["text"])
    assert abs(turn.answer.span_s - expected) < 0.15 + 0.05 * expected, (turn.answer.span_s, expected)


async def test_the_model_looks_up_an_order_through_the_crm_before_answering(
    llm_server: RunningServer, model: OpenAIServer
) -> None:
    words = "Your order A1042 is ready for pickup."
    model.script(
        Completion(tool_calls=[ScriptedToolCall("order_status", '{"order_number": "A1042"}')]),
        Completion(text=[words]),
    )
    turn = await _ask_open_ended(llm_server)

    caller, answers = _after_caller(turn.transcript)
    assert len(model.requests) == 2, [r.body["messages"][-1] for r in model.requests]
    for request in model.requests:
        _assert_request_shape(request.body, turn.transcript, caller["text"])
    call_message, result_message = model.requests[1].body["messages"][-2:]
    assert call_message["role"] == "assistant"
    assert call_message["tool_calls"][0]["function"]["name"] == "order_status"
    assert result_message["role"] == "tool"
    assert result_message["tool_call_id"] == call_message["tool_calls"][0]["id"]
    # The tool result is the CRM's own record of the order, read here from the server's database.
    engine = create_engine_for(llm_server.database_url)
    try:
        order = DatabaseToolBox(session_factory(engine)).order_status("A1042")
    finally:
        engine.dispose()
    result = json.loads(result_message["content"])
    assert (result["number"], result["status"]) == (order.number, order.status)
    reply = answers[-1]
    assert (reply["text"], reply["intent"]) == (words, "llm")
    assert reply["telemetry"]["llm_ms"] > 0, reply
    expected = _expected_span_s(_speaking_voice(), words)
    assert abs(turn.answer.span_s - expected) < 0.15 + 0.05 * expected, (turn.answer.span_s, expected)


@pytest.mark.parametrize(
    ("failure", "quiet_s"),
    [
        pytest.param(HttpError(500, "CUDA out of memory", "InternalServerError"), 1.0, id="http-500"),
        # Waiting out 2 s of quiet tells a filler followed by dead air from a finished answer.
        pytest.param(Completion(text=["Too late."], first_token_delay_s=8.0), 2.05, id="hangs"),
    ],
)
async def test_a_failing_model_still_gets_the_caller_a_spoken_recovery(
    llm_server: RunningServer, model: OpenAIServer, failure: Script, quiet_s: float
) -> None:
    model.script(failure)
    turn = await _ask_open_ended(llm_server, quiet_s=quiet_s)

    caller, answers = _after_caller(turn.transcript)
    assert len(model.requests) == 1  # the model was asked, and failed
    recovery = answers[-1]
    assert recovery["intent"] not in ("llm", "filler") and recovery["telemetry"]["llm_ms"] > 0, answers
    # The recovery is the policy's own answer to the same words, as a fresh policy on the same CRM says.
    engine = create_engine_for(llm_server.database_url)
    try:
        toolbox = DatabaseToolBox(session_factory(engine))
        twin = DialoguePolicy(toolbox, caller_phone=DANA, call_id="twin", now=toolbox.local_now)
        twin.greet()
        assert recovery["text"] == twin.respond(caller["text"]).text
    finally:
        engine.dispose()
    # No dead air: from the end of the caller's words to the end of the recovery, the agent is never
    # silent for 2 s (a filler covers a slow model), and the recovery itself starts soon.
    times = [turn.spoken_at, *turn.answer.times]
    gaps = [later - earlier for earlier, later in itertools.pairwise(times)]
    assert max(gaps) < 2.0, gaps
    assert turn.answer.times[0] - turn.spoken_at < 2.0
    assert recovery["telemetry"]["e2e_ms"] < 2500, recovery

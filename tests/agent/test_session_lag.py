"""A call session whose recogniser runs far behind the audio (an overloaded server) must not end the
caller's turn inside a mid-sentence pause: words judged on stale audio are not trusted."""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor

from agent.booking_flow import AgentReply
from agent.engines import SpeechEngine
from agent.session import CallSession, SessionTimings
from agent.stt import Recognizer, SpeechModel
from agent.transcript import TurnRecord
from agent.tts import EspeakSynthesizer
from tests.agent.conftest import phone_line

FRAME_BYTES = 320
LAG_S = 1.0  # each feed of the recogniser takes this long, however much audio it carries


class _WrappedRecognizer:
    """The real recogniser, each feed taking `lag_s` however much audio it carries, counting utterances."""

    def __init__(self, inner: Recognizer, *, lag_s: float, starts: list[int]) -> None:
        self._inner = inner
        self._lag_s = lag_s
        self._starts = starts

    def start_utterance(self) -> None:
        self._starts[0] += 1
        self._inner.start_utterance()

    def feed(self, pcm16_8k: bytes) -> None:
        time.sleep(self._lag_s)
        self._inner.feed(pcm16_8k)

    def partial(self) -> str:
        return self._inner.partial()

    def end_utterance(self) -> str:
        return self._inner.end_utterance()


class _WrappedEngine:
    def __init__(self, model: SpeechModel, *, lag_s: float = 0.0) -> None:
        self._model = model
        self._lag_s = lag_s
        self.starts = [0]  # utterances started, over all recognisers

    def new_recognizer(self) -> _WrappedRecognizer:
        return _WrappedRecognizer(self._model.new_recognizer(), lag_s=self._lag_s, starts=self.starts)


class _Policy:
    def __init__(self) -> None:
        self.heard: list[tuple[float, str]] = []

    def greet(self) -> AgentReply:
        return AgentReply("Hello.")

    def respond(self, text: str) -> AgentReply:
        self.heard.append((time.monotonic(), text))
        return AgentReply("Okay.")

    def on_silence(self, count: int) -> AgentReply:
        return AgentReply("Are you there?")

    def on_dtmf(self, digit: str) -> AgentReply:
        return AgentReply("Okay.")


class _Transport:
    def __init__(self) -> None:
        self.played = 0

    def play(self, pcm16: bytes) -> None:
        self.played += len(pcm16)

    def flush(self) -> int:
        return 0

    async def wait_drained(self) -> None:
        return None

    async def hangup(self) -> None:
        return None

    async def transfer(self, target: str) -> bool:
        return False

    @property
    def frames_played(self) -> int:
        return 0  # nothing reaches the caller's line: no echo for the gate to expect


class _Transcript:
    def add_turn(self, call_id: str, turn: TurnRecord) -> None:
        return None


def test_a_lagging_recogniser_does_not_split_a_paused_sentence(speech_model: SpeechModel) -> None:
    voice = EspeakSynthesizer(variant="m3")
    pause = bytes(int(0.3 * 8000) * 2)  # with the voice's own edges, ~640 ms of silence mid-sentence
    speech = phone_line("on monday at", voice) + pause + phone_line("ten in the morning", voice)
    audio = speech + bytes(int(2.5 * 8000) * 2)  # then silence while the recogniser catches up
    policy = _Policy()
    transport = _Transport()

    async def call() -> float:
        with ThreadPoolExecutor(4) as executor:
            session = CallSession(
                call_id="lagging",
                transport=transport,
                policy=policy,
                speech_model=_WrappedEngine(speech_model, lag_s=LAG_S),
                synthesizer=voice,
                transcript=_Transcript(),
                executor=executor,
                timings=SessionTimings(reprompt_after_s=30.0),
            )
            running = asyncio.create_task(session.run())
            while not transport.played:  # the greeting
                await asyncio.sleep(0.01)
            started = time.monotonic()
            for index, offset in enumerate(range(0, len(audio), FRAME_BYTES)):
                session.on_audio(audio[offset : offset + FRAME_BYTES].ljust(FRAME_BYTES, b"\0"))
                await asyncio.sleep(max(0.0, started + (index + 1) * 0.02 - time.monotonic()))
            for _ in range(300):
                if policy.heard:
                    break
                await asyncio.sleep(0.02)
            ended = started + len(speech) / 16000
            running.cancel()
            await asyncio.gather(running, return_exceptions=True)
            return ended

    speech_end = asyncio.run(call())
    assert len(policy.heard) == 1, policy.heard
    answered_at, text = policy.heard[0]
    assert answered_at >= speech_end, "the turn ended before the caller finished the sentence"
    assert "morning" in text, text


class _TrailingRecognizer:
    """Partials that trail the audio by `trail` frames, as pocketsphinx's do while the last word is still
    being searched, and a final transcript that takes `end_s`, as on a loaded speech worker."""

    def __init__(self, inner: Recognizer, *, trail: int, end_s: float) -> None:
        self._inner = inner
        self._trail = trail
        self._end_s = end_s
        self._partials: list[str] = []

    def start_utterance(self) -> None:
        self._partials = []
        self._inner.start_utterance()

    def feed(self, pcm16_8k: bytes) -> None:
        for offset in range(0, len(pcm16_8k), FRAME_BYTES):
            self._inner.feed(pcm16_8k[offset : offset + FRAME_BYTES])
            self._partials.append(self._inner.partial())

    def partial(self) -> str:
        if len(self._partials) <= self._trail:
            return ""
        return self._partials[-1 - self._trail]

    def end_utterance(self) -> str:
        time.sleep(self._end_s)
        return self._inner.end_utterance()


class _TrailingEngine:
    def __init__(self, model: SpeechModel, *, trail: int, end_s: float) -> None:
        self._model = model
        self._trail = trail
        self._end_s = end_s

    def new_recognizer(self) -> _TrailingRecognizer:
        return _TrailingRecognizer(self._model.new_recognizer(), trail=self._trail, end_s=self._end_s)


def _speak(
    session: CallSession, transport: _Transport, policy: _Policy, audio: bytes
) -> asyncio.Future[None]:
    async def call() -> None:
        running = asyncio.create_task(session.run())
        while not transport.played:  # the greeting
            await asyncio.sleep(0.01)
        started = time.monotonic()
        for index, offset in enumerate(range(0, len(audio), FRAME_BYTES)):
            session.on_audio(audio[offset : offset + FRAME_BYTES].ljust(FRAME_BYTES, b"\0"))
            await asyncio.sleep(max(0.0, started + (index + 1) * 0.02 - time.monotonic()))
        running.cancel()
        await asyncio.gather(running, return_exceptions=True)

    return asyncio.ensure_future(call())


def _answers(engine: SpeechEngine, voice: EspeakSynthesizer, audio: bytes) -> list[str]:
    """What the dialogue heard from a call whose caller plays `audio` (real time) to a session on `engine`."""
    policy = _Policy()
    transport = _Transport()

    async def call() -> None:
        with ThreadPoolExecutor(4) as executor:
            session = CallSession(
                call_id="lag",
                transport=transport,
                policy=policy,
                speech_model=engine,
                synthesizer=voice,
                transcript=_Transcript(),
                executor=executor,
                timings=SessionTimings(reprompt_after_s=30.0),
            )
            await _speak(session, transport, policy, audio)

    asyncio.run(call())
    return [text for _, text in policy.heard]


def test_the_speculative_transcript_not_the_partial_decides_when_the_turn_ends(
    speech_model: SpeechModel,
) -> None:
    """'on tuesday' (a complete answer) trails 'on tuesday at ten' (a bare hour, which waits for 'in the
    morning'); the speculation started on it finds 'ten' only after the short hangover has passed."""
    voice = EspeakSynthesizer(variant="m3")
    pause = bytes(int(0.45 * 8000) * 2)  # with the voice's own edges, ~600 ms of silence mid-sentence
    speech = phone_line("on tuesday at ten", voice) + pause + phone_line("in the morning", voice)
    audio = speech + bytes(int(2.0 * 8000) * 2)
    heard = _answers(_TrailingEngine(speech_model, trail=20, end_s=0.3), voice, audio)
    assert heard == ["on tuesday at ten in the morning"]


def test_a_bare_time_is_not_finalised_early_in_a_pause_the_caller_talks_on_from(
    speech_model: SpeechModel,
) -> None:
    """'on tuesday at ten' waits 800 ms for 'in the morning': finalising it 60 ms into the pause was undone
    when the caller went on, and the recogniser decoded the whole turn again (a third of all speculations
    and 30 % of the audio decoded in `bench agent`). The turn is one utterance, decoded once."""
    voice = EspeakSynthesizer(variant="f2")
    pause = bytes(int(0.3 * 8000) * 2)  # with the voice's own edges, ~500 ms of silence mid-sentence
    speech = phone_line("on tuesday at ten", voice) + pause + phone_line("in the morning", voice)
    audio = speech + bytes(int(1.5 * 8000) * 2)
    engine = _WrappedEngine(speech_model)
    assert _answers(engine, voice, audio) == ["on tuesday at ten in the morning"]
    assert engine.starts == [1]


class _UrgencyRecognizer:
    """The real recogniser behind the event-loop interface a speech worker's has, recording how urgent the
    session marks each feed and when it hurries the call."""

    def __init__(self, inner: Recognizer, log: list[tuple[str, bool, int]]) -> None:
        self._inner = inner
        self._log = log

    def start_utterance(self) -> None:
        self._inner.start_utterance()

    def feed(self, pcm16_8k: bytes) -> None:
        self._inner.feed(pcm16_8k)

    def partial(self) -> str:
        return self._inner.partial()

    def end_utterance(self) -> str:
        return self._inner.end_utterance()

    async def start_utterance_async(self) -> None:
        self._inner.start_utterance()

    async def feed_async(self, pcm16_8k: bytes, *, urgent: bool = False) -> str:
        self._log.append(("feed", urgent, len(pcm16_8k)))
        await asyncio.sleep(0.03)  # a worker's round trip: frames gather meanwhile
        self._inner.feed(pcm16_8k)
        return self._inner.partial()

    async def end_utterance_async(self) -> str:
        return self._inner.end_utterance()

    def hurry(self) -> None:
        self._log.append(("hurry", True, 0))


class _UrgencyEngine:
    def __init__(self, model: SpeechModel) -> None:
        self._model = model
        self.log: list[tuple[str, bool, int]] = []

    def new_recognizer(self) -> _UrgencyRecognizer:
        return _UrgencyRecognizer(self._model.new_recognizer(), self.log)


def test_the_session_marks_recognition_urgent_once_the_caller_pauses(speech_model: SpeechModel) -> None:
    """Feeds sent while the caller speaks are not urgent; once they have been silent 40 ms the session
    hurries the call (its feed in flight) and marks its feeds urgent, until they speak again."""
    voice = EspeakSynthesizer(variant="m3")
    pause = bytes(int(0.3 * 8000) * 2)
    speech = phone_line("on monday at", voice) + pause + phone_line("ten in the morning", voice)
    audio = speech + bytes(int(1.5 * 8000) * 2)
    engine = _UrgencyEngine(speech_model)
    heard = _answers(engine, voice, audio)
    assert len(heard) == 1 and "morning" in heard[0], heard
    kinds = [(kind, urgent) for kind, urgent, _ in engine.log]
    assert ("feed", False) in kinds  # while the caller spoke
    assert ("feed", True) in kinds  # in the pause and after the turn
    hurries = [index for index, (kind, _) in enumerate(kinds) if kind == "hurry"]
    assert len(hurries) >= 2  # the mid-sentence pause and the end of the turn
    # After the mid-sentence pause the caller spoke again: plain feeds follow the first hurry.
    assert ("feed", False) in kinds[hurries[0] :]

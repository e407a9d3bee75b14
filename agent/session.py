"""The call session: one state machine per call from greeting to hang-up.

All state transitions live in `_TRANSITIONS` below. Audio arrives on the transport's thread of control (the
event loop) one 20 ms frame at a time; VAD runs inline (microseconds), while speech recognition, the
dialogue policy and synthesis run in worker threads so the event loop never waits on them.
"""

from __future__ import annotations

import asyncio
import collections
import enum
import logging
import re
import time
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass

from agent.dialogue import AgentReply, DialoguePolicy
from agent.stt import Recognizer, SpeechModel
from agent.transcript import TranscriptSink, TurnRecord
from agent.transport import CallTransport
from agent.tts import EspeakSynthesizer
from agent.vad import Endpointer, SpeechEnded, SpeechStarted

log = logging.getLogger(__name__)

FRAME_BYTES = 320  # 20 ms of 8 kHz PCM16
PREROLL_FRAMES = 15  # 300 ms kept before the VAD triggers, so word onsets reach the recogniser


class CallState(enum.Enum):
    GREETING = "greeting"
    LISTENING = "listening"
    THINKING = "thinking"
    SPEAKING = "speaking"
    TRANSFERRING = "transferring"
    ENDED = "ended"


_TRANSITIONS: dict[CallState, frozenset[CallState]] = {
    CallState.GREETING: frozenset({CallState.SPEAKING, CallState.ENDED}),
    CallState.LISTENING: frozenset({CallState.THINKING, CallState.SPEAKING, CallState.ENDED}),
    CallState.THINKING: frozenset({CallState.SPEAKING, CallState.LISTENING, CallState.ENDED}),
    CallState.SPEAKING: frozenset(
        {CallState.LISTENING, CallState.THINKING, CallState.TRANSFERRING, CallState.ENDED}
    ),
    CallState.TRANSFERRING: frozenset({CallState.ENDED}),
    CallState.ENDED: frozenset(),
}


class InvalidTransition(Exception):
    pass


@dataclass(frozen=True, slots=True)
class SessionTimings:
    endpoint_hangover_ms: int = 400
    reprompt_after_s: float = 6.0


NO_ONE_AVAILABLE = (
    "I'm sorry, no one from our team can take the call right now. "
    "We'll call you back as soon as we can. Goodbye."
)


_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def split_sentences(text: str) -> list[str]:
    """Clauses to synthesise one by one, so the first audio goes out as soon as the first is ready."""
    return [part for part in _SENTENCE_END.split(text.strip()) if part]


class CallSession:
    def __init__(
        self,
        *,
        call_id: str,
        transport: CallTransport,
        policy: DialoguePolicy,
        speech_model: SpeechModel,
        synthesizer: EspeakSynthesizer,
        transcript: TranscriptSink,
        executor: Executor,
        timings: SessionTimings = SessionTimings(),
        escalation_target: str | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._escalation_target = escalation_target
        self.call_id = call_id
        self._transport = transport
        self._policy = policy
        self._speech_model = speech_model
        self._synth = synthesizer
        self._transcript = transcript
        self._executor = executor
        self._timings = timings
        self._clock = clock
        self.state = CallState.GREETING
        self._endpointer = Endpointer(hangover_ms=timings.endpoint_hangover_ms)
        self._preroll: collections.deque[bytes] = collections.deque(maxlen=PREROLL_FRAMES)
        self._recognizer: Recognizer | None = None
        self._stt_chunks: asyncio.Queue[bytes | None] = asyncio.Queue()
        self._events: asyncio.Queue[tuple[str, str, float]] = asyncio.Queue()
        self._last_activity = clock()
        self._silences = 0
        self._speech_end_at = 0.0
        self._tasks: list[asyncio.Task[None]] = []

    # --- transitions --------------------------------------------------------------------------------
    def _enter(self, new: CallState) -> None:
        if new is self.state:
            return
        if new not in _TRANSITIONS[self.state]:
            raise InvalidTransition(f"{self.state.value} -> {new.value}")
        log.debug("call %s: %s -> %s", self.call_id, self.state.value, new.value)
        self.state = new

    # --- transport input (event loop, must be cheap) ------------------------------------------------
    def on_audio(self, frame: bytes) -> None:
        if self.state is CallState.ENDED or len(frame) != FRAME_BYTES:
            return
        event = self._endpointer.process(frame)
        if isinstance(event, SpeechStarted):
            self._last_activity = self._clock()
            for buffered in self._preroll:
                self._stt_chunks.put_nowait(buffered)
            self._preroll.clear()
            self._stt_chunks.put_nowait(frame)
            if self.state is CallState.SPEAKING:
                # Barge-in: the caller talks over us; stop our audio at once.
                dropped = self._transport.flush()
                log.info("call %s: barge-in, %d frames dropped", self.call_id, dropped)
            return
        if self._endpointer.in_speech:
            self._stt_chunks.put_nowait(frame)
        else:
            self._preroll.append(frame)
        if isinstance(event, SpeechEnded):
            self._speech_end_at = self._clock()
            self._last_activity = self._speech_end_at
            self._stt_chunks.put_nowait(None)

    def on_dtmf(self, digit: str) -> None:
        self._events.put_nowait(("dtmf", digit, self._clock()))

    # --- main loop ----------------------------------------------------------------------------------
    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        self._recognizer = await loop.run_in_executor(self._executor, self._speech_model.new_recognizer)
        self._tasks.append(asyncio.create_task(self._recognise()))
        try:
            reply = await loop.run_in_executor(self._executor, self._policy.greet)
            if not await self._speak(reply):
                return
            while self.state is not CallState.ENDED:
                try:
                    kind, value, at = await asyncio.wait_for(self._events.get(), 0.5)
                except TimeoutError:
                    if self._endpointer.in_speech:
                        continue
                    if self._clock() - self._last_activity >= self._timings.reprompt_after_s:
                        self._silences += 1
                        self._last_activity = self._clock()
                        reply = await loop.run_in_executor(
                            self._executor, self._policy.on_silence, self._silences
                        )
                        if not await self._speak(reply):
                            return
                    continue
                self._silences = 0
                self._enter(CallState.THINKING)
                if kind == "utterance":
                    reply = await loop.run_in_executor(self._executor, self._policy.respond, value)
                else:
                    reply = await loop.run_in_executor(self._executor, self._policy.on_dtmf, value)
                e2e = (self._clock() - at) * 1000
                await self._record(TurnRecord("agent", reply.text, reply.intent, e2e_ms=e2e))
                if not await self._speak(reply, recorded=True):
                    return
        finally:
            for task in self._tasks:
                task.cancel()
            self._enter_ended()

    def _enter_ended(self) -> None:
        if self.state is not CallState.ENDED:
            self.state = CallState.ENDED

    async def _speak(self, reply: AgentReply, *, recorded: bool = False) -> bool:
        """Say a reply; returns False when the call is over afterwards."""
        loop = asyncio.get_running_loop()
        if not recorded:
            await self._record(TurnRecord("agent", reply.text, reply.intent))
        self._enter(CallState.SPEAKING)
        for sentence in split_sentences(reply.text):
            pcm = await loop.run_in_executor(self._executor, self._synth.synthesize_8k, sentence)
            if self.state is not CallState.SPEAKING:
                break
            self._transport.play(pcm)
        await self._transport.wait_drained()
        self._last_activity = self._clock()
        if reply.transfer:
            self._enter(CallState.TRANSFERRING)
            target = self._escalation_target
            if target is not None and await self._transport.transfer(target):
                self._enter(CallState.ENDED)
                return False
            # Nobody to hand over to: say so rather than leave the caller in silence, then end.
            await self._record(TurnRecord("agent", NO_ONE_AVAILABLE, "transfer_failed"))
            pcm = await loop.run_in_executor(self._executor, self._synth.synthesize_8k, NO_ONE_AVAILABLE)
            self._transport.play(pcm)
            await self._transport.wait_drained()
            await self._transport.hangup()
            self._enter(CallState.ENDED)
            return False
        if reply.hangup:
            await self._transport.hangup()
            self._enter(CallState.ENDED)
            return False
        if self.state is CallState.SPEAKING:
            self._enter(CallState.LISTENING)
        return True

    async def _recognise(self) -> None:
        """Feed caller speech to the recogniser in order; one utterance at a time."""
        loop = asyncio.get_running_loop()
        recognizer = self._recognizer
        assert recognizer is not None
        started = False
        while True:
            chunk = await self._stt_chunks.get()
            batch: list[bytes] = []
            end = chunk is None
            if chunk is not None:
                batch.append(chunk)
            # Take whatever else is already queued in one hop to the worker thread.
            while not end and not self._stt_chunks.empty():
                more = self._stt_chunks.get_nowait()
                if more is None:
                    end = True
                else:
                    batch.append(more)
            if batch:
                if not started:
                    await loop.run_in_executor(self._executor, recognizer.start_utterance)
                    started = True
                await loop.run_in_executor(self._executor, recognizer.feed, b"".join(batch))
            if end and started:
                text = await loop.run_in_executor(self._executor, recognizer.end_utterance)
                started = False
                stt_ms = (self._clock() - self._speech_end_at) * 1000
                text = text.strip()
                log.info("call %s: caller said %r (stt %.0f ms)", self.call_id, text, stt_ms)
                if text:
                    await self._record(TurnRecord("caller", text, stt_ms=stt_ms))
                    self._events.put_nowait(("utterance", text, self._speech_end_at))

    async def _record(self, turn: TurnRecord) -> None:
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(self._executor, self._transcript.add_turn, self.call_id, turn)
        except Exception:  # the transcript must never take the call down
            log.exception("call %s: could not record a turn", self.call_id)

"""The call session: one state machine per call from greeting to hang-up, with every stage overlapped.

All state transitions live in `_TRANSITIONS` below. Audio arrives on the event loop one 20 ms frame at a
time; VAD, the echo gate and the endpoint decision run inline (microseconds), while recognition, the
dialogue and synthesis run in worker threads so the event loop never waits on them.

How a turn ends quickly without cutting the caller off:
1. While the caller speaks, each batch of audio is decoded and the partial transcript kept (with a short
   lead-in, and of a pause only its start: `agent.turn_taking.RecognitionFeed`).
2. When the caller pauses, the words decide the hangover (`agent.turn_taking`): ~140 ms after a
   complete answer ("yes", "... at ten in the morning"), ~900 ms after "I'd like to book a".
3. During a pause in a turn that sounds finished (90 ms in, or 150 ms before the hangover runs out if
   that is later: `HangoverPolicy.speculate_at_ms`), the transcript is finalised early and the
   reply worked out on a read-only copy of the dialogue and its first clause synthesised
   (`agent.speculation`); that transcript, not the partial, sets the hangover the turn ends on. If the
   caller goes on, all of that is dropped and decoding resumes over the whole turn; if not, the
   prepared audio goes out the moment the hangover runs out.

Barge-in: caller speech over the agent pauses playout at once (SIP: queue dropped; Twilio: `clear`). If it
was a backchannel ("mm-hm", "okay") or a noise that is not speech, the reply resumes where it stopped;
otherwise the history keeps only what the caller heard and the caller's words are answered. Line echo of our
own audio is told from the caller by `agent.turn_taking.EchoGate` and never counts as speech.

Turn hygiene: a filler ("Let me check that.") when a reply takes more than 300 ms, another at most every
2 s so the line is never silent longer; reprompts after silence, a goodbye after repeated silence.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import enum
import logging
import re
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any, Final, Protocol, TypeVar

from agent.booking_flow import AgentReply
from agent.engines import AsyncRecognizer, EconomyRecognizer, SpeechEngine, StreamingRecognizer, Synthesizer
from agent.speculation import Speculation, adopt, speculate
from agent.telemetry import TimedTools, TurnTelemetry
from agent.transcript import TranscriptSink, TurnRecord
from agent.transport import CallTransport
from agent.turn_taking import (
    Completeness,
    EchoGate,
    HangoverPolicy,
    RecognitionFeed,
    frame_peak,
    heard_text,
    is_backchannel,
    trim_leading_silence,
    turn_completeness,
)
from agent.vad import Endpointer, SpeechEnded, SpeechStarted

log = logging.getLogger(__name__)
_T = TypeVar("_T")

FRAME_BYTES: Final = 320  # 20 ms of 8 kHz PCM16
_CURRENT_WITHIN_FRAMES: Final = 8  # a partial lagging the audio by up to 160 ms is current, even mid-word
# Silence after which a paused caller's recognition is urgent (agent/stt_pool.py): past a one-frame VAD
# dropout, before the earliest decision a pause leads to (speculating at 90 ms).
_URGENT_AFTER_MS: Final = 40


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


class Dialogue(Protocol):
    """What the session needs from a dialogue (the deterministic policy or the LLM router)."""

    def greet(self) -> AgentReply: ...

    def respond(self, text: str) -> AgentReply: ...

    def on_silence(self, count: int) -> AgentReply: ...

    def on_dtmf(self, digit: str) -> AgentReply: ...


@dataclass(frozen=True, slots=True)
class SessionTimings:
    endpoint_hangover_ms: int = 400  # before any words are recognised
    reprompt_after_s: float = 6.0
    hangovers: HangoverPolicy = field(default_factory=HangoverPolicy)
    filler_after_ms: int = 300  # a reply slower than this gets "let me check that" first
    max_dead_air_s: float = 2.0  # never leave the caller in silence longer than this while working
    backchannel_max_ms: int = 1200  # speech over the agent longer than this is a barge-in, whatever it says
    resume_rewind_ms: int = 100  # a resumed reply repeats this much audio from before the pause


NO_ONE_AVAILABLE: Final = (
    "I'm sorry, no one from our team can take the call right now. "
    "We'll call you back as soon as we can. Goodbye."
)
FILLER: Final = "Let me check that."
STILL_WORKING: Final = "Still checking, one moment."

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def split_sentences(text: str) -> list[str]:
    """Clauses to synthesise one by one, so the first audio goes out as soon as the first is ready."""
    return [part for part in _SENTENCE_END.split(text.strip()) if part]


# --- commands from the event loop to the recogniser task ---------------------------------------------------


class _Speculate:
    """Finalise the transcript now: the caller paused and sounds finished."""


class _Resume:
    """The caller went on after a speculation: decode the whole turn again in a fresh utterance."""


@dataclass(frozen=True, slots=True)
class _End:
    turn: int
    speech_end_at: float  # clock time of the end of the last voiced frame
    endpoint_ms: float
    speech_ms: float  # length of the turn, onset to last voiced frame


_SttCommand = bytes | _Speculate | _Resume | _End


class _SttInbox:
    """The recogniser's queue: caller audio and turn commands in order. Audio that piled up while a feed
    was in flight is taken in one batch (`take_audio`), so a busy recogniser gets fewer, longer feeds."""

    def __init__(self) -> None:
        self._items: collections.deque[_SttCommand] = collections.deque()
        self._ready = asyncio.Event()

    def put(self, item: _SttCommand) -> None:
        self._items.append(item)
        self._ready.set()

    async def get(self) -> _SttCommand:
        while not self._items:
            self._ready.clear()
            await self._ready.wait()
        return self._items.popleft()

    def take_audio(self) -> list[bytes]:
        """The audio at the head of the queue, up to the next command."""
        audio: list[bytes] = []
        items = self._items
        while items and isinstance(items[0], bytes):
            audio.append(items.popleft())  # type: ignore[arg-type]
        return audio


@dataclass(slots=True)
class CallerTurn:
    kind: str  # "utterance" | "dtmf"
    text: str
    at: float  # end of the caller's speech (or the key press)
    turn: int = 0
    stt_ms: float | None = None
    endpoint_ms: float | None = None
    speech_ms: float = 0.0
    stt_economy: bool = False  # decoded a cheaper way by a speech worker that was behind
    stt_economy_depth: int = 0  # 1 economy, 2 deep economy (agent/stt_pool.py)
    stt_audio_ms: float = 0.0  # audio the recogniser decoded for the turn, decoded again after a resume


@dataclass(slots=True)
class _Prepared:
    turn: int
    text: str
    task: asyncio.Task[tuple[Speculation, bytes, float] | None]


@dataclass(slots=True)
class _Playout:
    """The reply being played: what was queued, so a cut can tell what was heard and resume from there."""

    clauses: list[tuple[str, int]] = field(default_factory=list)  # (text, frames) in playout order
    pcm: list[bytes] = field(default_factory=list)  # the same audio, one entry per clause
    start_index: int = 0  # position in the session's out queue where the reply's queued audio starts
    offset: int = 0  # frames of the reply before that point (heard before a resume)


class CallSession:
    def __init__(
        self,
        *,
        call_id: str,
        transport: CallTransport,
        policy: Dialogue,
        speech_model: SpeechEngine,
        synthesizer: Synthesizer,
        transcript: TranscriptSink,
        executor: Executor,
        timings: SessionTimings = SessionTimings(),
        escalation_target: str | None = None,
        tools: TimedTools | None = None,
        stt_executor: Executor | None = None,
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
        # Recogniser calls wait on speech workers; apart, they cannot starve the dialogue and synthesis.
        self._stt_executor = stt_executor or executor
        self._timings = timings
        self._tools = tools
        self._clock = clock
        self.state = CallState.GREETING
        self._endpointer = Endpointer(hangover_ms=timings.endpoint_hangover_ms)
        self._echo = EchoGate()
        self._feed = RecognitionFeed()
        self._paused = False  # the caller has been silent for `_URGENT_AFTER_MS` within a turn, or ended it
        self._recognizer: StreamingRecognizer | None = None
        self._async_recognizer: AsyncRecognizer | None = None  # the same one, if the loop can drive it
        self._economy_recognizer: EconomyRecognizer | None = None  # the same one, if it can decode cheaply
        self._stt = _SttInbox()
        self._events: asyncio.Queue[CallerTurn] = asyncio.Queue()
        self._pending: collections.deque[CallerTurn] = collections.deque()
        self._last_activity = clock()
        self._silences = 0
        self._tasks: list[asyncio.Task[Any]] = []
        self.telemetry: list[dict[str, Any]] = []
        # The turn being heard.
        self._turn = 0
        self._turn_onset_ms = 0
        self._partial = ""
        self._tentative: str | None = None  # transcript finalised early (speculation), if any
        self._speculating = False
        self._prepared: _Prepared | None = None
        self._completeness: tuple[str, Completeness] = ("", Completeness.UNFINISHED)
        self._frames_to_stt = 0  # caller frames queued for the recogniser ...
        self._frames_recognised = 0  # ... and those its partial already covers
        # Our audio: peaks of every frame queued since `_out_base` frames had been played, for the echo gate.
        self._out_peaks: list[int] = []
        self._out_base = 0
        self._seen_played = 0
        # Barge-in.
        self._playout: _Playout | None = None
        self._interrupted = asyncio.Event()
        self._cut_heard_frames = 0
        self._fillers: dict[str, bytes] = {}

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
        self._track_far_end()
        endpointer = self._endpointer
        if endpointer.in_speech and endpointer.trailing_silence_ms:
            endpointer.set_hangover(self._hangover_now())
        echo = self._echo.is_echo(frame)
        event = endpointer.process(frame, echo=echo)
        if isinstance(event, SpeechStarted):
            self._on_speech_started(event, frame)
            return
        if endpointer.in_speech:
            silence_ms = endpointer.trailing_silence_ms
            if silence_ms == 0:
                self._paused = False
                if self._speculating:
                    self._undo_speculation()  # the caller went on after a pause
            elif silence_ms >= _URGENT_AFTER_MS and not self._paused:
                self._paused = True
                if self._async_recognizer is not None:
                    self._async_recognizer.hurry()
            for decoded in self._feed.in_speech(frame, silence_ms):
                self._to_stt(decoded)
            self._maybe_speculate()
        elif isinstance(event, SpeechEnded):
            for decoded in self._feed.speech_ended(frame, endpointer.stream_ms - event.at_ms):
                self._to_stt(decoded)
            self._paused = True
            self._end_turn(event)
        else:
            self._feed.before_speech(frame)

    def _end_turn(self, event: SpeechEnded) -> None:
        silence_ms = self._endpointer.stream_ms - event.at_ms
        self._last_activity = self._clock()
        self._stt.put(
            _End(
                turn=self._turn,
                speech_end_at=self._last_activity - silence_ms / 1000,
                endpoint_ms=float(silence_ms),
                speech_ms=float(event.at_ms - self._turn_onset_ms),
            )
        )

    def on_dtmf(self, digit: str) -> None:
        now = self._clock()
        self._last_activity = now
        self._events.put_nowait(CallerTurn("dtmf", digit, now))

    def _on_speech_started(self, event: SpeechStarted, frame: bytes) -> None:
        self._last_activity = self._clock()
        self._turn += 1
        self._turn_onset_ms = event.at_ms
        self._paused = False
        self._partial = ""
        self._tentative = None
        self._speculating = False
        self._drop_prepared()
        for decoded in self._feed.speech_started(frame, over_agent=self._echo.far_end_active):
            self._to_stt(decoded)
        if self.state is CallState.SPEAKING and self._playout is not None:
            self._cut_playout()

    def _to_stt(self, frame: bytes) -> None:
        self._frames_to_stt += 1
        self._stt.put(frame)

    @property
    def _partial_is_current(self) -> bool:
        """Whether the partial covers what the caller said before this pause (the recogniser may lag
        under load). Frames of the pause itself carry no words: a partial that is behind by no more than
        the pause (and a couple of frames of look-ahead) has heard every word so far."""
        lag = self._frames_to_stt - self._frames_recognised
        pause = self._endpointer.trailing_silence_ms // 20
        return lag <= max(_CURRENT_WITHIN_FRAMES, pause + 2)

    def _hangover_now(self) -> int:
        text = self._tentative if self._tentative is not None else self._partial
        # Words judged on stale audio (the recogniser lags under load): "on monday" may already be "on
        # monday at ...". Then wait as for an unfinished phrase, until the recogniser catches up: once its
        # partial is current the words decide again, and a finished turn ends at once (its silence has
        # long passed the short hangover). A fixed 400 ms here ended turns inside mid-sentence pauses
        # whenever recognition ran more than 400 ms behind.
        stale = self._tentative is None and not self._partial_is_current
        if not text:
            return self._timings.hangovers.unfinished_ms if stale else self._timings.endpoint_hangover_ms
        cached_text, completeness = self._completeness
        if text != cached_text:
            completeness = turn_completeness(text)
            self._completeness = (text, completeness)
        hangover = self._timings.hangovers.hangover_ms(completeness)
        # While listening, a finished-sounding partial is finalised early (`_maybe_speculate`), and that
        # transcript decides, not the partial: a partial may still lack the word being searched ("on
        # monday", complete, of "on monday at ten", a bare hour) or hold a passing guess ("on to the
        # day"), and under load the transcript comes later than a short hangover. The reply waits for
        # that transcript anyway, so waiting for it here costs no time but keeps the caller's turn; once
        # it is in, `_on_tentative` ends the turn at once if its hangover has passed.
        waiting = self._tentative is None and self.state is CallState.LISTENING
        if stale or waiting:
            hangover = max(hangover, self._timings.hangovers.unfinished_ms)
        return hangover

    def _maybe_speculate(self) -> None:
        if self._speculating or self.state is not CallState.LISTENING:
            return  # only while the dialogue is idle: a copy is taken of it
        completeness = self._completeness[1]
        if not self._partial or completeness is Completeness.UNFINISHED:
            return
        if self._endpointer.trailing_silence_ms < self._timings.hangovers.speculate_at_ms(completeness):
            return
        self._speculating = True
        self._stt.put(_Speculate())
        # Work out the reply to the partial meanwhile: when the final transcript agrees (it mostly does),
        # the reply is ready before the recogniser has even finished.
        if self._partial_is_current:
            self._prepare_for(self._partial, self._turn)

    def _undo_speculation(self) -> None:
        self._speculating = False
        self._tentative = None
        self._drop_prepared()
        self._stt.put(_Resume())

    def _drop_prepared(self) -> None:
        self._prepared = None  # a task still running finishes on its own; its result is ignored

    # --- our audio: echo reference, playout bookkeeping ----------------------------------------------
    def _track_far_end(self) -> None:
        played = self._transport.frames_played
        peak = 0
        for sent in range(self._seen_played, played):
            index = sent - self._out_base
            if 0 <= index < len(self._out_peaks):
                peak = max(peak, self._out_peaks[index])
        self._seen_played = played
        self._echo.far_frame(peak)

    def _queue_audio(self, pcm: bytes) -> int:
        """Send audio to the transport; returns its number of frames."""
        if not pcm:
            return 0
        if len(pcm) % FRAME_BYTES:
            pcm += bytes(FRAME_BYTES - len(pcm) % FRAME_BYTES)
        played = self._transport.frames_played
        if played - self._out_base >= len(self._out_peaks):  # everything queued before went out
            self._out_base = played
            self._out_peaks = []
        frames = len(pcm) // FRAME_BYTES
        self._out_peaks.extend(
            frame_peak(pcm[i * FRAME_BYTES : (i + 1) * FRAME_BYTES]) for i in range(frames)
        )
        self._transport.play(pcm)
        return frames

    def _reply_frames_out(self, counter: int) -> int:
        playout = self._playout
        if playout is None:
            return 0
        return playout.offset + max(0, counter - self._out_base - playout.start_index)

    def _cut_playout(self) -> None:
        """Caller speech over the agent: stop our audio now; whether it was a real barge-in comes later."""
        # What reached the caller's ear: frames sent (RTP), or confirmed by marks where the transport can
        # tell (Twilio buffers audio on its side and drops it on `clear`).
        heard_counter = getattr(self._transport, "frames_heard", None)
        if not isinstance(heard_counter, int):
            heard_counter = self._transport.frames_played
        played = self._reply_frames_out(heard_counter)
        dropped = self._transport.flush()
        self._out_base = self._transport.frames_played
        self._out_peaks = []
        self._cut_heard_frames = played
        log.info("call %s: caller spoke over the agent, %d frames held back", self.call_id, dropped)
        self._enter(CallState.LISTENING)
        self._interrupted.set()

    # --- main loop ----------------------------------------------------------------------------------
    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        self._use(await loop.run_in_executor(self._stt_executor, self._speech_model.new_recognizer))
        self._tasks.append(asyncio.create_task(self._recognise()))
        fillers = loop.run_in_executor(self._executor, self._synthesize_fillers)
        try:
            started = self._clock()
            reply = await loop.run_in_executor(self._executor, self._policy.greet)
            greeting = TurnTelemetry(self.call_id, 0, kind="greeting", intent=reply.intent)
            if not await self._say(reply, greeting, started_at=started):
                return
            while self.state is not CallState.ENDED:
                turn = await self._next_turn()
                if turn is None:
                    if not await self._on_quiet():
                        return
                    continue
                if turn.kind == "utterance" and not turn.text:
                    continue  # a noise the VAD took for speech
                self._silences = 0
                if turn.kind == "utterance":
                    await self._record(TurnRecord("caller", turn.text, stt_ms=turn.stt_ms))
                if not await self._answer(turn):
                    return
        finally:
            for task in self._tasks:
                task.cancel()
            fillers.cancel()
            self.state = CallState.ENDED
            close = getattr(self._recognizer, "close", None)
            if callable(close):  # a pooled recogniser holds memory in a worker process
                with contextlib.suppress(Exception):
                    await loop.run_in_executor(self._stt_executor, close)

    async def _next_turn(self) -> CallerTurn | None:
        if self._pending:
            return self._pending.popleft()
        try:
            return await asyncio.wait_for(self._events.get(), 0.25)
        except TimeoutError:
            return None

    async def _on_quiet(self) -> bool:
        """Nothing heard for a while: reprompt after the configured silence. False when the call ends."""
        if self._endpointer.in_speech or self.state is not CallState.LISTENING:
            return True
        if self._clock() - self._last_activity < self._timings.reprompt_after_s:
            return True
        loop = asyncio.get_running_loop()
        self._silences += 1
        self._last_activity = self._clock()
        started = self._clock()
        reply = await loop.run_in_executor(self._executor, self._policy.on_silence, self._silences)
        telemetry = TurnTelemetry(self.call_id, self._turn, kind="silence", intent=reply.intent)
        return await self._say(reply, telemetry, started_at=started)

    async def _answer(self, turn: CallerTurn) -> bool:
        loop = asyncio.get_running_loop()
        self._enter(CallState.THINKING)
        telemetry = TurnTelemetry(
            self.call_id,
            turn.turn,
            kind=turn.kind,
            stt_ms=turn.stt_ms,
            endpoint_ms=turn.endpoint_ms,
            stt_economy=turn.stt_economy,
            stt_economy_depth=turn.stt_economy_depth,
            speech_ms=turn.speech_ms if turn.kind == "utterance" else None,
            stt_audio_ms=turn.stt_audio_ms if turn.kind == "utterance" else None,
        )
        first_pcm: bytes | None = None
        reply: AgentReply | None = None
        prepared = self._prepared
        self._prepared = None
        if (
            turn.kind == "utterance"
            and prepared is not None
            and prepared.turn == turn.turn
            and prepared.text == turn.text
        ):
            with contextlib.suppress(Exception):
                # Usually finished already; never slower than starting over (and a slow CRM gets fillers).
                outcome = await self._await_with_fillers(prepared.task, telemetry)
                if outcome is not None:
                    speculation, first_pcm, tts_ms = outcome
                    adopt_hook = getattr(self._policy, "adopt", None)
                    if callable(adopt_hook):
                        reply = adopt_hook(speculation)
                    else:
                        adopt(self._policy, speculation)
                        reply = speculation.reply
                    telemetry.tts_first_audio_ms = tts_ms
                    telemetry.outcome = "speculative"
        stream = getattr(self._policy, "stream", None)
        if reply is None and turn.kind == "utterance" and callable(stream):
            clauses = await loop.run_in_executor(self._executor, stream, turn.text)
            if clauses is not None:  # the language model answers, clause by clause as it writes
                return await self._say(None, telemetry, started_at=turn.at, stream=clauses)
        if reply is None:
            if turn.kind == "utterance":
                work = loop.run_in_executor(self._executor, self._policy.respond, turn.text)
            else:
                work = loop.run_in_executor(self._executor, self._policy.on_dtmf, turn.text)
            reply = await self._await_with_fillers(work, telemetry)
            first_pcm = None
        if self._tools is not None:
            telemetry.tool_ms = self._tools.take_ms()
        telemetry.llm_ms = float(getattr(self._policy, "last_llm_ms", 0.0) or 0.0)
        telemetry.intent = reply.intent
        return await self._say(reply, telemetry, started_at=turn.at, first_pcm=first_pcm)

    async def _await_with_fillers(self, work: asyncio.Future[_T], telemetry: TurnTelemetry) -> _T:
        """Wait for a reply; if it is slow, tell the caller we are on it instead of leaving dead air."""
        done, _ = await asyncio.wait({work}, timeout=self._timings.filler_after_ms / 1000)
        phrase = FILLER
        while not done:
            pcm = self._fillers.get(phrase)
            if pcm is not None:
                telemetry.outcome = "filler"
                frames = self._queue_audio(pcm)
                await self._record(TurnRecord("agent", phrase, "filler"))
                self._last_activity = self._clock()
                # The next filler, if still needed, starts when this one has played plus the dead-air bound.
                wait_s = frames * 0.02 + self._timings.max_dead_air_s
            else:
                wait_s = self._timings.max_dead_air_s
            done, _ = await asyncio.wait({work}, timeout=wait_s)
            phrase = STILL_WORKING
        return work.result()

    def _synthesize_fillers(self) -> None:
        for phrase in (FILLER, STILL_WORKING):
            self._fillers[phrase] = trim_leading_silence(self._synth.synthesize_8k(phrase))

    # --- speaking -----------------------------------------------------------------------------------
    async def _say(
        self,
        reply: AgentReply | None,
        telemetry: TurnTelemetry,
        *,
        started_at: float,
        first_pcm: bytes | None = None,
        stream: Iterator[str] | None = None,
    ) -> bool:
        """Say a reply (resuming it over backchannels), or the clauses of `stream` as they come; returns
        False when the call is over afterwards."""
        loop = asyncio.get_running_loop()
        self._enter(CallState.SPEAKING)
        self._interrupted.clear()
        playout = _Playout(start_index=self._queued_ahead())
        self._playout = playout
        barged_in = False
        clauses: Iterator[str] = (
            stream if stream is not None else iter(split_sentences(reply.text if reply else ""))
        )
        index = 0
        while True:
            if stream is None:
                clause = next(clauses, None)
            else:
                fetch = loop.run_in_executor(self._executor, next, clauses, None)
                clause = await (self._await_with_fillers(fetch, telemetry) if index == 0 else fetch)
            if clause is None:
                break
            if index == 0 and first_pcm is not None:
                pcm = first_pcm
            else:
                synth_started = self._clock()
                pcm = await loop.run_in_executor(self._executor, self._synth.synthesize_8k, clause)
                if index == 0:
                    pcm = trim_leading_silence(pcm)
                    telemetry.tts_first_audio_ms = (self._clock() - synth_started) * 1000
            if self._interrupted.is_set() and not await self._settle_interruption(playout):
                barged_in = True
                break
            if index == 0:
                telemetry.e2e_ms = (self._clock() - started_at) * 1000
            playout.clauses.append((clause, self._queue_audio(pcm)))
            playout.pcm.append(pcm)
            index += 1
        if stream is not None:
            if barged_in:  # stop the model's reply where the caller cut in
                await loop.run_in_executor(self._executor, _close, stream)
            streamed = getattr(self._policy, "last_reply", None)
            reply = (
                streamed if isinstance(streamed, AgentReply) else AgentReply(" ".join(playout_texts(playout)))
            )
            telemetry.intent = reply.intent
            telemetry.llm_ms = float(getattr(self._policy, "last_llm_ms", 0.0) or 0.0)
        assert reply is not None
        if not barged_in:
            barged_in = not await self._drain(playout)
        self._playout = None
        heard = heard_text(playout.clauses, self._cut_heard_frames) if barged_in else reply.text
        if barged_in:
            telemetry.outcome = "barge_in"
        record = telemetry.emit()
        self.telemetry.append(record)
        await self._record(
            TurnRecord("agent", heard or "...", reply.intent, e2e_ms=telemetry.e2e_ms, telemetry=record)
        )
        heard_hook = getattr(self._policy, "heard", None)
        if barged_in and callable(heard_hook):
            heard_hook(heard)  # what the caller heard of it, for the conversation memory
        self._last_activity = self._clock()
        if barged_in:
            return True  # the caller's words are answered next; a cut-off goodbye or transfer is not acted on
        if reply.transfer:
            return await self._transfer()
        if reply.hangup:
            await self._transport.hangup()
            self._enter(CallState.ENDED)
            return False
        if self.state is CallState.SPEAKING:
            self._enter(CallState.LISTENING)
        return True

    def _queued_ahead(self) -> int:
        """Frames already queued in front of the next audio (a filler still playing)."""
        unsent = len(self._out_peaks) - (self._transport.frames_played - self._out_base)
        return len(self._out_peaks) if unsent > 0 else 0

    async def _drain(self, playout: _Playout) -> bool:
        """Wait until the reply has played out, settling any caller speech over it on the way.
        False when the caller barged in for real."""
        while True:
            drained = asyncio.ensure_future(self._transport.wait_drained())
            interrupted = asyncio.ensure_future(self._interrupted.wait())
            try:
                await asyncio.wait({drained, interrupted}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                drained.cancel()
                interrupted.cancel()
            if not self._interrupted.is_set():
                return True
            if not await self._settle_interruption(playout):
                return False

    async def _settle_interruption(self, playout: _Playout) -> bool:
        """The caller spoke over the reply and playout stopped. Wait for what it was: a backchannel or a
        noise resumes the reply from a little before the cut (True); anything else is a barge-in (False,
        and the caller's turn is left for the main loop)."""
        turn = await self._events.get()
        self._interrupted.clear()
        backchannel = turn.kind == "utterance" and (
            not turn.text
            or (is_backchannel(turn.text) and turn.speech_ms <= self._timings.backchannel_max_ms)
        )
        if not backchannel:
            self._pending.append(turn)
            return False
        log.info("call %s: %r over the reply was not a barge-in; resuming", self.call_id, turn.text)
        if turn.text:
            await self._record(TurnRecord("caller", turn.text, "backchannel", stt_ms=turn.stt_ms))
        self._enter(CallState.SPEAKING)
        resume_from = max(0, self._cut_heard_frames - self._timings.resume_rewind_ms // 20)
        playout.offset = resume_from
        playout.start_index = self._queued_ahead()
        self._queue_audio(b"".join(playout.pcm)[resume_from * FRAME_BYTES :])
        return True

    async def _transfer(self) -> bool:
        loop = asyncio.get_running_loop()
        self._enter(CallState.TRANSFERRING)
        target = self._escalation_target
        if target is not None and await self._transport.transfer(target):
            self._enter(CallState.ENDED)
            return False
        # Nobody to hand over to: say so rather than leave the caller in silence, then end.
        await self._record(TurnRecord("agent", NO_ONE_AVAILABLE, "transfer_failed"))
        pcm = await loop.run_in_executor(self._executor, self._synth.synthesize_8k, NO_ONE_AVAILABLE)
        self._queue_audio(pcm)
        await self._transport.wait_drained()
        await self._transport.hangup()
        self._enter(CallState.ENDED)
        return False

    # --- recognition --------------------------------------------------------------------------------
    async def _recognise(self) -> None:
        """Feed caller speech to the recogniser in order, keep the partial, finalise turns."""
        open_utterance = False
        tentative: str | None = None  # finalised early; later audio is kept, not decoded, unless resumed
        tentative_at = 0.0
        turn_audio: list[bytes] = []
        decoded = 0  # bytes of the turn's audio fed to the recogniser, again after a resume
        while True:
            command = await self._stt.get()
            if isinstance(command, bytes):
                batch = [command, *self._stt.take_audio()]  # what arrived while the last feed ran
                audio = b"".join(batch)
                turn_audio.append(audio)
                if tentative is not None:
                    self._frames_recognised += len(batch)  # kept for a resume; the transcript is final
                    continue
                try:
                    if not open_utterance:
                        await self._stt_start()
                        open_utterance = True
                    decoded += len(audio)
                    self._partial = await self._stt_feed(audio)
                    self._frames_recognised += len(batch)
                except Exception:
                    log.exception("call %s: speech recognition failed", self.call_id)
                    open_utterance = await self._restart_recognizer()
            elif isinstance(command, _Speculate):
                if not open_utterance:
                    continue
                turn = self._turn
                try:
                    tentative = await self._stt_end()
                except Exception:
                    log.exception("call %s: speech recognition failed", self.call_id)
                    tentative = ""
                open_utterance = False
                tentative_at = self._clock()
                if turn == self._turn and self._speculating:
                    self._on_tentative(tentative.strip(), turn)
            elif isinstance(command, _Resume):
                if tentative is None:
                    continue
                tentative = None
                try:
                    await self._stt_start()
                    audio = b"".join(turn_audio)
                    decoded += len(audio)
                    self._partial = await self._stt_feed(audio)
                    open_utterance = True
                except Exception:
                    log.exception("call %s: speech recognition failed", self.call_id)
                    open_utterance = await self._restart_recognizer()
            else:
                text = ""
                finished_at = self._clock()
                if open_utterance:
                    try:
                        text = await self._stt_end()
                    except Exception:
                        log.exception("call %s: speech recognition failed", self.call_id)
                    finished_at = self._clock()
                elif tentative is not None:
                    text, finished_at = tentative, tentative_at
                open_utterance = False
                tentative = None
                turn_audio = []
                decoded_ms, decoded = decoded / (FRAME_BYTES / 20), 0
                text = text.strip()
                stt_ms = max(0.0, (finished_at - command.speech_end_at) * 1000)
                log.info("call %s: caller said %r (stt %.0f ms)", self.call_id, text, stt_ms)
                economy = self._economy_recognizer
                depth = economy.economy_depth if economy is not None else 0
                self._speculating = False
                self._tentative = None
                self._events.put_nowait(
                    CallerTurn(
                        "utterance",
                        text,
                        command.speech_end_at,
                        turn=command.turn,
                        stt_ms=stt_ms,
                        endpoint_ms=command.endpoint_ms,
                        speech_ms=command.speech_ms,
                        stt_economy=depth > 0,
                        stt_economy_depth=depth,
                        stt_audio_ms=decoded_ms,
                    )
                )

    def _use(self, recognizer: StreamingRecognizer) -> None:
        """Take `recognizer` for this call. Whether the event loop can drive it is decided here, once:
        an isinstance check against a runtime protocol costs ~8 us, too much for every 20 ms feed."""
        self._recognizer = recognizer
        self._async_recognizer = recognizer if isinstance(recognizer, AsyncRecognizer) else None
        self._economy_recognizer = recognizer if isinstance(recognizer, EconomyRecognizer) else None

    # The recogniser is looked up on every call: a failed one is replaced by `_restart_recognizer`.
    async def _stt_start(self) -> None:
        if self._async_recognizer is not None:
            await self._async_recognizer.start_utterance_async()
            return
        recognizer = self._recognizer
        assert recognizer is not None
        await asyncio.get_running_loop().run_in_executor(self._stt_executor, recognizer.start_utterance)

    async def _stt_feed(self, audio: bytes) -> str:
        if self._async_recognizer is not None:
            return await self._async_recognizer.feed_async(audio, urgent=self._paused)
        recognizer = self._recognizer
        assert recognizer is not None
        return await asyncio.get_running_loop().run_in_executor(self._stt_executor, _feed, recognizer, audio)

    async def _stt_end(self) -> str:
        if self._async_recognizer is not None:
            return await self._async_recognizer.end_utterance_async()
        recognizer = self._recognizer
        assert recognizer is not None
        return await asyncio.get_running_loop().run_in_executor(self._stt_executor, recognizer.end_utterance)

    async def _restart_recognizer(self) -> bool:
        loop = asyncio.get_running_loop()
        with contextlib.suppress(Exception):
            self._use(await loop.run_in_executor(self._stt_executor, self._speech_model.new_recognizer))
        return False

    def _on_tentative(self, text: str, turn: int) -> None:
        """The early transcript of a paused turn: set the hangover from it and prepare the reply. If the
        pause is already longer than that hangover, the turn ends now rather than at the next frame."""
        self._tentative = text
        self._prepare_for(text, turn)
        endpointer = self._endpointer
        if self.state is CallState.ENDED or not endpointer.in_speech:
            return
        endpointer.set_hangover(self._hangover_now())
        event = endpointer.end_if_due()
        if event is not None:
            self._end_turn(event)

    def _prepare_for(self, text: str, turn: int) -> None:
        if not text or self.state is not CallState.LISTENING:
            return
        prepared = self._prepared
        if prepared is not None and prepared.turn == turn and prepared.text == text:
            return  # already on it
        if turn_completeness(text) is Completeness.UNFINISHED:
            return
        task = asyncio.ensure_future(self._prepare(text))
        self._prepared = _Prepared(turn=turn, text=text, task=task)

    async def _prepare(self, text: str) -> tuple[Speculation, bytes, float] | None:
        loop = asyncio.get_running_loop()
        prepare = getattr(self._policy, "speculate", None)
        if callable(prepare):
            speculation = await loop.run_in_executor(self._executor, prepare, text)
        else:
            speculation = await loop.run_in_executor(self._executor, speculate, self._policy, text)
        if speculation is None:
            return None
        clauses = split_sentences(speculation.reply.text)
        if not clauses:
            return None
        started = self._clock()
        pcm = await loop.run_in_executor(self._executor, self._synth.synthesize_8k, clauses[0])
        return speculation, trim_leading_silence(pcm), (self._clock() - started) * 1000

    async def _record(self, turn: TurnRecord) -> None:
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(self._executor, self._transcript.add_turn, self.call_id, turn)
        except Exception:  # the transcript must never take the call down
            log.exception("call %s: could not record a turn", self.call_id)


def _close(stream: Iterator[str]) -> None:
    close = getattr(stream, "close", None)
    if callable(close):
        close()


def playout_texts(playout: _Playout) -> list[str]:
    return [text for text, _ in playout.clauses if text]


def _feed(recognizer: StreamingRecognizer, audio: bytes) -> str:
    recognizer.feed(audio)
    return recognizer.partial()

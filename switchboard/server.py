"""`switchboard serve`: one asyncio process serving the HTTP API (FastAPI, uvicorn) and the SIP/RTP agent."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import functools
import logging
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, cast

import uvicorn
from fastapi import FastAPI, HTTPException

from agent.dialogue import DialoguePolicy
from agent.engines import SpeechEngine, Synthesizer
from agent.llm import DEFAULT_SYSTEM_PROMPT, ChatClient, LlmDialogue
from agent.memory import ConversationMemory
from agent.router import CircuitBreaker, RoutedDialogue
from agent.session import CallSession, Dialogue, SessionTimings
from agent.stt import SpeechModels, SttError
from agent.stt_pool import RecognizerPool, loaded
from agent.telemetry import TimedTools
from agent.transport import CallTransport
from agent.tts import EspeakSynthesizer, TtsError
from agent.tts_cache import CachingSynthesizer
from agent.vocabulary import DomainVocabulary
from crm.calls import CallLog
from crm.db import create_engine_for, session_factory
from crm.migrate import upgrade_to_head
from crm.seed import seed_demo_business
from crm.vocabulary import load_vocabulary
from crm.web.app import install_admin
from crm.web.auth import AdminSettings, Authenticator, load_or_create_secret
from switchboard.config import Settings
from telephony.jitter import PlayoutPolicy
from telephony.media import MediaClock, RtpPortPool
from telephony.sip.ua import SipCall, UserAgent
from telephony.twilio.endpoint import TwilioEndpoint, TwilioSettings
from tools.api import ToolBox
from tools.toolbox import DatabaseToolBox
from workers.api import dead_letter_router
from workers.embedded import EmbeddedWorkers

log = logging.getLogger(__name__)


class StartupError(Exception):
    """A configured engine cannot be used: `switchboard serve` prints this (naming the setting) and exits."""


class Switchboard:
    """Everything the embedded default runs, wired together."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        # Recognition, synthesis and database work run here; sized for the cores we have.
        # Dialogue, tools, database and synthesis. Mostly waiting (database, the model server), so sized
        # for concurrent calls rather than cores; the CPU-heavy recognition runs in worker processes.
        self.executor = ThreadPoolExecutor(
            max_workers=max(16, 4 * (os.cpu_count() or 2)), thread_name_prefix="work"
        )
        # Calls into the speech workers (each blocks on a pipe while a worker decodes).
        self.stt_executor = ThreadPoolExecutor(max_workers=32, thread_name_prefix="stt")
        # Four interleaved 20 ms timers spread the per-tick work of many calls (measured: p99 7.1 -> 2.8 ms).
        self.clock = MediaClock(phases=4)
        self.ua = UserAgent(
            advertised_host=settings.advertised_host,
            port_pool=RtpPortPool(settings.rtp_port_min, settings.rtp_port_max),
            clock=self.clock,
            on_call=self.handle_call,
            max_calls=settings.max_calls,
            timers=settings.sip_timers,
            allowlist=settings.sip_allowlist,
            trunks=[trunk.to_trunk() for trunk in settings.sip_trunks],
            registrations=[registration.to_config() for registration in settings.sip_registrations],
            rtp_timeout_s=settings.rtp_timeout_s or None,
            # The agent consumes caller audio, it does not play it: start the jitter buffer at one frame
            # (20 ms sooner to the recogniser, every turn); it still grows on the first late packet.
            playout=PlayoutPolicy(min_delay_frames=1),
            session_expires=settings.sip_session_expires or None,
            ring_ms=settings.ring_ms,
            tcp=settings.sip_tcp,
            tls_server=settings.tls_server_context(),
            tls_client=settings.tls_client_context(),
            tls_port=settings.sip_tls_port,
        )
        self.twilio = TwilioEndpoint(_twilio_settings(settings), self, other_calls=lambda: len(self.ua.calls))
        self.app = self._make_app()
        self.sessions: dict[str, CallSession] = {}

    speech_models: SpeechModels | None = None  # pocketsphinx only

    def prepare(self) -> None:
        """Blocking start-up work: migrations, demo seed, speech model (run before the loop serves calls)."""
        settings = self.settings
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        url = settings.resolved_database_url
        upgrade_to_head(url)
        self.engine = create_engine_for(url)
        self.db = session_factory(self.engine)
        with self.db.begin() as session:
            if seed_demo_business(session, dt.date.today()):
                log.info("seeded the demo business into an empty database")
        with self.db() as session:
            vocabulary = load_vocabulary(session)
        self.speech_model = self._load_stt(vocabulary)
        self.synthesizer = CachingSynthesizer(self._load_tts())
        self.chat: ChatClient | None = None
        if settings.llm_url and settings.llm_model:
            key = settings.llm_api_key
            self.chat = ChatClient(
                settings.llm_url,
                settings.llm_model,
                api_key=key.get_secret_value() if key is not None else None,
                total_timeout_s=settings.llm_timeout_s,
            )
            log.info("open-ended requests go to %s (model %s)", settings.llm_url, settings.llm_model)
        # One breaker per process: once the model server is down, later calls do not each wait it out.
        self.breaker = CircuitBreaker()
        # Outbox delivery and the disk spool for writes made while the database is down (workers/).
        self.workers = EmbeddedWorkers.start(settings, self.engine)
        self.toolbox = DatabaseToolBox(
            self.db,
            external_sync=self.workers.external_sync,
            spool_write=self.workers.spool.put,
            notify=self.workers.wake,
        )
        self.call_log = CallLog(self.db)

    def _load_stt(self, vocabulary: DomainVocabulary) -> SpeechEngine:
        settings = self.settings
        if settings.stt == "faster-whisper":
            from agent.stt_whisper import WhisperEngine  # production profile only

            assert settings.whisper_model_dir is not None  # checked by Settings
            try:
                return WhisperEngine.load(
                    settings.whisper_model_dir,
                    compute_type=settings.whisper_compute_type,
                    num_workers=max(2, os.cpu_count() or 2),
                )
            except SttError as exc:
                where = f"SWITCHBOARD_WHISPER_MODEL_DIR={settings.whisper_model_dir}"
                raise StartupError(f"{where}: {exc}") from exc
        try:
            # The language model is built from the CRM's own vocabulary and rebuilt when it changes.
            self.speech_models = SpeechModels(
                vocabulary, settings.data_dir / "speech", passes=1 if settings.stt_passes == 1 else 2
            )
            processes = settings.stt_processes if settings.stt_processes is not None else os.cpu_count() or 1
            if processes == 0:
                return self.speech_models
            # pocketsphinx decodes holding the GIL: off the event loop's process, one worker per core.
            return RecognizerPool(
                functools.partial(loaded, self.speech_models.current),
                processes=processes,
                economy_at=settings.stt_economy_at or None,
            )
        except SttError as exc:
            raise StartupError(f"SWITCHBOARD_STT=pocketsphinx: {exc}") from exc

    def refresh_speech_model(self) -> bool:
        """Rebuild the recogniser's language model if the CRM's vocabulary (customer names, services,
        parts, order numbers) changed; calls that start afterwards use it. Blocking: run off the loop."""
        models = self.speech_models
        if models is None:
            return False
        with self.db() as session:
            vocabulary = load_vocabulary(session)
        if not models.refresh(vocabulary):
            return False
        if isinstance(self.speech_model, RecognizerPool):
            self.speech_model.replace_engine(models.current)
        return True

    async def _keep_speech_model_current(self) -> None:
        loop = asyncio.get_running_loop()
        interval = self.settings.vocabulary_refresh_s
        while interval > 0:
            await asyncio.sleep(interval)
            try:
                await loop.run_in_executor(self.executor, self.refresh_speech_model)
            except Exception:  # the current model stays in service
                log.exception("could not rebuild the speech model")

    def _load_tts(self) -> Synthesizer:
        settings = self.settings
        if settings.tts == "piper":
            from agent.tts_piper import PiperSynthesizer  # production profile only

            assert settings.piper_voice is not None  # checked by Settings
            try:
                return PiperSynthesizer(settings.piper_voice)
            except TtsError as exc:
                raise StartupError(f"SWITCHBOARD_PIPER_VOICE={settings.piper_voice}: {exc}") from exc
        return EspeakSynthesizer(voice=settings.tts_voice, rate_wpm=settings.tts_rate_wpm)

    def _dialogue(self, tools: ToolBox, caller_number: str, call_id: str) -> Dialogue:
        policy = DialoguePolicy(
            tools, caller_phone=caller_number, call_id=call_id, now=self.toolbox.local_now
        )
        llm = None
        if self.chat is not None:
            llm = LlmDialogue(
                self.chat, tools, system_prompt=DEFAULT_SYSTEM_PROMPT, memory=ConversationMemory()
            )
        return RoutedDialogue(policy, llm, self.breaker, llm_timeout_s=self.settings.llm_timeout_s)

    def _make_app(self) -> FastAPI:
        app = FastAPI(title="Switchboard", version="0.1.0")

        @app.get("/healthz")
        async def healthz() -> dict[str, Any]:
            return {
                "status": "ok",
                "active_calls": len(self.ua.calls),
                "sip": {"host": self.settings.sip_host, "port": self.ua.port},
            }

        @app.get("/api/calls/{call_id}")
        async def call_transcript(call_id: str) -> dict[str, Any]:
            loop = asyncio.get_running_loop()
            transcript = await loop.run_in_executor(self.executor, self.call_log.transcript, call_id)
            if transcript is None:
                raise HTTPException(status_code=404, detail=f"no call with id {call_id!r}")
            return transcript

        app.include_router(self.twilio.router())
        # Admin pages (/admin) and the CRM JSON API (/api); the database opens later, in prepare().
        install_admin(
            app,
            AdminSettings(
                sessions=lambda: self.db,
                secret_key=load_or_create_secret(self.settings.data_dir / "admin-secret"),
            ),
        )
        # Dead letters (workers/): JSON API and admin page, behind the same staff sign-in.
        dead_letter_auth = AdminSettings(
            sessions=lambda: self.db,
            secret_key=load_or_create_secret(self.settings.data_dir / "admin-secret"),
        )
        app.include_router(dead_letter_router(lambda: self.db, Authenticator(dead_letter_auth)))
        return app

    async def handle_call(self, call: SipCall) -> None:
        def attach(session: CallSession) -> None:
            call.audio_sink = session.on_audio
            call.dtmf_sink = session.on_dtmf

        await self.run_agent(
            call_id=call.call_id,
            transport=call,
            caller_number=call.remote_number or "anonymous",
            to_uri=call.local_uri,
            transport_name="sip",
            ended=call.ended,
            attach=attach,
            hangup_by=lambda: call.hangup_by,
        )

    async def run_agent(
        self,
        *,
        call_id: str,
        transport: CallTransport,
        caller_number: str,
        to_uri: str,
        transport_name: str,
        ended: asyncio.Event,
        attach: Callable[[CallSession], None],
        hangup_by: Callable[[], str | None],
    ) -> None:
        """Run the agent on one call, whatever transport carries it, until either side hangs up."""
        loop = asyncio.get_running_loop()
        customer = await loop.run_in_executor(self.executor, self.toolbox.lookup_customer, caller_number)
        await loop.run_in_executor(
            self.executor,
            lambda: self.call_log.start_call(
                call_id,
                from_number=caller_number,
                to_uri=to_uri,
                customer_id=customer.id if customer else None,
                transport=transport_name,
            ),
        )
        tools = TimedTools(self.toolbox.for_call(call_id))
        policy = self._dialogue(cast(ToolBox, tools), caller_number, call_id)
        session = CallSession(
            call_id=call_id,
            transport=transport,
            policy=policy,
            speech_model=self.speech_model,
            synthesizer=self.synthesizer,
            transcript=self.call_log,
            executor=self.executor,
            stt_executor=self.stt_executor,
            timings=SessionTimings(
                endpoint_hangover_ms=self.settings.endpoint_hangover_ms,
                reprompt_after_s=self.settings.reprompt_after_s,
            ),
            escalation_target=self.settings.escalation_target,
            tools=tools,
        )
        attach(session)
        self.sessions[call_id] = session
        run = asyncio.create_task(session.run())
        hung_up = asyncio.create_task(ended.wait())
        try:
            await asyncio.wait({run, hung_up}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            run.cancel()
            hung_up.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await run
            self.sessions.pop(call_id, None)
            if not ended.is_set():
                await transport.hangup()
            await loop.run_in_executor(self.executor, self.call_log.end_call, call_id, hangup_by())
            await loop.run_in_executor(self.executor, self.workers.after_call, call_id)

    async def serve(self) -> None:
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self.executor, self.prepare)
        await self.ua.start(self.settings.sip_host, self.settings.sip_port)
        refresher = asyncio.create_task(self._keep_speech_model_current())
        log.info(
            "SIP on %s at %s, HTTP on http://%s:%d, database %s",
            ", ".join(f"{name.lower()}:{port}" for name, port in self.ua.ports.items()),
            self.settings.sip_host,
            self.settings.http_host,
            self.settings.http_port,
            self.engine.url.render_as_string(hide_password=True),
        )
        config = uvicorn.Config(
            self.app,
            host=self.settings.http_host,
            port=self.settings.http_port,
            log_level=self.settings.log_level.lower(),
            lifespan="off",
        )
        server = uvicorn.Server(config)
        try:
            await server.serve()
        finally:
            refresher.cancel()
            await self.ua.close()
            self.workers.stop()
            if isinstance(self.speech_model, RecognizerPool):
                self.speech_model.close()
            self.executor.shutdown(wait=False, cancel_futures=True)
            self.stt_executor.shutdown(wait=False, cancel_futures=True)
            self.engine.dispose()


def _twilio_settings(settings: Settings) -> TwilioSettings:
    token = settings.twilio_auth_token
    return TwilioSettings(
        auth_token=token.get_secret_value() if token is not None else None,
        account_sid=settings.twilio_account_sid,
        public_url=settings.public_url,
        validate_signatures=not settings.twilio_skip_signature_check,
        max_calls=settings.max_calls,
        overflow_number=settings.twilio_overflow_number,
    )


def run_server(settings: Settings) -> None:
    board = Switchboard(settings)
    try:
        import uvloop
    except ImportError:  # uvloop is optional (e.g. Windows)
        asyncio.run(board.serve())
    else:
        uvloop.run(board.serve())

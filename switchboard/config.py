"""Configuration from command-line flags and `SWITCHBOARD_*` environment variables."""

from __future__ import annotations

import ipaddress
import ssl
from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, BaseModel, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from telephony.sip.outbound import RegistrationConfig, SipTrunk
from telephony.sip.session_timer import MIN_SE_FLOOR
from telephony.sip.transaction import TimerConfig

_TRANSPORTS = ("UDP", "TCP", "TLS")


def _transport(value: str) -> str:
    upper = value.upper()
    if upper not in _TRANSPORTS:
        raise ValueError(f"transport must be one of {', '.join(_TRANSPORTS)}, not {value!r}")
    return upper


class TrunkSettings(BaseModel):
    """A carrier or PBX to place calls through (SWITCHBOARD_SIP_TRUNKS is a JSON list of these)."""

    name: str
    host: str
    port: int = Field(5060, ge=1, le=65535)
    transport: str = "UDP"
    username: str | None = None
    password: SecretStr | None = None
    realm: str | None = None
    from_uri: str | None = None

    @field_validator("transport")
    @classmethod
    def _known_transport(cls, value: str) -> str:
        return _transport(value)

    def to_trunk(self) -> SipTrunk:
        password = self.password.get_secret_value() if self.password is not None else None
        return SipTrunk(
            self.name,
            self.host,
            self.port,
            self.transport,
            self.username,
            password,
            self.realm,
            self.from_uri,
        )


class RegistrationSettings(BaseModel):
    """A registration to keep (SWITCHBOARD_SIP_REGISTRATIONS is a JSON list of these)."""

    registrar: str
    aor: str
    username: str | None = None
    password: SecretStr | None = None
    realm: str | None = None
    expires: int = Field(3600, ge=60, le=86400)
    transport: str = "UDP"
    proxy: str | None = None  # "host:port" to send the REGISTER to instead of the registrar's address

    @field_validator("transport")
    @classmethod
    def _known_transport(cls, value: str) -> str:
        return _transport(value)

    def to_config(self) -> RegistrationConfig:
        proxy: tuple[str, int] | None = None
        if self.proxy:
            host, _, port = self.proxy.rpartition(":")
            proxy = (host.strip("[]"), int(port)) if host and port.isdigit() else (self.proxy, 5060)
        password = self.password.get_secret_value() if self.password is not None else None
        return RegistrationConfig(
            self.registrar,
            self.aor,
            self.username,
            password,
            self.realm,
            self.expires,
            self.transport,
            proxy,
        )


class Settings(BaseSettings):
    """Every setting can be given as `SWITCHBOARD_<NAME>` (flags of `switchboard serve` win over both)."""

    model_config = SettingsConfigDict(env_prefix="SWITCHBOARD_", env_file=None, extra="ignore")

    http_host: str = "127.0.0.1"
    http_port: int = Field(8080, ge=0, le=65535)
    sip_host: str = "127.0.0.1"
    sip_port: int = Field(5060, ge=0, le=65535)
    # Address written into SDP and Contact; defaults to sip_host (set it when binding 0.0.0.0).
    media_host: str | None = None
    rtp_port_min: int = Field(20000, ge=1024, le=65534)
    rtp_port_max: int = Field(29999, ge=1025, le=65535)
    data_dir: Path = Path("var")
    database_url: str | None = None
    max_calls: int = Field(200, ge=1)
    # SIP over TCP on the same port number as UDP; TLS on sip_tls_port once a certificate is configured.
    sip_tcp: bool = True
    sip_tls_port: int = Field(5061, ge=0, le=65535)
    sip_tls_cert: Path | None = None
    sip_tls_key: Path | None = None  # omit when the certificate file holds the key too
    sip_tls_ca: Path | None = None  # CA bundle to verify peers we connect to over TLS (default: system)
    # CIDRs allowed to send requests (e.g. the carrier's signalling addresses); empty allows everyone.
    sip_allowlist: list[str] = Field(default_factory=list)
    sip_trunks: list[TrunkSettings] = Field(default_factory=list)
    sip_registrations: list[RegistrationSettings] = Field(default_factory=list)
    # RFC 3261 timers T1/T2/T4.
    sip_t1_ms: int = Field(500, ge=10, le=10000)
    sip_t2_ms: int = Field(4000, ge=100, le=60000)
    sip_t4_ms: int = Field(5000, ge=100, le=60000)
    # Hang up (BYE with a Reason) after this long without RTP from a caller who should be sending; 0: never.
    rtp_timeout_s: float = Field(60.0, ge=0)
    # RFC 4028 session timers: the session interval we ask for and accept up to (s); 0: off. Calls are
    # refreshed with a re-INVITE (by whichever side the negotiation names) or ended with BYE when the
    # refreshes stop. RFC 4028 allows no interval below 90 s.
    sip_session_expires: int = Field(1800, ge=0)
    # Let an inbound call ring this long before answering (0 answers at once).
    ring_ms: int = Field(0, ge=0, le=120000)
    # Silence after speech that ends a caller turn.
    endpoint_hangover_ms: int = Field(400, ge=100, le=3000)
    reprompt_after_s: float = Field(6.0, gt=0)
    # Where "talk to a person" goes: sip:..., tel:+1..., or queue:NAME (Twilio). Unset: the agent apologises.
    escalation_target: str | None = None
    tts_voice: str = "en-us"
    tts_rate_wpm: int = Field(175, ge=80, le=450)
    # Engines. Defaults need nothing downloaded; the production profile points at model files by path.
    stt: Literal["pocketsphinx", "faster-whisper"] = "pocketsphinx"
    whisper_model_dir: Path | None = None  # a CTranslate2 Whisper conversion (model.bin, tokenizer.json)
    whisper_compute_type: str = "int8"
    # pocketsphinx worker processes (it decodes holding the GIL); unset: one per core; 0: in-process.
    stt_processes: int | None = Field(None, ge=0, le=64)
    # pocketsphinx decoding passes: 2 (default, fewer errors) or 1 (~15 % less speech-worker CPU under
    # load, more errors; figures in agent/stt.py).
    stt_passes: int = Field(2, ge=1, le=2)
    # A speech worker busy for this share of its time starts new utterances on cheaper settings (~40 % less
    # CPU, a few points more WER; agent/stt_pool.py) until its load falls by 0.15; 0: never.
    stt_economy_at: float = Field(0.85, ge=0, le=1)
    # How often to check whether the CRM's vocabulary changed and rebuild the language model (s; 0: never).
    vocabulary_refresh_s: float = Field(60.0, ge=0)
    tts: Literal["espeak", "piper"] = "espeak"
    piper_voice: Path | None = None  # voice.onnx, with voice.onnx.json beside it
    # Language model for open-ended requests (an OpenAI-compatible server such as vLLM); unset: policy only.
    llm_url: str | None = None
    llm_model: str | None = None
    llm_api_key: SecretStr | None = None
    llm_timeout_s: float = Field(3.0, gt=0, le=30)
    log_level: str = "INFO"
    # Twilio: the base URL Twilio reaches us at (behind a proxy or ngrok), used for the <Stream> URL and
    # to check X-Twilio-Signature, which signs the URL Twilio requested, not the one we see.
    public_url: str | None = None
    # Twilio's own variable names are read too, so an existing Twilio setup works unchanged.
    twilio_account_sid: str | None = Field(
        None, validation_alias=AliasChoices("twilio_account_sid", "TWILIO_ACCOUNT_SID")
    )
    twilio_auth_token: SecretStr | None = Field(
        None, validation_alias=AliasChoices("twilio_auth_token", "TWILIO_AUTH_TOKEN")
    )
    # Development only: accept Twilio requests without a valid signature (e.g. curl against localhost).
    twilio_skip_signature_check: bool = False
    twilio_overflow_number: str | None = None  # over capacity, <Dial> here instead of apologising

    @field_validator("sip_allowlist")
    @classmethod
    def _cidrs(cls, value: list[str]) -> list[str]:
        for cidr in value:
            ipaddress.ip_network(cidr.strip(), strict=False)  # ValueError names the bad entry
        return value

    @model_validator(mode="after")
    def _timers_ordered(self) -> Settings:
        if self.sip_t2_ms < self.sip_t1_ms:
            raise ValueError("sip_t2_ms must not be below sip_t1_ms")
        if self.sip_tls_key is not None and self.sip_tls_cert is None:
            raise ValueError("sip_tls_key given without sip_tls_cert")
        if self.stt == "faster-whisper" and self.whisper_model_dir is None:
            raise ValueError("SWITCHBOARD_STT=faster-whisper needs SWITCHBOARD_WHISPER_MODEL_DIR")
        if self.tts == "piper" and self.piper_voice is None:
            raise ValueError("SWITCHBOARD_TTS=piper needs SWITCHBOARD_PIPER_VOICE (path to voice.onnx)")
        if self.llm_url and not self.llm_model:
            raise ValueError("SWITCHBOARD_LLM_URL needs SWITCHBOARD_LLM_MODEL (the served model name)")
        return self

    @field_validator("sip_session_expires")
    @classmethod
    def _session_interval(cls, value: int) -> int:
        if 0 < value < MIN_SE_FLOOR:
            raise ValueError(f"must be 0 (off) or at least {MIN_SE_FLOOR} s (RFC 4028 section 4)")
        return value

    @field_validator("log_level")
    @classmethod
    def _upper(cls, value: str) -> str:
        return value.upper()

    @property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'switchboard.db').resolve()}"

    @property
    def sip_timers(self) -> TimerConfig:
        return TimerConfig(t1=self.sip_t1_ms / 1000, t2=self.sip_t2_ms / 1000, t4=self.sip_t4_ms / 1000)

    def tls_server_context(self) -> ssl.SSLContext | None:
        """The listening TLS context, or None when no certificate is configured (TLS stays off)."""
        if self.sip_tls_cert is None:
            return None
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.sip_tls_cert, self.sip_tls_key)
        return context

    def tls_client_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=self.sip_tls_ca)

    @property
    def advertised_host(self) -> str:
        if self.media_host:
            return self.media_host
        if self.sip_host in ("0.0.0.0", "::", ""):
            return "127.0.0.1"
        return self.sip_host

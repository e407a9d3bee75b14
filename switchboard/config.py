"""Configuration from command-line flags and `SWITCHBOARD_*` environment variables."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


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
    # Silence after speech that ends a caller turn.
    endpoint_hangover_ms: int = Field(400, ge=100, le=3000)
    reprompt_after_s: float = Field(6.0, gt=0)
    tts_voice: str = "en-us"
    tts_rate_wpm: int = Field(175, ge=80, le=450)
    log_level: str = "INFO"

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
    def advertised_host(self) -> str:
        if self.media_host:
            return self.media_host
        if self.sip_host in ("0.0.0.0", "::", ""):
            return "127.0.0.1"
        return self.sip_host

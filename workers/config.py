"""Worker settings: the server's settings plus the broker, the external CRM and the retry budget."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr

from switchboard.config import Settings


class WorkerSettings(Settings):
    """`SWITCHBOARD_<NAME>` like every other setting; without `redis_url` work runs in-process."""

    redis_url: str | None = None
    # External CRM sync: outcomes and bookings are POSTed here, signed with the secret. Unset: no sync.
    crm_webhook_url: str | None = None
    crm_webhook_secret: SecretStr | None = None
    crm_webhook_timeout_s: float = Field(5.0, gt=0)
    # How often the dispatcher looks for due messages, and how long a handed-out message is leased.
    outbox_poll_s: float = Field(1.0, gt=0)
    outbox_lease_s: float = Field(30.0, gt=0)
    outbox_batch: int = Field(500, ge=1)
    outbox_task_batch: int = Field(20, ge=1)  # messages per Celery task
    # Exponential backoff with jitter: attempt n waits about base * 2**n, capped; dead after max_attempts.
    retry_base_s: float = Field(0.5, gt=0)
    retry_cap_s: float = Field(60.0, gt=0)
    retry_max_attempts: int = Field(12, ge=1)
    spool_dir: Path | None = None  # default: <data_dir>/spool

    @property
    def resolved_spool_dir(self) -> Path:
        return self.spool_dir if self.spool_dir is not None else self.data_dir / "spool"

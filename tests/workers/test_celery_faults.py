"""Fault tests: a real Celery worker subprocess on a private Redis delivers 1,000 outbox writes to a real
HTTP endpoint while the endpoint, the worker or the broker fails. Each test counts the writes the endpoint
applied and asserts exact equality with what was recorded."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from crm import outbox
from crm.db import create_engine_for, session_factory
from crm.migrate import upgrade_to_head
from crm.models import DeadLetter, OutboxMessage
from crm.outbox import OutboxWrite
from tests.workers.peers import CHECKOUT, CeleryWorker, ExternalCrm, RedisServer, external_crm, wait_until

SECRET = "test-webhook-secret"
WRITES = 1000


@dataclass
class Rig:
    redis: RedisServer
    crm: ExternalCrm
    worker: CeleryWorker
    sessions: sessionmaker[Session]

    def delivered(self) -> int:
        with self.sessions() as session:
            count = session.scalar(
                select(func.count()).select_from(OutboxMessage).where(OutboxMessage.status == "delivered")
            )
            return int(count or 0)

    def dead_letters(self) -> int:
        with self.sessions() as session:
            return int(session.scalar(select(func.count()).select_from(DeadLetter)) or 0)


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    redis = RedisServer(tmp_path / "redis")
    redis.start()
    url = f"sqlite:///{tmp_path / 'crm.sqlite3'}"
    upgrade_to_head(url)
    engine = create_engine_for(url)
    # 10 ms per request: deliveries outpace dispatch, so a kill or a restart lands mid-delivery.
    with external_crm(SECRET, delay_s=0.01) as crm:
        env = dict(
            os.environ,
            PYTHONPATH=str(CHECKOUT),
            SWITCHBOARD_REDIS_URL=redis.url,
            SWITCHBOARD_DATABASE_URL=url,
            SWITCHBOARD_DATA_DIR=str(tmp_path / "data"),
            SWITCHBOARD_CRM_WEBHOOK_URL=crm.url,
            SWITCHBOARD_CRM_WEBHOOK_SECRET=SECRET,
            SWITCHBOARD_OUTBOX_POLL_S="0.5",
            SWITCHBOARD_OUTBOX_LEASE_S="10",
            SWITCHBOARD_OUTBOX_BATCH="200",
            SWITCHBOARD_RETRY_BASE_S="0.5",
            SWITCHBOARD_RETRY_CAP_S="8",
            SWITCHBOARD_RETRY_MAX_ATTEMPTS="100",
        )
        worker = CeleryWorker(env, tmp_path / "worker.log")
        try:
            yield Rig(redis, crm, worker, session_factory(engine))
        finally:
            worker.stop()
            redis.stop()
            engine.dispose()


def record_writes(sessions: sessionmaker[Session], count: int) -> set[str]:
    keys = set()
    with sessions.begin() as session:
        for number in range(count):
            key = outbox.idempotency_key("test-call", number)
            outbox.record(
                session,
                OutboxWrite(
                    kind="booking.create",
                    destination="external",
                    payload={"booking_id": number, "service": "oil change"},
                    idempotency_key=key,
                ),
            )
            keys.add(key)
    return keys


def assert_applied_exactly_once(rig: Rig, keys: set[str]) -> None:
    assert set(rig.crm.applied) == keys
    assert rig.crm.applied_count() == WRITES
    assert rig.crm.bad_signatures == 0
    assert rig.delivered() == WRITES
    assert rig.dead_letters() == 0


def test_external_crm_down_for_30_s_then_back(rig: Rig) -> None:
    keys = record_writes(rig.sessions, WRITES)
    rig.crm.down()
    rig.worker.start()
    outage_started = time.monotonic()
    time.sleep(30.0)
    assert rig.crm.applied_count() == 0
    with rig.sessions() as session:
        least_attempts = session.scalar(select(func.min(OutboxMessage.attempts)))
    # Every write was tried, failed and tried again with backoff meanwhile.
    assert least_attempts is not None and least_attempts >= 2, rig.worker.log()[-3000:]
    rig.crm.up()
    wait_until(lambda: rig.delivered() == WRITES, 60, "every write to be delivered after the outage")
    print(
        f"outage {time.monotonic() - outage_started:.1f} s; repeats absorbed: {sum(rig.crm.repeats.values())}"
    )
    assert_applied_exactly_once(rig, keys)


def test_worker_sigkilled_mid_delivery_then_restarted(rig: Rig) -> None:
    keys = record_writes(rig.sessions, WRITES)
    rig.worker.start()
    wait_until(lambda: rig.crm.applied_count() >= 300, 60, "deliveries to be under way")
    rig.worker.kill()
    killed_at = rig.crm.applied_count()
    assert killed_at < WRITES
    rig.worker.start()
    wait_until(lambda: rig.delivered() == WRITES, 90, "every write to be delivered after the restart")
    print(f"killed after {killed_at} deliveries; repeats absorbed: {sum(rig.crm.repeats.values())}")
    assert_applied_exactly_once(rig, keys)


def test_redis_restarted_mid_delivery(rig: Rig) -> None:
    keys = record_writes(rig.sessions, WRITES)
    rig.worker.start()
    wait_until(lambda: rig.crm.applied_count() >= 300, 60, "deliveries to be under way")
    rig.redis.stop()  # every queued task is gone with it: no persistence
    stopped_at = rig.crm.applied_count()
    time.sleep(2.0)
    rig.redis.start()
    restarted = time.monotonic()
    try:
        wait_until(lambda: rig.delivered() == WRITES, 90, "every write to be delivered after Redis returned")
    except AssertionError:
        print(rig.worker.log()[-6000:])
        raise
    print(f"all delivered {time.monotonic() - restarted:.1f} s after Redis returned")
    print(f"Redis restarted after {stopped_at} deliveries; repeats: {sum(rig.crm.repeats.values())}")
    assert_applied_exactly_once(rig, keys)

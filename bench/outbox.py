"""Outbox figures: delivery throughput with one Celery worker, and what the durable record costs a call.

- Throughput: a private redis-server, one Celery worker process (concurrency 1) with its beat, a local
  HTTP receiver that checks signatures; N writes are recorded at once and timed until all are delivered.
- Call-path cost: `DatabaseToolBox.book` with and without the outbox record in its transaction,
  interleaved so both see the same database state; the p99 difference is what the record adds. The disk
  spool's `put` (two fsyncs) is timed too: it is what a call pays when the database is down.

Uses the test peers (tests.workers.peers), so run it from the project root.
"""

from __future__ import annotations

import datetime as dt
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from sqlalchemy import func, select

from crm import outbox
from crm.db import create_engine_for, session_factory
from crm.migrate import upgrade_to_head
from crm.models import OutboxMessage
from crm.outbox import OutboxWrite
from crm.seed import seed_demo_business
from tools.api import SlotUnavailable
from tools.toolbox import DatabaseToolBox
from workers.spool import WriteSpool

SECRET = "bench-secret"
SEED_DAY = dt.date(2026, 11, 18)
WALL_CLOCK = dt.datetime(2026, 11, 18, 8, 0)


def _percentile(samples: list[float], fraction: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def _summary(samples_ms: list[float]) -> dict[str, float]:
    return {
        "p50_ms": round(statistics.median(samples_ms), 3),
        "p99_ms": round(_percentile(samples_ms, 0.99), 3),
        "max_ms": round(max(samples_ms), 3),
    }


def measure_call_path(directory: Path, bookings: int) -> dict[str, Any]:
    url = f"sqlite:///{directory / 'callpath.sqlite3'}"
    upgrade_to_head(url)
    engine = create_engine_for(url)
    sessions = session_factory(engine)
    with sessions.begin() as session:
        seed_demo_business(session, SEED_DAY)
    plain = DatabaseToolBox(sessions, now=lambda: WALL_CLOCK)
    synced = DatabaseToolBox(sessions, now=lambda: WALL_CLOCK, external_sync=True)
    without: list[float] = []
    with_record: list[float] = []
    day = SEED_DAY
    index = 0
    while len(with_record) < bookings:
        day += dt.timedelta(days=1)
        for slot in plain.find_slots("oil change", day):
            for _bay in range(3):
                toolbox, samples = (synced, with_record) if index % 2 else (plain, without)
                started = time.perf_counter()
                try:
                    toolbox.book(1 + index % 3, "oil change", slot.start)
                except SlotUnavailable:
                    break  # slots overlap, so some fill before their third booking
                samples.append((time.perf_counter() - started) * 1000.0)
                index += 1
    spool = WriteSpool(directory / "spool")
    spool_ms: list[float] = []
    for index in range(200):
        write = OutboxWrite("booking.create", "crm", {"n": index}, outbox.idempotency_key("bench", index))
        started = time.perf_counter()
        spool.put(write)
        spool_ms.append((time.perf_counter() - started) * 1000.0)
    engine.dispose()
    return {
        "bookings_each": bookings,
        "book_without_outbox": _summary(without),
        "book_with_outbox": _summary(with_record),
        "outbox_record_added_p99_ms": round(_percentile(with_record, 0.99) - _percentile(without, 0.99), 3),
        "outbox_record_added_p50_ms": round(statistics.median(with_record) - statistics.median(without), 3),
        "spool_put": _summary(spool_ms),
    }


def measure_throughput(directory: Path, writes: int, concurrency: int) -> dict[str, Any]:
    from tests.workers.peers import CHECKOUT, CeleryWorker, RedisServer, external_crm, wait_until

    url = f"sqlite:///{directory / 'throughput.sqlite3'}"
    upgrade_to_head(url)
    engine = create_engine_for(url)
    sessions = session_factory(engine)
    redis = RedisServer(directory / "redis")
    redis.start()
    try:
        with external_crm(SECRET) as crm:
            env = dict(
                os.environ,
                PYTHONPATH=str(CHECKOUT),
                SWITCHBOARD_REDIS_URL=redis.url,
                SWITCHBOARD_DATABASE_URL=url,
                SWITCHBOARD_DATA_DIR=str(directory / "data"),
                SWITCHBOARD_CRM_WEBHOOK_URL=crm.url,
                SWITCHBOARD_CRM_WEBHOOK_SECRET=SECRET,
                SWITCHBOARD_OUTBOX_POLL_S="0.2",
                SWITCHBOARD_OUTBOX_BATCH="1000",
                SWITCHBOARD_OUTBOX_LEASE_S="120",
            )
            worker = CeleryWorker(env, directory / "worker.log", concurrency=concurrency)
            worker.start()
            try:
                with sessions.begin() as session:
                    outbox.record(session, OutboxWrite("warmup", "external", {}, "warmup"))
                wait_until(lambda: crm.applied_count() == 1, 60, "the worker to deliver a first write")
                with sessions.begin() as session:
                    for index in range(writes):
                        key = outbox.idempotency_key("bench", index)
                        outbox.record(session, OutboxWrite("analytics.event", "external", {"n": index}, key))
                started = time.perf_counter()

                def delivered() -> bool:
                    with sessions() as session:
                        query = select(func.count()).select_from(OutboxMessage)
                        pending = session.scalar(query.where(OutboxMessage.status == "pending"))
                        return pending == 0

                wait_until(delivered, 600, "every write to be delivered", poll_s=0.02)
                elapsed = time.perf_counter() - started
            finally:
                worker.stop()
            return {
                "writes": writes,
                "worker_processes": concurrency,
                "seconds": round(elapsed, 3),
                "writes_per_s": round(writes / elapsed, 1),
                "applied_at_receiver": crm.applied_count() - 1,
                "repeats_absorbed": sum(crm.repeats.values()),
            }
    finally:
        redis.stop()
        engine.dispose()


def run_outbox_bench(*, writes: int, bookings: int, concurrency: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="switchboard-outbox-bench-") as name:
        directory = Path(name)
        return {
            "bench": "outbox",
            "database": "sqlite",
            "throughput": measure_throughput(directory, writes, concurrency),
            "call_path": measure_call_path(directory, bookings),
        }

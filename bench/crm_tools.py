"""Latency of every agent tool against a large PostgreSQL CRM: 100,000 customers, 1,000,000 bookings.

A scratch database is created (crm.scratch), migrated, seeded with the demo business, then bulk-loaded
with COPY. Bookings spread over ten years around today (five back, five ahead), Monday to Saturday within
opening hours; the business gets enough bays for that many bookings (a chain's worth: a 3-bay garage
could never hold a million). Each tool then runs through `DatabaseToolBox` (the same code path as a
call, one transaction each) many times with random customers, dates and ids, and p50/p95 are printed
as one JSON object.

    .venv/bin/python bench/crm_tools.py [--customers 100000] [--bookings 1000000] [--iterations 400]
    switchboard bench crm ...
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import random
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import psycopg

from crm.db import create_engine_for, session_factory
from crm.migrate import upgrade_to_head
from crm.scratch import create_postgres_database, drop_postgres_database
from crm.seed import seed_demo_business
from tests.services import POSTGRES_URL
from tools.api import ToolError
from tools.toolbox import DatabaseToolBox

BAYS = 60
SERVICE_MINUTES = {1: 30, 2: 30, 3: 45, 4: 30, 5: 120}  # demo service ids -> duration (crm.seed order)
QUESTIONS = (
    "what time do you open on saturday",
    "where are you located",
    "can I pay with a credit card",
    "what is your cancellation policy",
    "do you take apple pay",
    "is there parking",
)
SPOKEN_ITEMS = ("wiper blades", "brake pads", "car battery", "motor oil", "twenty four f battery", "wipers")


def _libpq(url: str) -> str:
    return url.replace("postgresql+psycopg://", "postgresql://")


def customer_phone(index: int) -> str:
    return f"+1720{index:07d}"  # distinct from the seeded +1555... numbers


def load(url: str, *, customers: int, bookings: int, today: dt.date, rng: random.Random) -> dict[str, float]:
    """Bulk-load customers, bookings and orders with COPY; seconds per phase."""
    timings: dict[str, float] = {}
    with psycopg.connect(_libpq(url)) as connection:
        connection.execute("UPDATE businesses SET bay_count = %s", (BAYS,))
        started = time.perf_counter()
        with connection.cursor().copy(
            "COPY customers (phone, name, email, notes, created_at) FROM STDIN"
        ) as copy:
            now = dt.datetime.now(dt.UTC).replace(tzinfo=None)
            for index in range(customers):
                copy.write_row((customer_phone(index), f"Customer {index}", None, "", now))
        timings["customers_s"] = time.perf_counter() - started

        first_id = connection.execute("SELECT min(id) FROM customers WHERE phone LIKE '+1720%'").fetchone()
        assert first_id is not None
        started = time.perf_counter()
        statuses = ["confirmed"] * 17 + ["cancelled"] * 2 + ["needs_review"]
        start_day = today - dt.timedelta(days=5 * 365)
        span_days = 10 * 365
        columns = 'customer_id, service_id, start, "end", status, source_call_id, created_at, updated_at'
        with connection.cursor().copy(f"COPY bookings ({columns}) FROM STDIN") as copy:
            for _ in range(bookings):
                day = start_day + dt.timedelta(days=rng.randrange(span_days))
                if day.weekday() == 6:
                    day -= dt.timedelta(days=1)  # Sunday: closed, move to Saturday
                closing = 13 if day.weekday() == 5 else 18
                opening = 9 if day.weekday() == 5 else 8
                service = rng.choice((1, 1, 1, 2, 2, 3, 4, 5)) if closing == 18 else rng.choice((1, 2, 3, 4))
                minutes = SERVICE_MINUTES[service]
                slot = rng.randrange(((closing - opening) * 60 - minutes) // 15 + 1)
                start = dt.datetime.combine(day, dt.time(opening)) + dt.timedelta(minutes=15 * slot)
                copy.write_row(
                    (
                        first_id[0] + rng.randrange(customers),
                        service,
                        start,
                        start + dt.timedelta(minutes=minutes),
                        rng.choice(statuses),
                        None,
                        now,
                        now,
                    )
                )
        timings["bookings_s"] = time.perf_counter() - started

        started = time.perf_counter()
        with connection.cursor().copy(
            "COPY orders (number, customer_id, description, status) FROM STDIN"
        ) as copy:
            for index in range(customers):
                copy.write_row((f"C{index}", first_id[0] + index, "parts order", "ready for pickup"))
        connection.commit()
        timings["orders_s"] = time.perf_counter() - started
    with psycopg.connect(_libpq(url), autocommit=True) as connection:
        started = time.perf_counter()
        connection.execute("VACUUM ANALYZE")
        timings["vacuum_analyze_s"] = time.perf_counter() - started
    return timings


def percentile(sorted_ms: list[float], fraction: float) -> float:
    return sorted_ms[min(len(sorted_ms) - 1, round(fraction * (len(sorted_ms) - 1)))]


def measure(name: str, call: Callable[[], object], iterations: int) -> dict[str, Any]:
    durations: list[float] = []
    errors: dict[str, int] = {}
    for _ in range(iterations):
        started = time.perf_counter()
        try:
            call()
        except ToolError as exc:  # a taken slot is an answer too; count it, keep its latency
            errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1
        durations.append((time.perf_counter() - started) * 1000.0)
    durations.sort()
    return {
        "n": iterations,
        "p50_ms": round(statistics.median(durations), 2),
        "p95_ms": round(percentile(durations, 0.95), 2),
        "max_ms": round(durations[-1], 2),
        "errors": errors,
    }


def run(*, customers: int, bookings: int, iterations: int, admin_url: str, keep: bool) -> dict[str, Any]:
    rng = random.Random(20261121)
    today = dt.date.today()
    url = create_postgres_database(admin_url, prefix="switchboard_bench")
    engine = create_engine_for(url, pool_size=4)
    try:
        started = time.perf_counter()
        upgrade_to_head(url)
        with session_factory(engine).begin() as session:
            seed_demo_business(session, today)
        timings = load(url, customers=customers, bookings=bookings, today=today, rng=rng)
        timings["total_load_s"] = time.perf_counter() - started
        toolbox = DatabaseToolBox(session_factory(engine))
        with psycopg.connect(_libpq(url)) as connection:
            first = connection.execute("SELECT min(id), max(id) FROM customers").fetchone()
            future_ids = [
                row[0]
                for row in connection.execute(
                    "SELECT id FROM bookings WHERE start > now() + interval '1 day' "
                    "AND status <> 'cancelled' ORDER BY random() LIMIT 20000"
                )
            ]
            assert first is not None and future_ids
        low_customer, high_customer = first

        def random_day() -> dt.date:
            return today + dt.timedelta(days=rng.randrange(1, 365))

        def random_start() -> dt.datetime:
            day = random_day()
            if day.weekday() >= 5:
                day += dt.timedelta(days=7 - day.weekday())
            return dt.datetime.combine(day, dt.time(rng.randrange(8, 17), rng.choice((0, 15, 30, 45))))

        def future_booking() -> int:
            chosen: int = rng.choice(future_ids)
            return chosen

        services = ("oil change", "tire rotation", "brake inspection", "battery replacement")
        cases: dict[str, Callable[[], object]] = {
            "lookup_customer": lambda: toolbox.lookup_customer(customer_phone(rng.randrange(customers))),
            "find_slots": lambda: toolbox.find_slots(rng.choice(services), random_day()),
            "book": lambda: toolbox.book(
                rng.randrange(low_customer, high_customer + 1), rng.choice(services), random_start()
            ),
            "reschedule": lambda: toolbox.reschedule(future_booking(), random_start()),
            "cancel": lambda: toolbox.cancel_booking(future_booking()),
            "get_booking": lambda: toolbox.get_booking(rng.randrange(1, bookings)),
            "upcoming_bookings": lambda: toolbox.upcoming_bookings(
                rng.randrange(low_customer, high_customer + 1)
            ),
            "order_status": lambda: toolbox.order_status(f"C{rng.randrange(customers)}"),
            "check_inventory": lambda: toolbox.check_inventory(rng.choice(SPOKEN_ITEMS)),
            "business_info": lambda: toolbox.search_business_info(rng.choice(QUESTIONS)),
            "business_details": toolbox.business_info,
        }
        for call in cases.values():  # warm the pool and the caches
            for _ in range(5):
                with contextlib.suppress(ToolError):
                    call()
        results = {name: measure(name, call, iterations) for name, call in cases.items()}
        return {
            "customers": customers,
            "bookings": bookings,
            "bays": BAYS,
            "iterations": iterations,
            "load": {key: round(value, 1) for key, value in timings.items()},
            "tools": results,
            "target_p95_ms": 20,
            "all_under_target": all(result["p95_ms"] <= 20 for result in results.values()),
            "database": url if keep else None,
        }
    finally:
        engine.dispose()
        if not keep:
            drop_postgres_database(admin_url, url)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--customers", type=int, default=100_000)
    parser.add_argument("--bookings", type=int, default=1_000_000)
    parser.add_argument("--iterations", type=int, default=400, help="calls per tool (default 400)")
    parser.add_argument("--postgres", default=POSTGRES_URL, help="admin URL of the PostgreSQL server")
    parser.add_argument("--keep", action="store_true", help="keep the scratch database and print its URL")
    args = parser.parse_args(argv)
    result = run(
        customers=args.customers,
        bookings=args.bookings,
        iterations=args.iterations,
        admin_url=args.postgres,
        keep=args.keep,
    )
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

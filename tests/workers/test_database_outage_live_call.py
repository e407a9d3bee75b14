"""A live SIP call to `switchboard serve` while its PostgreSQL goes away: the caller is told the booking is
noted, the call goes on to its goodbye, and the booking lands exactly once when the database is back."""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from pathlib import Path

import sqlalchemy as sa

from switchboard.caller import place_test_call
from tests.e2e.conftest import running_server
from tests.e2e.test_booking_call import booking_day
from tests.workers.postgres_server import PrivatePostgres

MARCUS = "+15550100002"


def oil_changes(url: str) -> list[tuple[str, str]]:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as connection:
            rows = connection.execute(
                sa.text(
                    "SELECT b.start, b.status FROM bookings b JOIN customers c ON c.id = b.customer_id "
                    "JOIN services s ON s.id = b.service_id "
                    "WHERE c.phone = :phone AND s.name = 'oil change'"
                ),
                {"phone": MARCUS},
            ).all()
        return [(str(start), status) for start, status in rows]
    finally:
        engine.dispose()


def test_live_call_survives_postgres_outage(postgres: PrivatePostgres, tmp_path: Path) -> None:
    spoken_day, day = booking_day()
    lines = [
        "I'd like to book an oil change",
        f"{spoken_day} at ten in the morning",
        "yes",
        "no thanks goodbye",
    ]
    serve_dir = tmp_path / "serve"
    serve_dir.mkdir()
    with running_server(serve_dir, postgres.url) as server:

        async def stop_database_before_yes(index: int) -> None:
            if index == 2:
                await asyncio.get_running_loop().run_in_executor(None, postgres.stop)

        result = asyncio.run(
            place_test_call(
                server.sip_uri, from_number=MARCUS, lines=lines, before_line=stop_database_before_yes
            )
        )
        # The call carried on through the outage: every line got a spoken answer, and the agent said goodbye.
        assert [turn.latency_ms is not None for turn in result.turns] == [True] * 4, (result, server.log())
        assert result.hangup == "agent", server.log()
        assert oil_changes_while_down_is_impossible(postgres)

        postgres.start()
        deadline = time.monotonic() + 60
        landed: list[tuple[str, str]] = []
        while time.monotonic() < deadline:
            landed = oil_changes(postgres.url)
            if landed:
                break
            time.sleep(0.5)
        time.sleep(2)  # a duplicate delivery would show up by now
        landed = oil_changes(postgres.url)
        assert landed == [(str(dt.datetime.combine(day, dt.time(10, 0))), "confirmed")], (
            landed,
            server.log(),
        )


def oil_changes_while_down_is_impossible(postgres: PrivatePostgres) -> bool:
    """The database really was down during the call (so the booking cannot have been written directly)."""
    try:
        oil_changes(postgres.url)
    except sa.exc.OperationalError:
        return True
    return False

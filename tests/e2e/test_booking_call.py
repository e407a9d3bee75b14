"""A caller phones the running server over real SIP/RTP and books an oil change."""

from __future__ import annotations

import datetime as dt
import json
import urllib.parse
import urllib.request
from zoneinfo import ZoneInfo

import sqlalchemy as sa

from crm.seed import BUSINESS_TIMEZONE
from tests.e2e.conftest import RunningServer, run_test_call

WEEKDAYS = ["monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday"]


def booking_day(today: dt.date | None = None) -> tuple[str, dt.date]:
    """Tomorrow if the garage is open at 10 AM then (Mon-Sat), else the following Monday. "Tomorrow" is
    the garage's: the agent hears it in the business's time zone, which need not be the machine's (at
    00:30 UTC on a Sunday it is still Saturday in New York, and tomorrow is a closed Sunday)."""
    if today is None:
        today = dt.datetime.now(ZoneInfo(BUSINESS_TIMEZONE)).date()
    day = today + dt.timedelta(days=1)
    if day.weekday() < 6:
        return "tomorrow", day
    day += dt.timedelta(days=1)
    return f"on {WEEKDAYS[day.weekday()]}", day


def test_marcus_books_an_oil_change(server: RunningServer) -> None:
    spoken_day, day = booking_day()
    result = run_test_call(
        server,
        "+15550100002",
        ["I'd like to book an oil change", f"{spoken_day} at ten in the morning", "yes"],
    )
    assert [turn["caller"] for turn in result["turns"]] == [
        "I'd like to book an oil change",
        f"{spoken_day} at ten in the morning",
        "yes",
    ]
    for turn in result["turns"]:
        assert turn["latency_ms"] is not None, result
        assert 0 < turn["latency_ms"] < 3000, result
        assert turn["agent"], result
    assert result["hangup"] in ("caller", "agent")

    engine = sa.create_engine(server.database_url)
    with engine.connect() as connection:
        rows = connection.execute(
            sa.text(
                "SELECT b.start, b.status FROM bookings b "
                "JOIN customers c ON c.id = b.customer_id JOIN services s ON s.id = b.service_id "
                "WHERE c.phone = '+15550100002' AND s.name = 'oil change'"
            )
        ).all()
    engine.dispose()
    assert len(rows) == 1, (rows, result, server.log())
    start, status = rows[0]
    assert status == "confirmed"
    assert dt.datetime.fromisoformat(str(start)) == dt.datetime.combine(day, dt.time(10, 0))


def test_asking_for_a_person_without_anyone_to_take_it_ends_politely(server: RunningServer) -> None:
    result = run_test_call(server, "+15550100003", ["can I talk to a person please"])
    assert result["hangup"] == "agent", result
    url = f"{server.api}/api/calls/{urllib.parse.quote(result['call_id'])}"
    with urllib.request.urlopen(url) as response:
        transcript = json.load(response)
    agent_lines = [turn["text"] for turn in transcript["turns"] if turn["speaker"] == "agent"]
    assert any(turn["intent"] == "transfer_failed" for turn in transcript["turns"]), agent_lines
    assert "no one from our team" in agent_lines[-1]
    assert transcript["hangup_by"] == "agent"

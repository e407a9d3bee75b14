"""Admin app fixtures: the seeded CRM (tests.crm.databases) behind an app with the admin routes, and staff."""

from __future__ import annotations

import datetime as dt
import secrets

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker

from crm.admin_users import create_admin_user
from crm.models import Booking, Call, Turn
from crm.web.app import install_admin
from crm.web.auth import AdminSettings
from tests.crm.databases import backend, engine, migrated_database, sessions

__all__ = ["backend", "engine", "migrated_database", "sessions"]

ADMIN_PASSWORD = "correct horse battery"
SUPERVISOR_PASSWORD = "supervisor pass 1"
CALL_ID = "call-abc@test"
MAX_BODY = 16 * 1024


@pytest.fixture
def app(sessions: sessionmaker[Session]) -> FastAPI:
    create_admin_user(sessions, "ada", ADMIN_PASSWORD, role="admin")
    create_admin_user(sessions, "sam", SUPERVISOR_PASSWORD, role="supervisor")
    app = FastAPI()
    install_admin(
        app,
        AdminSettings(sessions=lambda: sessions, secret_key=secrets.token_bytes(32), max_body_bytes=MAX_BODY),
    )
    return app


@pytest.fixture
def client(app: FastAPI) -> TestClient:
    return TestClient(app, base_url="http://testserver", follow_redirects=False)


@pytest.fixture
def agent_booking(sessions: sessionmaker[Session]) -> int:
    """A booking the agent made on a call (needs review), with the call's transcript; its id."""
    with sessions.begin() as session:
        session.add(Call(id=CALL_ID, from_number="+15550100003", to_uri="sip:agent@test", customer_id=3))
        session.flush()
        started = dt.datetime(2026, 11, 18, 15, 0, tzinfo=dt.UTC)
        lines = [
            ("agent", "Hello, Riverside Auto. How can I help?", None, None, None),
            ("caller", "I need an oil change on friday at ten", 412.0, 1630.0, "book"),
            ("agent", "You're booked for an oil change on Friday at 10 AM.", None, None, None),
        ]
        for index, (speaker, text, stt_ms, e2e_ms, intent) in enumerate(lines):
            session.add(
                Turn(
                    call_id=CALL_ID,
                    index=index,
                    speaker=speaker,
                    text=text,
                    started_at=started + dt.timedelta(seconds=5 * index),
                    stt_ms=stt_ms,
                    e2e_ms=e2e_ms,
                    intent=intent,
                )
            )
        booking = Booking(
            customer_id=3,
            service_id=1,  # oil change (seeded first)
            start=dt.datetime(2026, 11, 20, 10, 0),
            end=dt.datetime(2026, 11, 20, 10, 30),
            status="needs_review",
            source_call_id=CALL_ID,
        )
        session.add(booking)
        session.flush()
        return booking.id

"""The server-rendered admin pages, driven over HTTP: sign-in, CSRF, review, edit, stock, articles."""

from __future__ import annotations

import asyncio
import functools
import re
from collections.abc import Callable
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

import crm.admin_users
from crm.models import AuditLog, InventoryItem, KnowledgeArticle
from crm.passwords import verify_password
from crm.web import operations
from crm.web.auth import Authenticator
from tests.crm.web.conftest import ADMIN_PASSWORD, SUPERVISOR_PASSWORD


def _csrf(html: str) -> str:
    found = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert found is not None, html
    return found.group(1)


def sign_in(client: TestClient, username: str = "ada", password: str = ADMIN_PASSWORD) -> str:
    """Sign in through the form; the CSRF token of the session, as the bookings page carries it."""
    form = client.get("/admin/login")
    response = client.post(
        "/admin/login",
        data={
            "username": username,
            "password": password,
            "csrf_token": _csrf(form.text),
            "next": "/admin/bookings",
        },
    )
    assert response.status_code == 303
    assert response.headers["location"] == "/admin/bookings"
    return _csrf(client.get("/admin/bookings").text)


@pytest.mark.parametrize(
    "path", ["/admin/bookings", "/admin/bookings/1", "/admin/inventory", "/admin/articles"]
)
def test_unauthenticated_pages_redirect_to_login(client: TestClient, path: str) -> None:
    response = client.get(path)
    assert response.status_code == 303
    assert response.headers["location"].startswith("/admin/login?next=%2Fadmin%2F")
    assert client.post(f"{path}/review").status_code in (401, 405)


def test_wrong_password_and_missing_csrf(client: TestClient) -> None:
    form = client.get("/admin/login")
    wrong = client.post(
        "/admin/login", data={"username": "ada", "password": "nope", "csrf_token": _csrf(form.text)}
    )
    assert wrong.status_code == 303 and "error=Wrong" in wrong.headers["location"]
    no_csrf = client.post("/admin/login", data={"username": "ada", "password": ADMIN_PASSWORD})
    assert no_csrf.status_code == 403


def test_login_does_not_redirect_off_site(client: TestClient) -> None:
    form = client.get("/admin/login")
    response = client.post(
        "/admin/login",
        data={
            "username": "ada",
            "password": ADMIN_PASSWORD,
            "csrf_token": _csrf(form.text),
            "next": "//evil.example",
        },
    )
    assert response.headers["location"] == "/admin/bookings"


def test_bookings_list_filters_and_detail(client: TestClient, agent_booking: int) -> None:
    sign_in(client)
    listing = client.get("/admin/bookings", params={"review": "yes"}).text
    assert f'data-booking-id="{agent_booking}"' in listing and 'data-booking-id="1"' not in listing
    listing = client.get("/admin/bookings", params={"day": "2026-11-19", "service": "tire rotation"}).text
    assert 'data-booking-id="1"' in listing and f'data-booking-id="{agent_booking}"' not in listing
    bad = client.get("/admin/bookings", params={"day": "2026-13-01"})
    assert bad.status_code == 400 and "is not a date" in bad.text
    detail = client.get(f"/admin/bookings/{agent_booking}").text
    assert "I need an oil change on friday at ten" in detail
    assert "412 ms" in detail and "1630 ms" in detail and "book" in detail
    assert client.get("/admin/bookings/9999").status_code == 404


def test_review_needs_csrf_and_writes_audit(
    client: TestClient, agent_booking: int, sessions: sessionmaker[Session]
) -> None:
    token = sign_in(client, "sam", SUPERVISOR_PASSWORD)
    forged = client.post(f"/admin/bookings/{agent_booking}/review", data={"csrf_token": "forged"})
    assert forged.status_code == 403
    done = client.post(f"/admin/bookings/{agent_booking}/review", data={"csrf_token": token})
    assert done.status_code == 303
    page = client.get(done.headers["location"]).text
    assert "Booking reviewed." in page and "booking.review" in page and "by sam" in page
    with sessions() as session:
        actions = list(session.scalars(select(AuditLog.action).where(AuditLog.actor == "sam")))
    assert actions == ["booking.review"]


def test_edit_and_cancel_through_forms(client: TestClient, agent_booking: int) -> None:
    token = sign_in(client)
    edit = client.post(
        f"/admin/bookings/{agent_booking}/edit",
        data={
            "csrf_token": token,
            "start": "2026-11-20T13:30",
            "service": "oil change",
            "status": "confirmed",
        },
    )
    assert edit.status_code == 303
    page = client.get(f"/admin/bookings/{agent_booking}").text
    assert "2026-11-20 13:30" in page and "booking.edit" in page
    closed = client.post(
        f"/admin/bookings/{agent_booking}/edit", data={"csrf_token": token, "start": "2026-11-22T10:00"}
    )
    assert closed.status_code == 409 and "closed" in closed.text
    garbled = client.post(
        f"/admin/bookings/{agent_booking}/edit", data={"csrf_token": token, "start": "soon"}
    )
    assert garbled.status_code == 400
    assert (
        client.post(f"/admin/bookings/{agent_booking}/cancel", data={"csrf_token": token}).status_code == 303
    )
    assert "booking.cancel" in client.get(f"/admin/bookings/{agent_booking}").text


def test_inventory_and_articles_are_editable_by_admins_only(
    client: TestClient, sessions: sessionmaker[Session]
) -> None:
    token = sign_in(client)
    form = {
        "csrf_token": token,
        "name": "Battery 24F",
        "quantity": "11",
        "price": "119.99",
        "aliases": "battery, 24F",
    }
    assert client.post("/admin/inventory/BAT-24F", data=form).status_code == 303
    assert client.post("/admin/inventory/BAT-24F", data={**form, "quantity": "-3"}).status_code == 400
    article = {"csrf_token": token, "slug": "towing", "title": "Towing", "body": "We tow within 20 miles."}
    assert client.post("/admin/articles", data=article).status_code == 303
    assert "We tow within 20 miles." in client.get("/admin/articles/towing").text
    with sessions() as session:
        item = session.scalars(select(InventoryItem).where(InventoryItem.sku == "BAT-24F")).one()
        assert (item.quantity, str(item.price), item.aliases) == (11, "119.99", "battery, 24F")
        assert session.scalars(select(KnowledgeArticle).where(KnowledgeArticle.slug == "towing")).one()

    client.cookies.clear()
    supervisor_token = sign_in(client, "sam", SUPERVISOR_PASSWORD)
    refused = client.post("/admin/inventory/BAT-24F", data={**form, "csrf_token": supervisor_token})
    assert refused.status_code == 403 and "only admins" in refused.text


def test_logout_ends_the_session(client: TestClient) -> None:
    token = sign_in(client)
    assert client.post("/admin/logout", data={"csrf_token": token}).status_code == 303
    assert client.get("/admin/bookings").status_code == 303


def test_posted_forms_do_their_blocking_work_off_the_event_loop(
    client: TestClient, agent_booking: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """In `switchboard serve` the admin pages share the event loop that paces every call's audio: the
    handlers that read a posted form are async, and password hashing (scrypt) and the database must run
    in the thread pool from them, never on the loop."""
    on_loop: dict[str, list[bool]] = {}

    def watched(name: str, real: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(real)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            try:
                asyncio.get_running_loop()
                running = True
            except RuntimeError:
                running = False
            on_loop.setdefault(name, []).append(running)
            return real(*args, **kwargs)

        return wrapper

    monkeypatch.setattr(crm.admin_users, "verify_password", watched("password", verify_password))
    monkeypatch.setattr(Authenticator, "page_session", watched("session", Authenticator.page_session))
    for name in ("mark_reviewed", "update_inventory", "save_article"):
        monkeypatch.setattr(operations, name, watched(name, getattr(operations, name)))
    token = sign_in(client)
    assert (
        client.post(f"/admin/bookings/{agent_booking}/review", data={"csrf_token": token}).status_code == 303
    )
    stock = {"csrf_token": token, "name": "Battery 24F", "quantity": "9", "price": "119.99", "aliases": ""}
    assert client.post("/admin/inventory/BAT-24F", data=stock).status_code == 303
    article = {"csrf_token": token, "slug": "towing", "title": "Towing", "body": "We tow."}
    assert client.post("/admin/articles", data=article).status_code == 303
    assert set(on_loop) == {"password", "session", "mark_reviewed", "update_inventory", "save_article"}
    assert not any(any(calls) for calls in on_loop.values()), on_loop

"""Signing out revokes the session on the server: a copied cookie or API token stops working, for pages
(redirect to the sign-in form) and for the API (401), while other staff members stay signed in."""

from __future__ import annotations

import secrets

from fastapi import FastAPI
from fastapi.testclient import TestClient
from itsdangerous import URLSafeTimedSerializer
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from crm.admin_users import create_admin_user, set_active, set_password
from crm.models import AdminUser, AuditLog
from crm.web.app import install_admin
from crm.web.auth import SESSION_COOKIE, AdminSettings
from tests.crm.web.conftest import ADMIN_PASSWORD, SUPERVISOR_PASSWORD
from tests.crm.web.test_admin_pages import sign_in


def _copy(app: FastAPI, client: TestClient) -> TestClient:
    """Another browser holding a copy of `client`'s session cookie."""
    thief = TestClient(app, base_url="http://testserver", follow_redirects=False)
    cookie = client.cookies.get(SESSION_COOKIE, path="/admin")
    assert cookie
    thief.cookies.set(SESSION_COOKIE, cookie, domain="testserver.local", path="/admin")
    return thief


def _token(client: TestClient, username: str, password: str) -> dict[str, str]:
    response = client.post("/api/auth/token", json={"username": username, "password": password})
    assert response.status_code == 200, response.text
    return {"Authorization": f"Bearer {response.json()['token']}"}


def _refused_page(client: TestClient) -> None:
    response = client.get("/admin/bookings", params={"review": "yes"})
    assert response.status_code == 303
    assert response.headers["location"] == "/admin/login?next=%2Fadmin%2Fbookings%3Freview%3Dyes"


def test_copied_cookie_and_token_are_refused_after_logout(app: FastAPI, client: TestClient) -> None:
    token = sign_in(client)
    thief = _copy(app, client)
    api = _token(client, "ada", ADMIN_PASSWORD)
    assert thief.get("/admin/bookings").status_code == 200
    assert client.get("/api/bookings", headers=api).status_code == 200

    response = client.post("/admin/logout", data={"csrf_token": token})
    assert response.status_code == 303 and response.headers["location"] == "/admin/login"
    assert SESSION_COOKIE not in client.cookies  # the browser's copy is deleted as before

    _refused_page(thief)
    # A form posted with the copied cookie and its CSRF token is refused too.
    assert thief.post("/admin/bookings/1/review", data={"csrf_token": token}).status_code == 401
    refused = client.get("/api/bookings", headers=api)
    assert refused.status_code == 401 and "signed out" in refused.json()["detail"]

    # Signing in again gives a working session; the copied one stays dead.
    sign_in(client)
    assert client.get("/admin/bookings").status_code == 200
    _refused_page(thief)


def test_other_members_stay_signed_in(app: FastAPI, client: TestClient) -> None:
    ada_token = sign_in(client)
    sam = TestClient(app, base_url="http://testserver", follow_redirects=False)
    sign_in(sam, "sam", SUPERVISOR_PASSWORD)
    sam_api = _token(sam, "sam", SUPERVISOR_PASSWORD)
    assert client.post("/admin/logout", data={"csrf_token": ada_token}).status_code == 303
    assert sam.get("/admin/bookings").status_code == 200
    assert _copy(app, sam).get("/admin/bookings").status_code == 200
    assert sam.get("/api/bookings", headers=sam_api).status_code == 200


def test_sign_out_ends_every_session_of_the_member(app: FastAPI, client: TestClient) -> None:
    """Documented scope: signing out on one device signs the member out on all of them."""
    first = sign_in(client)
    laptop = TestClient(app, base_url="http://testserver", follow_redirects=False)
    sign_in(laptop)
    assert client.post("/admin/logout", data={"csrf_token": first}).status_code == 303
    _refused_page(laptop)


def test_logout_with_a_revoked_session_just_clears_the_cookie(app: FastAPI, client: TestClient) -> None:
    token = sign_in(client)
    stale_tab = _copy(app, client)
    assert client.post("/admin/logout", data={"csrf_token": token}).status_code == 303
    again = stale_tab.post("/admin/logout", data={"csrf_token": token})
    assert again.status_code == 303 and again.headers["location"] == "/admin/login"
    assert SESSION_COOKIE not in stale_tab.cookies


def test_api_logout_revokes_tokens_and_page_sessions(
    app: FastAPI, client: TestClient, sessions: sessionmaker[Session]
) -> None:
    sign_in(client)
    api = _token(client, "ada", ADMIN_PASSWORD)
    other = _token(client, "sam", SUPERVISOR_PASSWORD)
    assert client.post("/api/auth/logout").status_code == 401
    response = client.post("/api/auth/logout", headers=api)
    assert response.status_code == 204 and response.content == b""
    assert client.get("/api/bookings", headers=api).status_code == 401
    assert client.post("/api/auth/logout", headers=api).status_code == 401
    _refused_page(client)
    assert client.get("/api/bookings", headers=other).status_code == 200
    with sessions() as session:
        signed_out = session.scalars(
            select(AuditLog.actor).where(AuditLog.action == "admin_user.sign_out")
        ).all()
    assert signed_out == ["ada"]


def test_password_change_and_deactivation_revoke_sessions(
    app: FastAPI, client: TestClient, sessions: sessionmaker[Session]
) -> None:
    sign_in(client)
    api = _token(client, "ada", ADMIN_PASSWORD)
    set_password(sessions, "ada", "a brand new password", actor="test")
    _refused_page(client)
    assert client.get("/api/bookings", headers=api).status_code == 401
    assert (
        client.post("/api/auth/token", json={"username": "ada", "password": ADMIN_PASSWORD}).status_code
        == 401
    )

    sign_in(client, "ada", "a brand new password")
    before_disable = _copy(app, client)
    set_active(sessions, "ada", False, actor="test")
    _refused_page(before_disable)
    set_active(sessions, "ada", True, actor="test")
    # Re-enabling the account does not bring back a cookie from before it was disabled.
    _refused_page(before_disable)
    sign_in(client, "ada", "a brand new password")
    assert client.get("/admin/bookings").status_code == 200
    with sessions() as session:
        generation = session.scalars(select(AdminUser.session_generation).where(AdminUser.username == "ada"))
        assert generation.one() == 3


def test_cookie_signed_before_generations_existed_is_refused(sessions: sessionmaker[Session]) -> None:
    """Cookies issued before revision 0006 carry no generation and could never be revoked: refused."""
    key = secrets.token_bytes(32)
    app = FastAPI()
    install_admin(app, AdminSettings(sessions=lambda: sessions, secret_key=key))
    staff = create_admin_user(sessions, "old-timer", "long enough pw")
    legacy = URLSafeTimedSerializer(key, salt="switchboard.admin.session").dumps(
        {"uid": staff.id, "csrf": "x"}
    )
    client = TestClient(app, base_url="http://testserver", follow_redirects=False)
    client.cookies.set(SESSION_COOKIE, legacy, domain="testserver.local", path="/admin")
    _refused_page(client)


def test_staff_pages_and_api_are_not_cached(client: TestClient) -> None:
    sign_in(client)
    assert client.get("/admin/bookings").headers["cache-control"] == "no-store"
    assert client.get("/admin/login").headers["cache-control"] == "no-store"
    assert client.get("/api/bookings").headers["cache-control"] == "no-store"  # a 401 too
    assert "no-store" not in client.get("/admin/static/admin.css").headers.get("cache-control", "")

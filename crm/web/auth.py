"""Staff sessions for the admin pages (signed cookie) and bearer tokens for the JSON API, plus CSRF.

The session cookie is an itsdangerous-signed, timestamped {"uid", "gen", "csrf"} payload: nothing secret
is in it, and the signature stops forgery. The staff row is read again on every request, so deactivating a
user locks them out at once. Forms carry the session's CSRF token; the login form, which has no session
yet, uses a double-submit cookie. API calls authenticate with `Authorization: Bearer`, which a browser
never attaches by itself, so the API needs no CSRF token.

A signature alone cannot be taken back, so a copied cookie would outlive its owner's sign-out. Cookies
and tokens therefore carry the member's session generation (crm.admin_users) and are refused once it has
moved on. Signing out (page or API) bumps it: that ends all of the member's sessions and tokens, on every
device, not only the one signing out; other members are untouched.
"""

from __future__ import annotations

import hmac
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from fastapi import Request
from itsdangerous import BadSignature, URLSafeTimedSerializer
from sqlalchemy.orm import Session, sessionmaker
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData

from crm.admin_users import StaffMember, load_staff, revoke_sessions

SESSION_COOKIE: Final = "sb_admin"
LOGIN_CSRF_COOKIE: Final = "sb_login_csrf"
SESSION_MAX_AGE_S: Final = 12 * 3600
TOKEN_MAX_AGE_S: Final = 3600


def load_or_create_secret(path: Path) -> bytes:
    """The signing key kept in `path` (created owner-only on first use), so sessions survive restarts."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        return bytes.fromhex(path.read_text().strip())
    except FileNotFoundError:
        secret = secrets.token_bytes(32)
        path.touch(mode=0o600)
        path.write_text(secret.hex())
        return secret


class NotAuthenticated(Exception):
    """No valid session or token: pages redirect to the login form, the API answers 401."""


class Forbidden(Exception):
    """Signed in, but the role may not do this (or the CSRF token is wrong): 403."""


@dataclass(frozen=True, slots=True)
class StaffSession:
    staff: StaffMember
    csrf_token: str


@dataclass(frozen=True, slots=True)
class AdminSettings:
    """What the admin app needs from its host. `sessions` is a provider: the server opens the database
    after the app object is built."""

    sessions: Callable[[], sessionmaker[Session]]
    secret_key: bytes
    secure_cookies: bool = False  # set behind HTTPS
    max_body_bytes: int = 64 * 1024


class Authenticator:
    def __init__(self, settings: AdminSettings) -> None:
        self._settings = settings
        self._cookies = URLSafeTimedSerializer(settings.secret_key, salt="switchboard.admin.session")
        self._tokens = URLSafeTimedSerializer(settings.secret_key, salt="switchboard.api.token")

    # -- sessions for pages ---------------------------------------------------------------------------

    def session_cookie(self, staff: StaffMember) -> str:
        return self._cookies.dumps(
            {"uid": staff.id, "gen": staff.session_generation, "csrf": secrets.token_urlsafe(24)}
        )

    def page_session(self, request: Request) -> StaffSession:
        raw = request.cookies.get(SESSION_COOKIE)
        if raw is None:
            raise NotAuthenticated("not signed in")
        try:
            payload: dict[str, Any] = self._cookies.loads(raw, max_age=SESSION_MAX_AGE_S)
        except BadSignature as exc:  # includes SignatureExpired
            raise NotAuthenticated("session expired or invalid") from exc
        staff = self._staff(payload)
        return StaffSession(staff=staff, csrf_token=str(payload.get("csrf", "")))

    async def posted_form(self, request: Request) -> tuple[StaffSession, FormData]:
        """A page's POST: the signed-in member (looked up in the thread pool, off the event loop that paces
        the calls' audio) and the form, whose CSRF token must match the session's."""
        current = await run_in_threadpool(self.page_session, request)
        form = await request.form()
        token = form.get("csrf_token")
        check_csrf(current.csrf_token, token if isinstance(token, str) else None)
        return current, form

    def cookie_options(self) -> dict[str, Any]:
        return {
            "httponly": True,
            "samesite": "lax",
            "secure": self._settings.secure_cookies,
            "path": "/admin",
        }

    # -- bearer tokens for the API --------------------------------------------------------------------

    def api_token(self, staff: StaffMember) -> str:
        return self._tokens.dumps({"uid": staff.id, "gen": staff.session_generation})

    def api_staff(self, request: Request) -> StaffMember:
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise NotAuthenticated("send Authorization: Bearer <token> (POST /api/auth/token)")
        try:
            payload: dict[str, Any] = self._tokens.loads(token.strip(), max_age=TOKEN_MAX_AGE_S)
        except BadSignature as exc:
            raise NotAuthenticated("token expired or invalid") from exc
        return self._staff(payload)

    # -- signing out ----------------------------------------------------------------------------------

    def revoke(self, staff: StaffMember) -> None:
        """End every session and token of `staff` (see the module notes for why all of them)."""
        revoke_sessions(self._settings.sessions(), staff.id, actor=staff.username)

    def _staff(self, payload: dict[str, Any]) -> StaffMember:
        user_id, generation = payload.get("uid"), payload.get("gen")
        # Cookies from before session generations existed have no "gen": they cannot be revoked, so refuse.
        if not isinstance(user_id, int) or not isinstance(generation, int):
            raise NotAuthenticated("session expired or invalid")
        with self._settings.sessions()() as session:
            staff = load_staff(session, user_id)
        if staff is None:
            raise NotAuthenticated("account no longer active")
        if staff.session_generation != generation:
            raise NotAuthenticated("signed out: sign in again")
        return staff


def check_csrf(expected: str, submitted: str | None) -> None:
    if not expected or submitted is None or not hmac.compare_digest(expected, submitted):
        raise Forbidden("the form has expired or did not come from this site; reload the page and retry")


def require_admin(staff: StaffMember) -> None:
    if not staff.is_admin:
        raise Forbidden("only admins may change this")

"""Dead letters in the JSON API and the admin app: list them with their last error, and replay one.

Replaying puts the message back in the outbox with a fresh retry budget and its original idempotency
key, so replaying a write the destination did apply after all cannot apply it twice. Access follows the
admin app: any signed-in staff member may look; only admins may replay, since a replay writes to the CRM.
"""

from __future__ import annotations

import html
from collections.abc import Callable
from typing import Any

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from sqlalchemy import exc as sa_exc
from sqlalchemy.orm import Session, sessionmaker
from starlette.concurrency import run_in_threadpool

from crm import outbox
from crm.admin_users import StaffMember
from crm.db import IMMEDIATE
from crm.models import DeadLetter, OutboxMessage
from crm.web.auth import Authenticator, Forbidden, NotAuthenticated, require_admin

SessionsProvider = Callable[[], sessionmaker[Session]]


def dead_letter_json(letter: DeadLetter, message: OutboxMessage | None) -> dict[str, Any]:
    return {
        "id": letter.id,
        "outbox_id": letter.outbox_id,
        "idempotency_key": letter.idempotency_key,
        "kind": letter.kind,
        "destination": letter.destination,
        "attempts": letter.attempts,
        "last_error": letter.last_error,
        "created_at": letter.created_at.isoformat(),
        "replayed_at": letter.replayed_at.isoformat() if letter.replayed_at else None,
        "status": message.status if message is not None else None,
        "payload": message.payload if message is not None else None,
    }


class ReplayError(Exception):
    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status


def list_letters(sessions: sessionmaker[Session], *, include_replayed: bool) -> list[dict[str, Any]]:
    with sessions() as session:
        return [
            dead_letter_json(letter, session.get(OutboxMessage, letter.outbox_id))
            for letter in outbox.dead_letters(session, include_replayed=include_replayed)
        ]


def replay_letter(sessions: sessionmaker[Session], dead_letter_id: int) -> dict[str, Any]:
    with sessions.begin() as session:
        session.connection(execution_options=IMMEDIATE)  # reads, then writes
        if session.get(DeadLetter, dead_letter_id) is None:
            raise ReplayError(404, f"no dead letter with id {dead_letter_id}")
        try:
            message = outbox.replay(session, dead_letter_id)
        except outbox.ReplayRefused as exc:
            raise ReplayError(409, str(exc)) from exc
        letter = session.get(DeadLetter, dead_letter_id)
        assert letter is not None
        return dead_letter_json(letter, message)


def dead_letter_router(sessions: SessionsProvider, auth: Authenticator) -> APIRouter:
    """`sessions` is called per request: the server opens its database after building its routes."""
    router = APIRouter(tags=["dead letters"])

    def staff(request: Request) -> StaffMember:
        try:
            return auth.api_staff(request)
        except NotAuthenticated as exc:
            raise HTTPException(401, str(exc), headers={"WWW-Authenticate": "Bearer"}) from exc

    signed_in = Depends(staff)

    # Plain `def` endpoints: FastAPI runs them on its thread pool, off the event loop.
    @router.get("/api/dead-letters", summary="Writes that exhausted their retries, with their last error")
    def list_dead_letters(
        include_replayed: bool = False, member: StaffMember = signed_in
    ) -> list[dict[str, Any]]:
        try:
            return list_letters(sessions(), include_replayed=include_replayed)
        except sa_exc.SQLAlchemyError as exc:
            raise HTTPException(503, "the database is unavailable") from exc

    @router.post("/api/dead-letters/{dead_letter_id}/replay", summary="Retry a dead letter (admins)")
    def replay_dead_letter(dead_letter_id: int, member: StaffMember = signed_in) -> dict[str, Any]:
        try:
            require_admin(member)
            return replay_letter(sessions(), dead_letter_id)
        except Forbidden as exc:
            raise HTTPException(403, str(exc)) from exc
        except ReplayError as exc:
            raise HTTPException(exc.status, str(exc)) from exc
        except sa_exc.SQLAlchemyError as exc:
            raise HTTPException(503, "the database is unavailable") from exc

    @router.get("/admin/dead-letters", response_class=HTMLResponse, include_in_schema=False)
    def dead_letters_page(request: Request, done: str = "") -> HTMLResponse:
        current = auth.page_session(request)  # NotAuthenticated: the admin app redirects to its login
        letters = list_letters(sessions(), include_replayed=False)
        return HTMLResponse(_page(letters, current.csrf_token, can_replay=current.staff.is_admin, done=done))

    @router.post("/admin/dead-letters/{dead_letter_id}/replay", include_in_schema=False)
    async def replay_from_page(request: Request, dead_letter_id: int) -> Response:
        # Async to read the form, on the loop that paces the calls' audio: the database in the thread pool.
        current, _ = await auth.posted_form(request)
        require_admin(current.staff)
        try:
            await run_in_threadpool(replay_letter, sessions(), dead_letter_id)
        except ReplayError as exc:
            raise HTTPException(exc.status, str(exc)) from exc
        return RedirectResponse(f"/admin/dead-letters?done={dead_letter_id}", status_code=303)

    return router


def _page(letters: list[dict[str, Any]], csrf_token: str, *, can_replay: bool, done: str) -> str:
    rows = []
    for letter in letters:
        replay = (
            f"<form method='post' action='/admin/dead-letters/{letter['id']}/replay'>"
            f"<input type='hidden' name='csrf_token' value='{html.escape(csrf_token)}'>"
            "<button type='submit'>Replay</button></form>"
            if can_replay
            else ""
        )
        cells = (
            letter["id"],
            letter["kind"],
            letter["destination"],
            letter["attempts"],
            letter["created_at"],
        )
        rows.append(
            "<tr>"
            + "".join(f"<td>{html.escape(str(cell))}</td>" for cell in cells)
            + f"<td><code>{html.escape(letter['last_error'])}</code></td><td>{replay}</td></tr>"
        )
    notice = f"<p class='notice'>Dead letter {html.escape(done)} is queued again.</p>" if done else ""
    body = (
        "<table><thead><tr><th>#</th><th>Kind</th><th>Destination</th><th>Attempts</th><th>Since</th>"
        f"<th>Last error</th><th></th></tr></thead><tbody>{''.join(rows)}</tbody></table>"
        if rows
        else "<p>No dead letters: every write was delivered.</p>"
    )
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>Dead letters</title>"
        "<link rel='stylesheet' href='/admin/static/admin.css'></head><body>"
        "<nav><a href='/admin/bookings'>Bookings</a></nav><h1>Dead letters</h1>"
        f"{notice}{body}</body></html>"
    )

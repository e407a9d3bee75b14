"""Server-rendered admin pages under /admin (Jinja2): sign-in, bookings review, stock, knowledge articles.

Every page needs a signed-in staff member (else a redirect to the sign-in form); every form posts the
session's CSRF token and is answered with a redirect (post/redirect/get), so reloading never resubmits.
"""

from __future__ import annotations

import datetime as dt
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote, urlencode

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData

from crm.admin_users import StaffMember, authenticate
from crm.models import BOOKING_STATUSES
from crm.web import operations
from crm.web.auth import (
    LOGIN_CSRF_COOKIE,
    SESSION_COOKIE,
    SESSION_MAX_AGE_S,
    AdminSettings,
    Authenticator,
    NotAuthenticated,
    StaffSession,
    check_csrf,
    require_admin,
)
from tools.api import InvalidRequest, NotFound, SlotUnavailable, ToolError

T = TypeVar("T")
TEMPLATES = Jinja2Templates(directory=str(Path(__file__).resolve().parent / "templates"))


def _format_instant(value: dt.datetime | None) -> str:
    return "" if value is None else value.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _format_ms(value: float | None) -> str:
    return "" if value is None else f"{value:.0f} ms"


TEMPLATES.env.filters["instant"] = _format_instant
TEMPLATES.env.filters["ms"] = _format_ms


def _status_for(error: ToolError) -> int:
    if isinstance(error, NotFound):
        return 404
    if isinstance(error, SlotUnavailable):
        return 409
    if isinstance(error, InvalidRequest):
        return 400
    return 503


def _day(text: str) -> dt.date | None:
    try:
        return dt.date.fromisoformat(text) if text else None
    except ValueError as exc:
        raise InvalidRequest(f"{text!r} is not a date (YYYY-MM-DD)") from exc


def _review(text: str) -> bool | None:
    """The review filter: "yes" (still to review), "no" (reviewed or never needing it), "" (any)."""
    choices = {"": None, "yes": True, "no": False}
    if text not in choices:
        raise InvalidRequest(f"review must be yes, no or left out, not {text[:20]!r}")
    return choices[text]


def _page_size(text: str) -> int:
    if not text:
        return operations.PAGE_SIZE
    if not (
        text.isascii() and text.isdigit() and len(text) <= 6 and 1 <= int(text) <= operations.MAX_PAGE_SIZE
    ):
        raise InvalidRequest(f"a page holds 1 to {operations.MAX_PAGE_SIZE} bookings, not {text[:20]!r}")
    return int(text)


def _text(form: FormData, name: str) -> str:
    value = form.get(name)
    return value.strip() if isinstance(value, str) else ""


def pages_router(settings: AdminSettings, auth: Authenticator) -> APIRouter:
    router = APIRouter(prefix="/admin", include_in_schema=False)

    def render(
        request: Request, template: str, context: dict[str, Any], status_code: int = 200
    ) -> HTMLResponse:
        return TEMPLATES.TemplateResponse(request, template, context, status_code=status_code)

    def run(work: Callable[[Session], T]) -> T:
        with settings.sessions().begin() as session:
            return work(session)

    # The async handlers below (they read a posted form) share the event loop that paces every call's audio
    # in `switchboard serve`: what blocks (the database, password hashing) runs in the thread pool, as the
    # plain `def` handlers do.
    def error_page(request: Request, current: StaffSession, error: ToolError) -> HTMLResponse:
        context = {"me": current, "message": str(error), "status": _status_for(error)}
        return render(request, "error.html", context, status_code=_status_for(error))

    # -- signing in -----------------------------------------------------------------------------------

    @router.get("/login")
    def login_form(request: Request, next: str = "/admin/bookings", error: str = "") -> HTMLResponse:
        token = secrets.token_urlsafe(24)
        response = render(request, "login.html", {"csrf_token": token, "next": next, "error": error})
        response.set_cookie(LOGIN_CSRF_COOKIE, token, max_age=3600, **auth.cookie_options())
        return response

    @router.post("/login")
    async def login(request: Request) -> Response:
        form = await request.form()
        check_csrf(request.cookies.get(LOGIN_CSRF_COOKIE, ""), _text(form, "csrf_token") or None)
        target = _text(form, "next")
        # Only same-site paths: an open redirect would let a link send staff anywhere after signing in.
        if not target.startswith("/admin") or target.startswith("//"):
            target = "/admin/bookings"
        username, password = _text(form, "username"), str(form.get("password") or "")

        def sign_in() -> StaffMember | None:
            with settings.sessions()() as session:
                return authenticate(session, username, password)  # scrypt: tens of milliseconds

        member = await run_in_threadpool(sign_in)
        if member is None:
            query = urlencode({"next": target, "error": "Wrong username or password."})
            return RedirectResponse(f"/admin/login?{query}", status_code=303)
        response = RedirectResponse(target, status_code=303)
        response.set_cookie(
            SESSION_COOKIE, auth.session_cookie(member), max_age=SESSION_MAX_AGE_S, **auth.cookie_options()
        )
        response.delete_cookie(LOGIN_CSRF_COOKIE, path="/admin")
        return response

    @router.post("/logout")
    async def logout(request: Request) -> Response:
        response = RedirectResponse("/admin/login", status_code=303)
        response.delete_cookie(SESSION_COOKIE, path="/admin")
        try:
            current, _ = await auth.posted_form(request)
        except NotAuthenticated:
            return response  # already signed out (here or elsewhere): only the browser's copy is left
        # Server side too: the cookie stops working wherever a copy of it is (see crm.web.auth).
        await run_in_threadpool(auth.revoke, current.staff)
        return response

    # -- bookings -------------------------------------------------------------------------------------

    @router.get("")
    @router.get("/")
    def home() -> Response:
        return RedirectResponse("/admin/bookings", status_code=303)

    @router.get("/bookings")
    def bookings(
        request: Request,
        day: str = "",
        status: str = "",
        review: str = "",
        service: str = "",
        after: str = "",
        before: str = "",
        limit: str = "",
    ) -> HTMLResponse:
        current = auth.page_session(request)
        chosen = {"day": day, "status": status, "review": review, "service": service}
        try:
            filters = operations.BookingFilter(
                day=_day(day),
                status=status or None,
                needs_review=_review(review),
                service=service or None,
                limit=_page_size(limit),
                after=operations.BookingCursor.parse(after) if after else None,
                before=operations.BookingCursor.parse(before) if before else None,
            )
        except ToolError as exc:
            return error_page(request, current, exc)
        page, services = run(lambda s: (operations.list_bookings(s, filters), operations.service_names(s)))
        # The filter form and the page links keep the filters and a chosen page size; empty ones are left
        # out of the URLs.
        chosen["limit"] = str(filters.limit) if limit else ""
        kept = {name: value for name, value in chosen.items() if value}

        def link(**position: str) -> str:
            query = urlencode({**kept, **position})
            return f"/admin/bookings?{query}" if query else "/admin/bookings"

        context = {
            "me": current,
            "rows": page.rows,
            "services": services,
            "statuses": BOOKING_STATUSES,
            "chosen": chosen,
            "previous_url": None if page.previous is None else link(before=str(page.previous)),
            "next_url": None if page.next is None else link(after=str(page.next)),
            "first_url": link() if after or before else None,
        }
        return render(request, "bookings.html", context)

    @router.get("/bookings/{booking_id}")
    def booking(request: Request, booking_id: int, done: str = "") -> HTMLResponse:
        current = auth.page_session(request)
        try:
            detail, services = run(
                lambda s: (operations.booking_detail(s, booking_id), operations.service_names(s))
            )
        except ToolError as exc:
            return error_page(request, current, exc)
        context = {
            "me": current,
            "detail": detail,
            "b": detail.booking,
            "services": services,
            "statuses": BOOKING_STATUSES,
            "done": done,
        }
        return render(request, "booking.html", context)

    def booking_action(
        name: str, work: Callable[[Session, int, str, FormData], object]
    ) -> Callable[[Request, int], Any]:
        async def action(request: Request, booking_id: int) -> Response:
            current, form = await auth.posted_form(request)
            try:
                await run_in_threadpool(run, lambda s: work(s, booking_id, current.staff.username, form))
            except ToolError as exc:
                return error_page(request, current, exc)
            return RedirectResponse(f"/admin/bookings/{booking_id}?done={quote(name)}", status_code=303)

        return action

    def do_review(session: Session, booking_id: int, actor: str, form: FormData) -> object:
        return operations.mark_reviewed(session, booking_id, actor=actor)

    def do_cancel(session: Session, booking_id: int, actor: str, form: FormData) -> object:
        return operations.cancel_booking(session, booking_id, actor=actor)

    def do_edit(session: Session, booking_id: int, actor: str, form: FormData) -> object:
        raw_start = _text(form, "start")
        try:
            start = dt.datetime.fromisoformat(raw_start) if raw_start else None
        except ValueError as exc:
            raise InvalidRequest(f"{raw_start!r} is not a date and time") from exc
        if start is not None and start.tzinfo is not None:
            raise InvalidRequest("give the business-local time without an offset")
        return operations.edit_booking(
            session,
            booking_id,
            actor=actor,
            start=start,
            service=_text(form, "service") or None,
            status=_text(form, "status") or None,
        )

    router.add_api_route(
        "/bookings/{booking_id}/review", booking_action("reviewed", do_review), methods=["POST"]
    )
    router.add_api_route(
        "/bookings/{booking_id}/cancel", booking_action("cancelled", do_cancel), methods=["POST"]
    )
    router.add_api_route("/bookings/{booking_id}/edit", booking_action("saved", do_edit), methods=["POST"])

    # -- stock and knowledge --------------------------------------------------------------------------

    @router.get("/inventory")
    def inventory(request: Request, done: str = "") -> HTMLResponse:
        current = auth.page_session(request)
        items = run(operations.inventory)
        return render(request, "inventory.html", {"me": current, "items": items, "done": done})

    @router.post("/inventory/{sku}")
    async def edit_item(request: Request, sku: str) -> Response:
        current, form = await auth.posted_form(request)
        require_admin(current.staff)
        try:
            quantity_text = _text(form, "quantity")
            if not quantity_text.isdigit():
                raise InvalidRequest(f"quantity {quantity_text!r} is not a whole number")
            price = operations.parse_price(_text(form, "price"))
            await run_in_threadpool(
                run,
                lambda s: operations.update_inventory(
                    s,
                    sku,
                    actor=current.staff.username,
                    name=_text(form, "name"),
                    quantity=int(quantity_text),
                    price=price,
                    aliases=_text(form, "aliases"),
                ),
            )
        except ToolError as exc:
            return error_page(request, current, exc)
        return RedirectResponse(f"/admin/inventory?done={quote(sku)}", status_code=303)

    @router.get("/articles")
    def articles(request: Request, done: str = "") -> HTMLResponse:
        current = auth.page_session(request)
        found = run(operations.articles)
        return render(request, "articles.html", {"me": current, "articles": found, "done": done})

    @router.get("/articles/{slug}")
    def article(request: Request, slug: str) -> HTMLResponse:
        current = auth.page_session(request)
        if slug == "new":
            return render(request, "article.html", {"me": current, "article": None})
        try:
            found = run(lambda s: operations.article(s, slug))
        except ToolError as exc:
            return error_page(request, current, exc)
        return render(request, "article.html", {"me": current, "article": found})

    @router.post("/articles")
    async def save_article(request: Request) -> Response:
        current, form = await auth.posted_form(request)
        require_admin(current.staff)
        slug = _text(form, "slug")
        try:
            await run_in_threadpool(
                run,
                lambda s: operations.save_article(
                    s,
                    slug,
                    actor=current.staff.username,
                    title=_text(form, "title"),
                    body=_text(form, "body"),
                ),
            )
        except ToolError as exc:
            return error_page(request, current, exc)
        return RedirectResponse(f"/admin/articles?done={quote(slug)}", status_code=303)

    return router

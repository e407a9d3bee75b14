"""The CRM JSON API under /api: the admin app's operations for scripts and other front ends.

Authenticate with POST /api/auth/token, then send `Authorization: Bearer <token>`; POST /api/auth/logout
revokes the member's tokens and admin sessions (all of them: crm.web.auth). Errors are JSON
`{"detail": ...}`: 401 without a valid token, 403 for a role that may not, 404 for unknown ids,
409 when the slot is taken or closed, 413 for oversize bodies, 422 for malformed input.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict
from decimal import Decimal
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, Depends, HTTPException, Query, Request, Response
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import exc as sa_exc
from sqlalchemy.orm import Session

from crm.admin_users import StaffMember, authenticate
from crm.models import InventoryItem, KnowledgeArticle
from crm.web import operations
from crm.web.auth import AdminSettings, Authenticator, Forbidden, NotAuthenticated, require_admin
from tools.api import InvalidRequest, NotFound, SlotUnavailable, ToolError
from tools.transactions import translate_database_error

T = TypeVar("T")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TokenRequest(_Strict):
    username: str = Field(min_length=1, max_length=100)
    password: str = Field(min_length=1, max_length=200)


class BookingEdit(_Strict):
    start: dt.datetime | None = Field(None, description="business-local start, no offset")
    service: str | None = Field(None, min_length=1, max_length=100)
    status: str | None = None


class InventoryEdit(_Strict):
    name: str | None = Field(None, min_length=1, max_length=200)
    quantity: int | None = Field(None, ge=0, le=1_000_000_000)
    price: Decimal | None = Field(None, ge=0, lt=100_000_000, decimal_places=2)
    aliases: str | None = Field(None, max_length=2000)


class ArticleBody(_Strict):
    title: str = Field(min_length=1, max_length=200)
    body: str = Field(min_length=1, max_length=20_000)


def http_error(error: ToolError) -> HTTPException:
    if isinstance(error, NotFound):
        return HTTPException(404, str(error))
    if isinstance(error, SlotUnavailable):
        return HTTPException(409, str(error))
    if isinstance(error, InvalidRequest):
        return HTTPException(422, str(error))
    return HTTPException(503, str(error))


def _item_json(item: InventoryItem) -> dict[str, Any]:
    return {
        "sku": item.sku,
        "name": item.name,
        "quantity": item.quantity,
        "price": str(item.price),
        "aliases": item.alias_list,
    }


def _article_json(article: KnowledgeArticle) -> dict[str, Any]:
    return {"slug": article.slug, "title": article.title, "body": article.body}


def api_router(settings: AdminSettings, auth: Authenticator) -> APIRouter:
    router = APIRouter(prefix="/api", tags=["crm"])

    def staff(request: Request) -> StaffMember:
        try:
            return auth.api_staff(request)
        except NotAuthenticated as exc:
            raise HTTPException(401, str(exc), headers={"WWW-Authenticate": "Bearer"}) from exc

    # A default rather than an Annotated alias: with postponed annotations FastAPI resolves annotation
    # strings in the module's namespace, where a local alias does not exist.
    signed_in = Depends(staff)

    @contextmanager
    def transaction() -> Iterator[Session]:
        try:
            with settings.sessions().begin() as session:
                yield session
        except ToolError as exc:
            raise http_error(exc) from exc
        except sa_exc.SQLAlchemyError as exc:
            raise http_error(translate_database_error(exc)) from exc

    def admin_only(member: StaffMember) -> None:
        try:
            require_admin(member)
        except Forbidden as exc:
            raise HTTPException(403, str(exc)) from exc

    def run(work: Callable[[Session], T]) -> T:
        with transaction() as session:
            return work(session)

    @router.post("/auth/token", summary="Exchange a staff username and password for a bearer token")
    def token(body: TokenRequest) -> dict[str, Any]:
        with settings.sessions()() as session:
            member = authenticate(session, body.username, body.password)
        if member is None:
            raise HTTPException(401, "wrong username or password")
        return {"token": auth.api_token(member), "token_type": "bearer", "role": member.role}

    @router.post(
        "/auth/logout", status_code=204, summary="Sign out: revoke every token and session of this member"
    )
    def logout(member: StaffMember = signed_in) -> None:
        auth.revoke(member)

    @router.get(
        "/bookings",
        summary="Bookings in start order, a page at a time, filtered by day, status, review and service",
        description=(
            "A page of at most `limit` bookings. Where the list goes on, the response has a `Link` header "
            '(RFC 8288) with rel="next" and/or rel="prev" URLs that keep the filters; the page positions '
            "in them (`after`, `before`) stay fast however deep the list. `offset` is kept for small skips "
            f"only (at most {operations.MAX_OFFSET})."
        ),
    )
    def list_bookings(
        request: Request,
        response: Response,
        member: StaffMember = signed_in,
        day: Annotated[dt.date | None, Query(description="YYYY-MM-DD, business-local")] = None,
        status: str | None = None,
        needs_review: bool | None = None,
        service: str | None = None,
        limit: Annotated[int, Query(ge=1, le=operations.MAX_PAGE_SIZE)] = operations.PAGE_SIZE,
        offset: Annotated[int, Query(ge=0, le=operations.MAX_OFFSET)] = 0,
        after: Annotated[str | None, Query(max_length=64, description="from a rel=next link")] = None,
        before: Annotated[str | None, Query(max_length=64, description="from a rel=prev link")] = None,
    ) -> list[dict[str, Any]]:
        try:
            filters = operations.BookingFilter(
                day=day,
                status=status,
                needs_review=needs_review,
                service=service,
                limit=limit,
                offset=offset,
                after=None if after is None else operations.BookingCursor.parse(after),
                before=None if before is None else operations.BookingCursor.parse(before),
            )
        except InvalidRequest as exc:
            raise http_error(exc) from exc
        page = run(lambda session: operations.list_bookings(session, filters))
        base = request.url.remove_query_params(["after", "before", "offset"])
        links = [
            f'<{base.include_query_params(**{key: str(cursor)})}>; rel="{rel}"'
            for key, cursor, rel in (("before", page.previous, "prev"), ("after", page.next, "next"))
            if cursor is not None
        ]
        if links:
            response.headers["Link"] = ", ".join(links)
        return [asdict(row) for row in page.rows]

    @router.get("/bookings/{booking_id}", summary="One booking with its call transcript and audit trail")
    def get_booking(booking_id: int, member: StaffMember = signed_in) -> dict[str, Any]:
        return asdict(run(lambda session: operations.booking_detail(session, booking_id)))

    @router.post("/bookings/{booking_id}/review", summary="Mark reviewed (needs_review becomes confirmed)")
    def review(booking_id: int, member: StaffMember = signed_in) -> dict[str, Any]:
        row = run(lambda session: operations.mark_reviewed(session, booking_id, actor=member.username))
        return asdict(row)

    @router.patch("/bookings/{booking_id}", summary="Change a booking's start, service or status")
    def edit(booking_id: int, body: BookingEdit, member: StaffMember = signed_in) -> dict[str, Any]:
        if body.start is not None and body.start.tzinfo is not None:
            raise HTTPException(422, "start is business-local time: give it without an offset")
        row = run(
            lambda session: operations.edit_booking(
                session,
                booking_id,
                actor=member.username,
                start=body.start,
                service=body.service,
                status=body.status,
            )
        )
        return asdict(row)

    @router.post("/bookings/{booking_id}/cancel", summary="Cancel a booking")
    def cancel(booking_id: int, member: StaffMember = signed_in) -> dict[str, Any]:
        return asdict(
            run(lambda session: operations.cancel_booking(session, booking_id, actor=member.username))
        )

    @router.get("/inventory", summary="Stock items")
    def list_inventory(member: StaffMember = signed_in) -> list[dict[str, Any]]:
        return run(lambda session: [_item_json(item) for item in operations.inventory(session)])

    @router.patch("/inventory/{sku}", summary="Change an item's name, quantity, price or aliases (admins)")
    def edit_inventory(sku: str, body: InventoryEdit, member: StaffMember = signed_in) -> dict[str, Any]:
        admin_only(member)
        return run(
            lambda session: _item_json(
                operations.update_inventory(session, sku, actor=member.username, **body.model_dump())
            )
        )

    @router.get("/articles", summary="Knowledge articles")
    def list_articles(member: StaffMember = signed_in) -> list[dict[str, Any]]:
        return run(lambda session: [_article_json(article) for article in operations.articles(session)])

    @router.get("/articles/{slug}", summary="One knowledge article")
    def get_article(slug: str, member: StaffMember = signed_in) -> dict[str, Any]:
        return run(lambda session: _article_json(operations.article(session, slug)))

    @router.put("/articles/{slug}", summary="Create or replace a knowledge article (admins)")
    def put_article(slug: str, body: ArticleBody, member: StaffMember = signed_in) -> dict[str, Any]:
        admin_only(member)
        return run(
            lambda session: _article_json(
                operations.save_article(
                    session, slug, actor=member.username, title=body.title, body=body.body
                )
            )
        )

    return router

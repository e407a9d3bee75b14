"""Paging the bookings list, on the admin page and in the JSON API: pages of a bounded size, next/previous
links that keep the filters, every row exactly once across the pages, and clear errors for bad positions."""

from __future__ import annotations

import datetime as dt
import html
import re
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from crm.models import Booking, Service
from crm.web.operations import MAX_OFFSET, MAX_PAGE_SIZE, PAGE_SIZE
from tests.crm.web.test_admin_api import _headers
from tests.crm.web.test_admin_pages import sign_in

EXTRA = 130  # with the seeded booking: 131 rows, so two full default pages and a short third
FIRST_DAY = dt.datetime(2026, 12, 1, 8, 0)


@pytest.fixture
def many_bookings(sessions: sessionmaker[Session]) -> None:
    """EXTRA bookings over a few days; every start is shared by three bookings, so the id tie-break in
    the order (start, id) falls on page boundaries too."""
    statuses = ("confirmed", "needs_review", "cancelled", "confirmed", "held")
    with sessions.begin() as session:
        services = list(session.scalars(select(Service.id).order_by(Service.id)))
        for number in range(EXTRA):
            start = FIRST_DAY + dt.timedelta(days=number // 45, minutes=30 * ((number // 3) % 15))
            session.add(
                Booking(
                    customer_id=1 + number % 3,
                    service_id=services[number % len(services)],
                    start=start,
                    end=start + dt.timedelta(minutes=30),
                    status=statuses[number % len(statuses)],
                )
            )


def _expected(sessions: sessionmaker[Session], *conditions: Any) -> list[int]:
    """The ids the list should show, in order, straight from the database."""
    with sessions() as session:
        query = (
            select(Booking.id)
            .join(Service, Service.id == Booking.service_id)
            .where(*conditions)
            .order_by(Booking.start, Booking.id)
        )
        return list(session.scalars(query))


def _page(client: TestClient, url: str) -> tuple[list[int], str | None, str | None]:
    """Ids on the page, and its previous and next links."""
    response = client.get(url)
    assert response.status_code == 200, response.text
    ids = [int(found) for found in re.findall(r'data-booking-id="(\d+)"', response.text)]

    def link(rel: str) -> str | None:
        found = re.search(rf'<a href="([^"]+)" rel="{rel}">', response.text)
        return None if found is None else html.unescape(found.group(1))

    return ids, link("prev"), link("next")


def _walk_pages(client: TestClient, url: str) -> tuple[list[list[int]], str]:
    """Follow "Next" from `url` to the end; the pages, and the last page's URL."""
    pages: list[list[int]] = []
    next_url: str | None = url
    while next_url is not None:
        url = next_url
        ids, _, next_url = _page(client, url)
        pages.append(ids)
        assert len(pages) < 50, "the next links go round in circles"
    return pages, url


def test_pages_cover_every_booking_once(
    client: TestClient, many_bookings: None, sessions: sessionmaker[Session]
) -> None:
    sign_in(client)
    everything = _expected(sessions)
    assert len(everything) == EXTRA + 1 > 2 * PAGE_SIZE

    first, previous, _ = _page(client, "/admin/bookings")
    assert len(first) == PAGE_SIZE and previous is None
    pages, last_url = _walk_pages(client, "/admin/bookings")
    assert [len(page) for page in pages] == [PAGE_SIZE, PAGE_SIZE, len(everything) - 2 * PAGE_SIZE]
    assert [booking for page in pages for booking in page] == everything

    # And back again with "Previous", page by page, from the last one.
    backwards: list[list[int]] = []
    url: str | None = last_url
    while url is not None:
        ids, url, _ = _page(client, url)
        backwards.append(ids)
        assert len(backwards) < 50
    assert backwards == list(reversed(pages))


def test_page_links_keep_the_filters_and_page_size(
    client: TestClient, many_bookings: None, sessions: sessionmaker[Session]
) -> None:
    sign_in(client)
    expected = _expected(sessions, Booking.status == "confirmed", Service.name == "oil change")
    assert len(expected) > 7
    first_url = "/admin/bookings?status=confirmed&service=oil+change&limit=7"
    first, _, next_url = _page(client, first_url)
    assert first == expected[:7]
    assert next_url is not None and "status=confirmed" in next_url and "service=oil+change" in next_url
    assert "limit=7" in next_url
    second = client.get(next_url).text
    assert '<option value="confirmed" selected>' in second  # the form still shows the filters
    assert 'name="limit" value="7"' in second and 'href="/admin/bookings?status=confirmed' in second
    pages, _ = _walk_pages(client, first_url)
    assert all(len(page) == 7 for page in pages[:-1]) and 1 <= len(pages[-1]) <= 7
    assert [booking for page in pages for booking in page] == expected

    day = FIRST_DAY.date() + dt.timedelta(days=1)
    one_day = _expected(
        sessions,
        Booking.start >= dt.datetime.combine(day, dt.time()),
        Booking.start < dt.datetime.combine(day + dt.timedelta(days=1), dt.time()),
        Booking.status == "needs_review",
        Booking.reviewed_at.is_(None),
    )
    pages, _ = _walk_pages(client, f"/admin/bookings?day={day.isoformat()}&review=yes&limit=2")
    assert [booking for page in pages for booking in page] == one_day and len(pages) > 1


def test_a_booking_added_meanwhile_does_not_repeat_rows(
    client: TestClient, many_bookings: None, sessions: sessionmaker[Session]
) -> None:
    sign_in(client)
    first, _, next_url = _page(client, "/admin/bookings")
    assert next_url is not None
    with sessions.begin() as session:  # lands on the first page, before the cursor
        session.add(
            Booking(
                customer_id=2,
                service_id=1,
                start=dt.datetime(2026, 11, 1, 9, 0),
                end=dt.datetime(2026, 11, 1, 9, 30),
                status="confirmed",
            )
        )
    second, _, _ = _page(client, next_url)
    everything = _expected(sessions)
    assert not set(first) & set(second)
    assert second == everything[PAGE_SIZE + 1 : 2 * PAGE_SIZE + 1]


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("limit=0", "a page holds 1 to"),
        (f"limit={MAX_PAGE_SIZE + 1}", "a page holds 1 to"),
        ("limit=ten", "a page holds 1 to"),
        ("limit=%C2%B2", "a page holds 1 to"),  # a superscript two: a digit to str.isdigit, not to int()
        ("limit=" + "9" * 5000, "a page holds 1 to"),
        ("after=yesterday", "is not a page position"),
        ("after=2026-11-19T09:00:00_x", "is not a page position"),
        ("before=2026-11-19T09:00:00%2B01:00_3", "is not a page position"),
        ("after=2026-13-19T09:00:00_3", "is not a page position"),
        ("after=" + "1" * 300, "is not a page position"),
        ("after=2026-11-19T09:00:00_" + "9" * 30, "is not a page position"),  # beyond a 64-bit id
        ("after=2026-11-19T09:00:00_1&before=2026-11-19T09:00:00_2", "not both"),
        ("day=2026-02-30", "is not a date"),
        ("review=maybe", "review must be yes, no or left out"),
        ("review=YES", "review must be yes, no or left out"),
    ],
)
def test_bad_page_parameters_get_a_400(client: TestClient, query: str, message: str) -> None:
    sign_in(client)
    response = client.get(f"/admin/bookings?{query}")
    assert response.status_code == 400, response.text
    assert message in html.unescape(response.text)


def _api_pages(client: TestClient, headers: dict[str, str], params: dict[str, Any]) -> list[list[int]]:
    pages: list[list[int]] = []
    response = client.get("/api/bookings", params=params, headers=headers)
    while True:
        assert response.status_code == 200, response.text
        pages.append([row["id"] for row in response.json()])
        following = response.links.get("next")
        if following is None:
            return pages
        assert len(pages) < 50
        response = client.get(following["url"], headers=headers)


def test_api_pages_through_link_headers(
    client: TestClient, many_bookings: None, sessions: sessionmaker[Session]
) -> None:
    headers = _headers(client)
    everything = _expected(sessions)
    first = client.get("/api/bookings", headers=headers)
    assert len(first.json()) == PAGE_SIZE and "prev" not in first.links
    pages = _api_pages(client, headers, {"limit": 25})
    assert [len(page) for page in pages[:-1]] == [25] * (len(pages) - 1)
    assert [booking for page in pages for booking in page] == everything

    cancelled = _expected(sessions, Booking.status == "cancelled")
    pages = _api_pages(client, headers, {"status": "cancelled", "limit": 4})
    assert [booking for page in pages for booking in page] == cancelled and len(pages) > 1

    # rel="prev" from the second page leads back to the first.
    second = client.get(first.links["next"]["url"], headers=headers)
    assert "status" not in second.links["prev"]["url"]
    back = client.get(second.links["prev"]["url"], headers=headers)
    assert [row["id"] for row in back.json()] == everything[:PAGE_SIZE] and "prev" not in back.links

    # A small offset still works (and pages on from where it landed).
    skipped = client.get("/api/bookings", params={"offset": 3, "limit": 5}, headers=headers)
    assert [row["id"] for row in skipped.json()] == everything[3:8]
    assert "offset" not in skipped.links["next"]["url"] and "prev" in skipped.links


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("after=yesterday", "is not a page position"),
        ("before=2026-11-19T09:00:00_", "is not a page position"),
        ("after=2026-11-19T09:00:00_" + "9" * 30, "is not a page position"),
        ("after=2026-11-19T09:00:00_1&before=2026-11-19T09:00:00_2", "not both"),
        ("offset=3&after=2026-11-19T09:00:00_1", "not both"),
        (f"offset={MAX_OFFSET + 1}", "less than or equal"),
        ("offset=-1", "greater than or equal"),
        ("limit=0", "greater than or equal"),
        ("after=" + "1" * 300, "at most 64 characters"),
    ],
)
def test_api_bad_page_parameters_get_a_422(client: TestClient, query: str, message: str) -> None:
    response = client.get(f"/api/bookings?{query}", headers=_headers(client))
    assert response.status_code == 422, response.text
    assert message in response.text

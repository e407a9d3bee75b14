"""A CRM admin reviews, in headless Chromium, the booking a real test call just made; another pages
through a long bookings list and signs out.

`switchboard serve` runs as a subprocess; `switchboard call` books an oil change over SIP/RTP;
`switchboard admin create-user` creates the admin; Playwright drives Debian's chromium (no downloaded
browser) through sign-in, the bookings list, the booking's transcript, "mark reviewed" and the audit trail;
then through "Next"/"Previous" pages of a filtered list, "Sign out", the Back button and a copied cookie.
"""

from __future__ import annotations

import datetime as dt
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from crm.db import create_engine_for, session_factory
from crm.models import Booking, Customer, Service
from crm.web.operations import PAGE_SIZE
from tests.e2e.conftest import RunningServer, run_test_call, running_server, switchboard_command
from tests.e2e.test_booking_call import booking_day
from tests.services import unavailable

pytestmark = pytest.mark.e2e

CHROMIUM = "/usr/bin/chromium"
ADMIN_PASSWORD = "review-the-agent"
CALLER = "+15550100002"  # Marcus, seeded


# No first-run, sync, update or QUIC traffic: the browser talks to our server and nothing else. The fresh
# profile directory (--user-data-dir) is passed as launch_persistent_context's user_data_dir, which
# Playwright insists on.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    if not os.path.exists(CHROMIUM) or shutil.which("chromium") is None:
        unavailable("chromium not found (install the Debian package chromium)")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        unavailable("the playwright Python package is not installed (pip install playwright)")
    with running_server(tmp_path_factory.mktemp("admin-serve")) as running:
        yield running


def place_booking_call(server: RunningServer) -> dict[str, Any]:
    spoken_day, _ = booking_day()
    lines = ["I'd like to book an oil change", f"{spoken_day} at ten in the morning", "yes"]
    return run_test_call(server, CALLER, lines)


def create_admin(server: RunningServer, username: str = "ada") -> None:
    env = dict(
        os.environ,
        SWITCHBOARD_DATA_DIR=str(server.data_dir),
        SWITCHBOARD_DATABASE_URL=server.database_url,
        SWITCHBOARD_ADMIN_PASSWORD=ADMIN_PASSWORD,
    )
    completed = subprocess.run(
        [*switchboard_command(), "admin", "create-user", username, "--role", "admin"],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    assert f"created admin {username!r}" in completed.stdout


def test_admin_reviews_the_booking_a_call_made(server: RunningServer, tmp_path: Path) -> None:
    from playwright.sync_api import expect, sync_playwright

    call = place_booking_call(server)
    _, day = booking_day()
    create_admin(server)
    shots = Path(os.environ.get("SWITCHBOARD_SCREENSHOT_DIR", tmp_path / "shots"))
    shots.mkdir(parents=True, exist_ok=True)

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch_persistent_context(
            str(tmp_path / "profile"),
            executable_path=CHROMIUM,
            headless=True,
            args=CHROMIUM_ARGS,
            viewport={"width": 1280, "height": 900},
        )
        try:
            page = browser.new_page()
            page.set_default_timeout(15_000)
            # Unauthenticated: sent to the sign-in form.
            page.goto(f"{server.api}/admin/bookings")
            expect(page).to_have_url(f"{server.api}/admin/login?next=%2Fadmin%2Fbookings")
            page.fill("input[name=username]", "ada")
            page.fill("input[name=password]", ADMIN_PASSWORD)
            page.click("button[type=submit]")
            expect(page.locator("h1")).to_have_text("Bookings")

            # Find the booking: the day it was made for, oil changes only.
            page.fill("input[name=day]", day.isoformat())
            page.select_option("select[name=service]", "oil change")
            page.click("form.filters button[type=submit]")
            row = page.locator("#bookings tbody tr", has_text="Marcus")
            expect(row).to_have_count(1)
            expect(row).to_contain_text("10:00")
            page.screenshot(path=str(shots / "bookings.png"), full_page=True)
            row.locator("a").first.click()

            # The transcript of the call that made it, with telemetry.
            transcript = page.locator("#transcript")
            expect(transcript).to_contain_text("oil change")
            expect(transcript.locator("tr.caller")).to_have_count(len(call["turns"]))
            expect(transcript).to_contain_text(" ms")
            expect(page.locator("#reviewed")).to_have_text("not yet")

            page.click("text=Mark reviewed")
            expect(page.locator(".notice")).to_have_text("Booking reviewed.")
            expect(page.locator("#reviewed")).to_contain_text("by ada")
            audit = page.locator("#audit tbody tr")
            expect(audit.filter(has_text="booking.review")).to_contain_text("ada")
            expect(audit.filter(has_text="booking.create")).to_contain_text(f"agent:{call['call_id']}")
            page.screenshot(path=str(shots / "booking.png"), full_page=True)
        finally:
            browser.close()


def add_bookings(server: RunningServer, day: dt.date, count: int) -> None:
    """`count` oil changes for a seeded customer on `day`, written straight into the server's database."""
    engine = create_engine_for(server.database_url)
    try:
        with session_factory(engine).begin() as session:
            customer = session.scalars(select(Customer.id).order_by(Customer.id)).first()
            service = session.scalars(select(Service.id).where(Service.name == "oil change")).one()
            assert customer is not None
            for number in range(count):
                start = dt.datetime.combine(day, dt.time(8)) + dt.timedelta(minutes=5 * number)
                session.add(
                    Booking(
                        customer_id=customer,
                        service_id=service,
                        start=start,
                        end=start + dt.timedelta(minutes=30),
                        status="confirmed",
                    )
                )
    finally:
        engine.dispose()


def test_admin_pages_through_bookings_then_signs_out(server: RunningServer, tmp_path: Path) -> None:
    from playwright.sync_api import Page, expect, sync_playwright

    # A day nobody else books (the call test books within the next week), with more than a page of rows.
    day = dt.date.today() + dt.timedelta(days=400)
    extra = 12
    add_bookings(server, day, PAGE_SIZE + extra)
    create_admin(server, "bea")
    signed_out = re.compile(re.escape(f"{server.api}/admin/login?next=%2Fadmin%2Fbookings"))

    def booking_ids(page: Page) -> list[str]:
        rows = page.locator("#bookings tbody tr[data-booking-id]")
        return [rows.nth(index).get_attribute("data-booking-id") or "" for index in range(rows.count())]

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch_persistent_context(
            str(tmp_path / "profile"),
            executable_path=CHROMIUM,
            headless=True,
            args=CHROMIUM_ARGS,
            viewport={"width": 1280, "height": 900},
        )
        try:
            page = browser.new_page()
            page.set_default_timeout(15_000)
            page.goto(f"{server.api}/admin/login")
            page.fill("input[name=username]", "bea")
            page.fill("input[name=password]", ADMIN_PASSWORD)
            page.click("button[type=submit]")
            expect(page.locator("h1")).to_have_text("Bookings")

            page.fill("input[name=day]", day.isoformat())
            page.click("form.filters button[type=submit]")
            rows = page.locator("#bookings tbody tr[data-booking-id]")
            expect(rows).to_have_count(PAGE_SIZE)
            expect(page.locator("a[rel=prev]")).to_have_count(0)
            first_page = booking_ids(page)

            page.click("a[rel=next]")
            expect(rows).to_have_count(extra)
            expect(page.locator("input[name=day]")).to_have_value(day.isoformat())  # the filter is kept
            expect(page.locator("a[rel=next]")).to_have_count(0)
            second_page = booking_ids(page)
            assert not set(first_page) & set(second_page)
            assert len(set(first_page + second_page)) == PAGE_SIZE + extra
            for index in range(extra):
                expect(rows.nth(index)).to_contain_text(day.isoformat())

            page.click("a[rel=prev]")
            expect(rows).to_have_count(PAGE_SIZE)
            assert booking_ids(page) == first_page
            session_cookie = [cookie for cookie in browser.cookies() if cookie.get("name") == "sb_admin"]
            assert len(session_cookie) == 1

            page.click("form.logout button[type=submit]")
            expect(page).to_have_url(f"{server.api}/admin/login")
            # Back to the bookings page: not shown from the browser's cache, but sent to sign in.
            page.go_back()
            expect(page).to_have_url(signed_out)
            expect(page.locator("h1")).to_have_text("Sign in")
            # A copy of the old session cookie, put back into the browser, is refused by the server.
            browser.add_cookies(session_cookie)  # type: ignore[arg-type]
            page.goto(f"{server.api}/admin/bookings?day={day.isoformat()}")
            expect(page).to_have_url(signed_out)
            expect(page.locator("#bookings")).to_have_count(0)
        finally:
            browser.close()

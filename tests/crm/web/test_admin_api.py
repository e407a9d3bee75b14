"""The CRM JSON API under /api on SQLite and PostgreSQL: auth, bookings, stock, articles, bad input."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.crm.web.conftest import ADMIN_PASSWORD, CALL_ID, MAX_BODY, SUPERVISOR_PASSWORD


def _headers(client: TestClient, username: str = "ada", password: str = ADMIN_PASSWORD) -> dict[str, str]:
    response = client.post("/api/auth/token", json={"username": username, "password": password})
    assert response.status_code == 200, response.text
    return {"Authorization": f"Bearer {response.json()['token']}"}


def test_token_needs_the_right_password(client: TestClient) -> None:
    assert client.post("/api/auth/token", json={"username": "ada", "password": "wrong"}).status_code == 401
    assert client.post("/api/auth/token", json={"username": "nobody", "password": "x"}).status_code == 401


@pytest.mark.parametrize("path", ["/api/bookings", "/api/bookings/1", "/api/inventory", "/api/articles"])
def test_unauthenticated_requests_get_401(client: TestClient, path: str) -> None:
    response = client.get(path)
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"
    bad = client.get(path, headers={"Authorization": "Bearer forged.token.value"})
    assert bad.status_code == 401


def test_list_and_filter_bookings(client: TestClient, agent_booking: int) -> None:
    headers = _headers(client)
    everything = client.get("/api/bookings", headers=headers).json()
    assert [row["id"] for row in everything] == [1, agent_booking]  # Dana's seeded Thursday booking first

    def ids(**params: Any) -> list[int]:
        response = client.get("/api/bookings", params=params, headers=headers)
        assert response.status_code == 200, response.text
        return [row["id"] for row in response.json()]

    assert ids(needs_review=True) == [agent_booking]
    assert ids(needs_review=False) == [1]
    assert ids(day="2026-11-20") == [agent_booking]
    assert ids(service="Tire Rotation") == [1]
    assert ids(status="confirmed") == [1]
    assert ids(day="2026-11-22") == []


def test_booking_detail_has_transcript_and_telemetry(client: TestClient, agent_booking: int) -> None:
    detail = client.get(f"/api/bookings/{agent_booking}", headers=_headers(client)).json()
    assert detail["booking"]["source_call_id"] == CALL_ID
    assert [turn["speaker"] for turn in detail["turns"]] == ["agent", "caller", "agent"]
    caller = detail["turns"][1]
    assert (caller["stt_ms"], caller["e2e_ms"], caller["intent"]) == (412.0, 1630.0, "book")


def test_review_edit_cancel_write_audit_entries(client: TestClient, agent_booking: int) -> None:
    headers = _headers(client, "sam", SUPERVISOR_PASSWORD)
    reviewed = client.post(f"/api/bookings/{agent_booking}/review", headers=headers).json()
    assert (reviewed["status"], reviewed["reviewed_by"]) == ("confirmed", "sam")
    edited = client.patch(
        f"/api/bookings/{agent_booking}",
        json={"start": "2026-11-20T11:00:00", "service": "brake inspection"},
        headers=headers,
    )
    assert edited.status_code == 200, edited.text
    assert (edited.json()["service"], edited.json()["end"]) == ("brake inspection", "2026-11-20T11:45:00")
    assert (
        client.post(f"/api/bookings/{agent_booking}/cancel", headers=headers).json()["status"] == "cancelled"
    )
    audit = client.get(f"/api/bookings/{agent_booking}", headers=headers).json()["audit"]
    assert [(entry["actor"], entry["action"]) for entry in audit] == [
        ("sam", "booking.review"),
        ("sam", "booking.edit"),
        ("sam", "booking.cancel"),
    ]


def test_edit_refuses_closed_times(client: TestClient, agent_booking: int) -> None:
    response = client.patch(
        f"/api/bookings/{agent_booking}", json={"start": "2026-11-22T10:00:00"}, headers=_headers(client)
    )
    assert response.status_code == 409
    assert "closed" in response.json()["detail"]


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "message"),
    [
        ("get", "/api/bookings?day=2026-02-30", None, 422, "date"),
        ("get", "/api/bookings?day=tomorrow", None, 422, "date"),
        ("get", "/api/bookings?status=done", None, 422, "status must be one of"),
        ("get", "/api/bookings?limit=100000", None, 422, "less than or equal"),
        ("get", "/api/bookings/99999", None, 404, "no booking with id 99999"),
        ("get", "/api/bookings/abc", None, 422, "integer"),
        ("patch", "/api/bookings/1", {"start": "2026-11-40T10:00"}, 422, "datetime"),
        ("patch", "/api/bookings/1", {"start": "2026-11-20T10:00:00+01:00"}, 422, "without an offset"),
        ("patch", "/api/bookings/1", {"service": "car wash"}, 422, "no service named"),
        ("patch", "/api/bookings/1", {"status": "done"}, 422, "status must be one of"),
        ("patch", "/api/bookings/1", {"colour": "red"}, 422, "Extra inputs"),
        ("patch", "/api/inventory/NOPE", {"quantity": 1}, 404, "no inventory item"),
        ("patch", "/api/inventory/BAT-24F", {"quantity": -1}, 422, "greater than or equal"),
        ("get", "/api/articles/nope", None, 404, "no article"),
        ("put", "/api/articles/Bad Slug", {"title": "t", "body": "b"}, 422, "slug"),
    ],
)
def test_bad_input_gets_a_clear_4xx(
    client: TestClient, method: str, path: str, body: object, status: int, message: str
) -> None:
    response = client.request(method.upper(), path, json=body, headers=_headers(client))
    assert response.status_code == status, response.text
    assert message in response.text


def test_oversize_payloads_are_refused_with_413(client: TestClient) -> None:
    headers = _headers(client)
    big = {"title": "Big", "body": "x" * (MAX_BODY + 1)}
    response = client.put("/api/articles/big", json=big, headers=headers)
    assert response.status_code == 413
    assert "larger than" in response.json()["detail"]

    def chunks() -> Any:  # no Content-Length: counted while streaming
        yield b'{"title": "Big", "body": "'
        for _ in range(MAX_BODY // 1024 + 1):
            yield b"x" * 1024
        yield b'"}'

    streamed = client.put(
        "/api/articles/big", content=chunks(), headers={**headers, "Content-Type": "application/json"}
    )
    assert streamed.status_code == 413


def test_stock_and_articles(client: TestClient) -> None:
    admin, supervisor = _headers(client), _headers(client, "sam", SUPERVISOR_PASSWORD)
    battery = client.patch("/api/inventory/BAT-24F", json={"quantity": 9, "price": "129.50"}, headers=admin)
    assert battery.status_code == 200, battery.text
    assert (battery.json()["quantity"], battery.json()["price"]) == (9, "129.50")
    assert client.patch("/api/inventory/BAT-24F", json={"quantity": 1}, headers=supervisor).status_code == 403
    saved = client.put("/api/articles/towing", json={"title": "Towing", "body": "We tow."}, headers=admin)
    assert saved.status_code == 200
    assert client.get("/api/articles/towing", headers=supervisor).json()["body"] == "We tow."
    assert (
        client.put("/api/articles/towing", json={"title": "T", "body": "x"}, headers=supervisor).status_code
        == 403
    )


def test_openapi_documents_the_crm_routes(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    assert {
        "/api/bookings",
        "/api/bookings/{booking_id}",
        "/api/inventory/{sku}",
        "/api/articles/{slug}",
    } <= set(paths)

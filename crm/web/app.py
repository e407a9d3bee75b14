"""Wiring the admin pages and the CRM JSON API into a FastAPI application."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlencode

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles

from crm.web.api import api_router
from crm.web.auth import AdminSettings, Authenticator, Forbidden, NotAuthenticated
from crm.web.limits import BodySizeLimit, NoStore
from crm.web.pages import TEMPLATES, pages_router

STATIC_DIR = Path(__file__).resolve().parent / "static"


def install_admin(app: FastAPI, settings: AdminSettings) -> None:
    """Add /admin (pages), /admin/static and the /api CRM routes to `app`, with a body-size limit and
    `Cache-Control: no-store` on everything under /admin and /api/ but the static files."""
    auth = Authenticator(settings)
    app.include_router(pages_router(settings, auth))
    app.include_router(api_router(settings, auth))
    app.mount("/admin/static", StaticFiles(directory=STATIC_DIR), name="admin-static")
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes, path_prefixes=("/admin", "/api/"))
    app.add_middleware(NoStore, path_prefixes=("/admin", "/api/"), except_prefixes=("/admin/static/",))

    # Raised by the pages only; the API turns its own into 401/403 JSON.
    @app.exception_handler(NotAuthenticated)
    async def to_login(request: Request, exc: Exception) -> Response:
        if request.method != "GET":
            return HTMLResponse("Sign in first: <a href='/admin/login'>sign in</a>", status_code=401)
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        return RedirectResponse(f"/admin/login?{urlencode({'next': target})}", status_code=303)

    @app.exception_handler(Forbidden)
    async def forbidden(request: Request, exc: Exception) -> Response:
        return TEMPLATES.TemplateResponse(
            request, "error.html", {"me": None, "message": str(exc), "status": 403}, status_code=403
        )

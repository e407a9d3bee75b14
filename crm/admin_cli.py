"""`switchboard admin ...`: staff account management from the command line (the first admin, passwords,
deactivation, signing a member out everywhere)."""

from __future__ import annotations

import argparse
import getpass
import os
import sys
from collections.abc import Callable
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from crm.models import ADMIN_ROLES

PASSWORD_ENV = "SWITCHBOARD_ADMIN_PASSWORD"


def _password(command: str) -> str | None:
    # The password comes from the environment or a prompt, never argv (visible in `ps`).
    password = os.environ.get(PASSWORD_ENV)
    if password is None:
        password = getpass.getpass("password: ")
        if getpass.getpass("again: ") != password:
            print(f"switchboard admin {command}: the passwords differ", file=sys.stderr)
            return None
    return password


def _with_database(command: str, work: Callable[[sessionmaker[Session]], str]) -> int:
    """Migrate the configured database, run `work` on it and print what it says; 1 on a refusal."""
    from crm.db import create_engine_for, session_factory
    from crm.migrate import upgrade_to_head
    from switchboard.config import Settings

    settings = Settings()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    url = settings.resolved_database_url
    upgrade_to_head(url)
    engine = create_engine_for(url)
    try:
        print(work(session_factory(engine)))
    except ValueError as exc:
        print(f"switchboard admin {command}: {exc}", file=sys.stderr)
        return 1
    finally:
        engine.dispose()
    return 0


def _create_user(args: argparse.Namespace) -> int:
    from crm.admin_users import create_admin_user

    password = _password("create-user")
    if password is None:
        return 2

    def create(sessions: sessionmaker[Session]) -> str:
        staff = create_admin_user(sessions, args.username, password, role=args.role)
        return f"created {staff.role} {staff.username!r} (id {staff.id})"

    return _with_database("create-user", create)


def _set_password(args: argparse.Namespace) -> int:
    from crm.admin_users import set_password

    password = _password("set-password")
    if password is None:
        return 2

    def change(sessions: sessionmaker[Session]) -> str:
        staff = set_password(sessions, args.username, password)
        return f"changed the password of {staff.username!r}; their sessions and tokens are revoked"

    return _with_database("set-password", change)


def _set_active(args: argparse.Namespace) -> int:
    from crm.admin_users import set_active

    active = args.admin_command == "enable"

    def change(sessions: sessionmaker[Session]) -> str:
        staff = set_active(sessions, args.username, active)
        done = "enabled" if active else "disabled; their sessions and tokens are revoked"
        return f"{staff.username!r} {done}"

    return _with_database(args.admin_command, change)


def _sign_out(args: argparse.Namespace) -> int:
    from crm.admin_users import sign_out_everywhere

    def sign_out(sessions: sessionmaker[Session]) -> str:
        staff = sign_out_everywhere(sessions, args.username)
        return f"signed {staff.username!r} out of every session and API token"

    return _with_database("sign-out", sign_out)


def add_admin_commands(commands: Any) -> None:
    """Register `admin` under the top-level subparsers (`argparse._SubParsersAction`)."""
    admin = commands.add_parser("admin", help="manage admin-app staff accounts")
    actions = admin.add_subparsers(dest="admin_command", required=True)
    create = actions.add_parser("create-user", help=f"create a staff login (password from ${PASSWORD_ENV})")
    create.add_argument("username")
    create.add_argument("--role", choices=ADMIN_ROLES, default="admin")
    create.set_defaults(handler=_create_user)
    password = actions.add_parser(
        "set-password", help=f"change a password (from ${PASSWORD_ENV}) and revoke that member's sessions"
    )
    password.add_argument("username")
    password.set_defaults(handler=_set_password)
    for name, text in (
        ("disable", "stop a login from signing in and revoke its sessions"),
        ("enable", "let a disabled login sign in again"),
    ):
        toggle = actions.add_parser(name, help=text)
        toggle.add_argument("username")
        toggle.set_defaults(handler=_set_active)
    sign_out = actions.add_parser("sign-out", help="revoke every session and API token of a member")
    sign_out.add_argument("username")
    sign_out.set_defaults(handler=_sign_out)

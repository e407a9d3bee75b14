"""`switchboard admin ...`: staff account management from the command line (the first admin)."""

from __future__ import annotations

import argparse
import getpass
import os
import sys
from typing import Any

from crm.models import ADMIN_ROLES

PASSWORD_ENV = "SWITCHBOARD_ADMIN_PASSWORD"


def _create_user(args: argparse.Namespace) -> int:
    from crm.admin_users import create_admin_user
    from crm.db import create_engine_for, session_factory
    from crm.migrate import upgrade_to_head
    from switchboard.config import Settings

    # The password comes from the environment or a prompt, never argv (visible in `ps`).
    password = os.environ.get(PASSWORD_ENV)
    if password is None:
        password = getpass.getpass("password: ")
        if getpass.getpass("again: ") != password:
            print("switchboard admin create-user: the passwords differ", file=sys.stderr)
            return 2
    settings = Settings()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    url = settings.resolved_database_url
    upgrade_to_head(url)
    engine = create_engine_for(url)
    try:
        staff = create_admin_user(session_factory(engine), args.username, password, role=args.role)
    except ValueError as exc:
        print(f"switchboard admin create-user: {exc}", file=sys.stderr)
        return 1
    finally:
        engine.dispose()
    print(f"created {staff.role} {staff.username!r} (id {staff.id})")
    return 0


def add_admin_commands(commands: Any) -> None:
    """Register `admin` under the top-level subparsers (`argparse._SubParsersAction`)."""
    admin = commands.add_parser("admin", help="manage admin-app staff accounts")
    actions = admin.add_subparsers(dest="admin_command", required=True)
    create = actions.add_parser("create-user", help=f"create a staff login (password from ${PASSWORD_ENV})")
    create.add_argument("username")
    create.add_argument("--role", choices=ADMIN_ROLES, default="admin")
    create.set_defaults(handler=_create_user)

"""Staff accounts: scrypt hashes, authentication, and `switchboard admin create-user`."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from crm.admin_users import AdminUserError, authenticate, create_admin_user
from crm.db import create_engine_for, session_factory
from crm.models import AdminUser, AuditLog
from crm.passwords import hash_password, verify_password
from switchboard.cli import main


def test_hashes_are_salted_and_verify() -> None:
    first, second = hash_password("open sesame"), hash_password("open sesame")
    assert first != second and first.startswith("scrypt$16384$8$1$")
    assert verify_password("open sesame", first) and verify_password("open sesame", second)
    assert not verify_password("open sesame!", first)
    assert not verify_password("open sesame", "plaintext")
    assert not verify_password("open sesame", "scrypt$x$8$1$AAAA$AAAA")


def test_create_and_authenticate(sessions: sessionmaker[Session]) -> None:
    staff = create_admin_user(sessions, "ada", "long enough", role="supervisor")
    assert (staff.username, staff.role, staff.is_admin) == ("ada", "supervisor", False)
    with sessions() as session:
        assert authenticate(session, "ada", "long enough") == staff
        assert authenticate(session, "ada", "wrong") is None
        assert authenticate(session, "nobody", "long enough") is None
        stored = session.scalars(select(AdminUser.password_hash)).one()
        assert "long enough" not in stored
        assert session.scalars(select(AuditLog.action)).all()[-1] == "admin_user.create"
    with pytest.raises(AdminUserError, match="already exists"):
        create_admin_user(sessions, "ada", "another one")
    with pytest.raises(AdminUserError, match="at least 8"):
        create_admin_user(sessions, "bob", "short")
    with pytest.raises(AdminUserError, match="role"):
        create_admin_user(sessions, "bob", "long enough", role="root")


def test_cli_create_user(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("SWITCHBOARD_DATA_DIR", str(tmp_path))
    monkeypatch.delenv("SWITCHBOARD_DATABASE_URL", raising=False)
    monkeypatch.setenv("SWITCHBOARD_ADMIN_PASSWORD", "first admin pw")
    assert main(["admin", "create-user", "root-admin"]) == 0
    assert "created admin 'root-admin'" in capsys.readouterr().out
    assert main(["admin", "create-user", "root-admin"]) == 1
    assert "already exists" in capsys.readouterr().err
    engine = create_engine_for(f"sqlite:///{tmp_path / 'switchboard.db'}")
    try:
        with session_factory(engine)() as session:
            assert authenticate(session, "root-admin", "first admin pw") is not None
    finally:
        engine.dispose()

"""Staff accounts: scrypt hashes, authentication, password changes, deactivation, session generations,
and the `switchboard admin` commands."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from crm.admin_users import (
    AdminUserError,
    authenticate,
    create_admin_user,
    load_staff,
    revoke_sessions,
    set_active,
    set_password,
    sign_out_everywhere,
)
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


def _actions(sessions: sessionmaker[Session]) -> list[tuple[str, str]]:
    with sessions() as session:
        rows = session.execute(select(AuditLog.actor, AuditLog.action).order_by(AuditLog.id)).all()
    return [(actor, action) for actor, action in rows if action.startswith("admin_user.")]


def test_session_generation_moves_on_every_revocation(sessions: sessionmaker[Session]) -> None:
    ada = create_admin_user(sessions, "ada", "long enough")
    bob = create_admin_user(sessions, "bob", "long enough too")
    assert (ada.session_generation, bob.session_generation) == (0, 0)
    assert revoke_sessions(sessions, ada.id, actor="ada") == 1
    assert revoke_sessions(sessions, ada.id, actor="ada") == 2
    assert revoke_sessions(sessions, 9999, actor="ada") is None
    assert set_password(sessions, " ada ", "a new password", actor="root").session_generation == 3
    assert set_active(sessions, "ada", False, actor="root").session_generation == 4
    assert sign_out_everywhere(sessions, "ada", actor="root").session_generation == 5
    with sessions() as session:
        assert load_staff(session, ada.id) is None  # disabled
        assert authenticate(session, "ada", "a new password") is None
        assert load_staff(session, bob.id) == bob  # untouched
    assert set_active(sessions, "ada", True, actor="root").session_generation == 6
    with sessions() as session:
        assert authenticate(session, "ada", "long enough") is None
        signed_in = authenticate(session, "ada", "a new password")
    assert signed_in is not None and signed_in.session_generation == 6
    assert _actions(sessions) == [
        ("cli", "admin_user.create"),
        ("cli", "admin_user.create"),
        ("ada", "admin_user.sign_out"),
        ("ada", "admin_user.sign_out"),
        ("root", "admin_user.password"),
        ("root", "admin_user.disable"),
        ("root", "admin_user.sign_out"),
        ("root", "admin_user.enable"),
    ]


def test_refused_account_changes_leave_the_account_alone(sessions: sessionmaker[Session]) -> None:
    ada = create_admin_user(sessions, "ada", "long enough")
    with pytest.raises(AdminUserError, match="at least 8"):
        set_password(sessions, "ada", "short")
    with pytest.raises(AdminUserError, match="no user named 'nobody'"):
        set_password(sessions, "nobody", "long enough")
    with pytest.raises(AdminUserError, match="no user named"):
        set_active(sessions, "nobody", False)
    with sessions() as session:
        assert load_staff(session, ada.id) == ada
    assert _actions(sessions) == [("cli", "admin_user.create")]


def test_cli_password_disable_enable_sign_out(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("SWITCHBOARD_DATA_DIR", str(tmp_path))
    monkeypatch.delenv("SWITCHBOARD_DATABASE_URL", raising=False)
    monkeypatch.setenv("SWITCHBOARD_ADMIN_PASSWORD", "first admin pw")
    assert main(["admin", "create-user", "root-admin"]) == 0
    monkeypatch.setenv("SWITCHBOARD_ADMIN_PASSWORD", "second admin pw")
    assert main(["admin", "set-password", "root-admin"]) == 0
    assert "sessions and tokens are revoked" in capsys.readouterr().out
    assert main(["admin", "set-password", "nobody"]) == 1
    assert "no user named 'nobody'" in capsys.readouterr().err
    assert main(["admin", "disable", "root-admin"]) == 0
    assert "disabled" in capsys.readouterr().out
    engine = create_engine_for(f"sqlite:///{tmp_path / 'switchboard.db'}")
    try:
        sessions = session_factory(engine)
        with sessions() as session:
            assert authenticate(session, "root-admin", "second admin pw") is None
        assert main(["admin", "enable", "root-admin"]) == 0
        assert main(["admin", "sign-out", "root-admin"]) == 0
        assert "signed 'root-admin' out" in capsys.readouterr().out
        with sessions() as session:
            assert authenticate(session, "root-admin", "first admin pw") is None
            staff = authenticate(session, "root-admin", "second admin pw")
        assert staff is not None and staff.session_generation == 4
    finally:
        engine.dispose()

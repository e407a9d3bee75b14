"""Staff logins for the admin app: creating them and checking passwords."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from crm.models import ADMIN_ROLES, AdminUser, AuditLog
from crm.passwords import WeakPassword, hash_password, verify_password

# Verified against when the username is unknown, so a wrong name costs as long as a wrong password.
_DUMMY_HASH = hash_password("not-a-real-password")


class AdminUserError(ValueError):
    """A staff account cannot be created as asked (duplicate name, unknown role, weak password)."""


@dataclass(frozen=True, slots=True)
class StaffMember:
    id: int
    username: str
    role: str  # admin | supervisor

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"


def _staff(user: AdminUser) -> StaffMember:
    return StaffMember(id=user.id, username=user.username, role=user.role)


def create_admin_user(
    sessions: sessionmaker[Session], username: str, password: str, *, role: str = "admin", actor: str = "cli"
) -> StaffMember:
    clean = username.strip()
    if not clean or len(clean) > 100 or any(ch.isspace() for ch in clean):
        raise AdminUserError("a username is 1 to 100 characters without spaces")
    if role not in ADMIN_ROLES:
        raise AdminUserError(f"role must be one of {', '.join(ADMIN_ROLES)}")
    try:
        password_hash = hash_password(password)
    except WeakPassword as exc:
        raise AdminUserError(str(exc)) from exc
    try:
        with sessions.begin() as session:
            user = AdminUser(username=clean, password_hash=password_hash, role=role)
            session.add(user)
            session.flush()
            session.add(
                AuditLog(actor=actor, action="admin_user.create", entity="admin_user", entity_id=str(user.id))
            )
            return _staff(user)
    except IntegrityError as exc:
        raise AdminUserError(f"a user named {clean!r} already exists") from exc


def authenticate(session: Session, username: str, password: str) -> StaffMember | None:
    user = session.scalars(select(AdminUser).where(AdminUser.username == username.strip())).first()
    if user is None or not user.active:
        verify_password(password, _DUMMY_HASH)
        return None
    return _staff(user) if verify_password(password, user.password_hash) else None


def load_staff(session: Session, user_id: int) -> StaffMember | None:
    user = session.get(AdminUser, user_id)
    return None if user is None or not user.active else _staff(user)

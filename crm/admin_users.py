"""Staff logins for the admin app: creating them, checking and changing passwords, deactivating them, and
signing a member out everywhere.

Sessions and API tokens are signed rather than stored (crm.web.auth); what the server keeps is a
generation per member, carried by every cookie and token it issues. Bumping it refuses all of them at
once: sign-out, a password change and (de)activation do so.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select, update
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
    # AdminUser.session_generation when the member was loaded: what a new cookie or token carries.
    session_generation: int = 0

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"


def _staff(user: AdminUser) -> StaffMember:
    return StaffMember(
        id=user.id, username=user.username, role=user.role, session_generation=user.session_generation
    )


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


def revoke_sessions(sessions: sessionmaker[Session], user_id: int, *, actor: str) -> int | None:
    """Sign the member out everywhere: every session cookie and API token issued so far is refused from
    now on. The new generation, or None for an unknown id."""
    with sessions.begin() as session:
        # One UPDATE ... RETURNING: two sign-outs at once both count, neither reads a stale value.
        generation = session.scalar(
            update(AdminUser)
            .where(AdminUser.id == user_id)
            .values(session_generation=AdminUser.session_generation + 1)
            .returning(AdminUser.session_generation)
        )
        if generation is not None:
            session.add(
                AuditLog(
                    actor=actor, action="admin_user.sign_out", entity="admin_user", entity_id=str(user_id)
                )
            )
        return generation


def set_password(
    sessions: sessionmaker[Session], username: str, password: str, *, actor: str = "cli"
) -> StaffMember:
    """Replace the member's password; the sessions and tokens they hold are revoked with the old one."""
    try:
        password_hash = hash_password(password)
    except WeakPassword as exc:
        raise AdminUserError(str(exc)) from exc
    return _change(sessions, username, "admin_user.password", actor, password_hash=password_hash)


def set_active(
    sessions: sessionmaker[Session], username: str, active: bool, *, actor: str = "cli"
) -> StaffMember:
    """Deactivate (or reactivate) a login. Either way its earlier sessions stay revoked, so reactivating
    an account does not bring back a cookie copied before it was disabled."""
    action = "admin_user.enable" if active else "admin_user.disable"
    return _change(sessions, username, action, actor, active=active)


def sign_out_everywhere(sessions: sessionmaker[Session], username: str, *, actor: str = "cli") -> StaffMember:
    """`revoke_sessions` by username, for the command line (a lost laptop, a leaked token)."""
    return _change(sessions, username, "admin_user.sign_out", actor)


def _change(
    sessions: sessionmaker[Session], username: str, action: str, actor: str, **values: object
) -> StaffMember:
    with sessions.begin() as session:
        user = session.scalars(
            update(AdminUser)
            .where(AdminUser.username == username.strip())
            .values(session_generation=AdminUser.session_generation + 1, **values)
            .returning(AdminUser)
        ).first()
        if user is None:
            raise AdminUserError(f"no user named {username.strip()!r}")
        session.add(AuditLog(actor=actor, action=action, entity="admin_user", entity_id=str(user.id)))
        return _staff(user)

"""Operator accounts: argon2id password hashes, practice scope, content rights; the ``operator`` commands.

Operators are the people who run the practice's mail (IT, a practice manager), not the practice's
staff and clients of the directory: they sign in to the console only, never to the API, which keeps
its bearer key. Two rights, decided per account (docs/console.md):

* scope: the practices listed (``--practice``, repeatable) or every practice (``--all-practices``);
  any other practice's pages answer 404, as if it did not exist;
* content (``--content``): may read what mail says (subjects, bodies, the hidden part, headers'
  Subject, the raw message). Without it the console shows how mail was handled, never what it says.
"""

from __future__ import annotations

import argparse
import re
import secrets
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from mailbridge.domain.errors import Invalid, NotFound
from mailbridge.domain.models import Operator, OperatorPractice, OperatorSession, Practice

if TYPE_CHECKING:
    from mailbridge.wiring import Services

HASHER = PasswordHasher()  # argon2id with the library's defaults (RFC 9106's second recommendation)
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$")
MIN_PASSWORD = 12
# Verified against when the account does not exist, so an unknown name costs the same time.
_DUMMY_HASH = HASHER.hash(secrets.token_urlsafe(16))


@dataclass(frozen=True)
class Scope:
    """What one signed-in operator may see: practice ids (None = every practice) and content."""

    all_practices: bool
    practice_ids: frozenset[int]
    content: bool

    def allows(self, practice_id: int | None) -> bool:
        return self.all_practices or (practice_id is not None and practice_id in self.practice_ids)


def hash_password(password: str) -> str:
    if len(password) < MIN_PASSWORD:
        raise Invalid("password_too_short", f"a password has at least {MIN_PASSWORD} characters", "password")
    return HASHER.hash(password)


def verify(operator: Operator | None, password: str) -> bool:
    """Constant work whether or not the account exists; a disabled account never signs in."""
    try:
        ok = HASHER.verify(operator.password_hash if operator else _DUMMY_HASH, password)
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False
    return bool(ok and operator is not None and not operator.disabled)


def needs_rehash(operator: Operator) -> bool:
    return HASHER.check_needs_rehash(operator.password_hash)


def generate_password() -> str:
    return secrets.token_urlsafe(15)  # 20 characters, 120 bits


def get_operator(session: Session, name: str) -> Operator | None:
    return session.scalar(select(Operator).where(Operator.name == name))


def scope_of(session: Session, operator: Operator) -> Scope:
    ids = frozenset(
        session.scalars(
            select(OperatorPractice.practice_id).where(OperatorPractice.operator_id == operator.id)
        ).all()
    )
    return Scope(operator.all_practices, ids, operator.content_rights)


def practices_for(session: Session, scope: Scope) -> list[Practice]:
    query = select(Practice).order_by(Practice.slug)
    if not scope.all_practices:
        query = query.where(Practice.id.in_(list(scope.practice_ids) or [-1]))
    return list(session.scalars(query).all())


def add_operator(
    session: Session,
    name: str,
    password: str,
    *,
    practices: Sequence[str] = (),
    all_practices: bool = False,
    content: bool = False,
    email: str | None = None,
    locale: str = "en",
) -> Operator:
    if not NAME.match(name):
        raise Invalid("invalid_name", "1-64 letters, digits, '.', '_', '@' or '-'", "name")
    if get_operator(session, name) is not None:
        raise Invalid("operator_exists", f"operator {name!r} already exists", "name")
    if not practices and not all_practices:
        raise Invalid("scope_required", "give --practice P (repeatable) or --all-practices", "practice")
    if email is not None and ("@" not in email or any(c in email for c in "\r\n <>")):
        raise Invalid("invalid_email", "not an email address", "email")
    operator = Operator(
        name=name,
        password_hash=hash_password(password),
        all_practices=all_practices,
        content_rights=content,
        email=email,
        locale="fr" if locale.lower().startswith("fr") else "en",
        disabled=False,
    )
    session.add(operator)
    session.flush()
    for slug in practices:
        practice = session.scalar(select(Practice).where(Practice.slug == slug))
        if practice is None:
            raise NotFound("practice_not_found", f"practice {slug!r} not found", "practice")
        session.add(OperatorPractice(operator_id=operator.id, practice_id=practice.id))
    session.flush()
    return operator


def remove_operator(session: Session, name: str) -> None:
    operator = get_operator(session, name)
    if operator is None:
        raise NotFound("operator_not_found", f"operator {name!r} not found")
    session.delete(operator)  # sessions and practice links go with it; audit rows keep the name


def reset_password(session: Session, name: str, password: str) -> None:
    """A new password ends every session of the account (a stolen cookie stops working too)."""
    operator = get_operator(session, name)
    if operator is None:
        raise NotFound("operator_not_found", f"operator {name!r} not found")
    operator.password_hash = hash_password(password)
    session.execute(delete(OperatorSession).where(OperatorSession.operator_id == operator.id))


def list_operators(session: Session) -> list[tuple[Operator, list[str]]]:
    rows = []
    for operator in session.scalars(select(Operator).order_by(Operator.name)):
        slugs = session.scalars(
            select(Practice.slug)
            .join(OperatorPractice, OperatorPractice.practice_id == Practice.id)
            .where(OperatorPractice.operator_id == operator.id)
            .order_by(Practice.slug)
        ).all()
        rows.append((operator, list(slugs)))
    return rows


DEMO_OPERATOR = "demo"


def ensure_demo_operator(session: Session, secrets_dir: Path) -> tuple[str, str]:
    """The demo's operator (all practices, content rights) and its password, kept 0600 in the data dir."""
    path = secrets_dir / "console-demo.password"
    operator = get_operator(session, DEMO_OPERATOR)
    password = path.read_text().strip() if path.exists() else ""
    if operator is not None and password and verify(operator, password):
        return DEMO_OPERATOR, password
    password = generate_password()
    if operator is None:
        add_operator(
            session, DEMO_OPERATOR, password, all_practices=True, content=True, email="demo@demo.test"
        )
    else:
        operator.password_hash = hash_password(password)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(password + "\n")
    path.chmod(0o600)
    return DEMO_OPERATOR, password


# ---- the ``mailbridge operator`` commands ---------------------------------------------------------


def _read_password(from_stdin: bool) -> tuple[str, bool]:
    """The password from standard input (one line), or a generated one to print."""
    if from_stdin:
        return sys.stdin.readline().rstrip("\r\n"), False
    return generate_password(), True


def operator_command(services: Services, args: argparse.Namespace) -> int:
    from mailbridge.domain.db import transaction
    from mailbridge.domain.errors import DomainError

    sessions = services.sessions
    command = args.operator_command
    try:
        if command == "add":
            password, generated = _read_password(args.password_stdin)
            with transaction(sessions) as session:
                add_operator(
                    session,
                    args.name,
                    password,
                    practices=args.practice or [],
                    all_practices=args.all_practices,
                    content=args.content,
                    email=args.email,
                    locale=args.locale,
                )
            print(f"mailbridge: operator {args.name} added")
            if generated:
                print(f"password: {password}")
            return 0
        if command == "list":
            with transaction(sessions) as session:
                for operator, slugs in list_operators(session):
                    scope = "all practices" if operator.all_practices else ", ".join(slugs) or "(none)"
                    rights = "content" if operator.content_rights else "no content"
                    state = " disabled" if operator.disabled else ""
                    last = (
                        operator.last_login_at.strftime("%Y-%m-%d %H:%M")
                        if operator.last_login_at
                        else "never"
                    )
                    print(f"{operator.name}\t{scope}\t{rights}{state}\tlast sign-in {last}")
            return 0
        if command == "remove":
            with transaction(sessions) as session:
                remove_operator(session, args.name)
            print(f"mailbridge: operator {args.name} removed")
            return 0
        if command == "reset-password":
            password, generated = _read_password(args.password_stdin)
            with transaction(sessions) as session:
                reset_password(session, args.name, password)
            print(f"mailbridge: password of {args.name} reset; its sessions ended")
            if generated:
                print(f"password: {password}")
            return 0
    except DomainError as exc:
        print(f"mailbridge: {exc.detail}", file=sys.stderr)
        return 2
    return 2

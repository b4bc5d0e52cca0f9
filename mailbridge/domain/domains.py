"""Which domains a practice owns: its reply domain, and the domains the operator approved for it.

Mail for a domain belongs to exactly one practice (issue 11 #6): routes (``frontdesk@``),
``postmaster@``/``abuse@`` and reply tokens are only ever decided on a domain the practice owns, so
practice B can neither catch practice A's client mail nor claim ``ceo@bank.example``. Reply domains
are claimed by the practice itself (first come, unique in the database); any other domain is
approved by the operator (``mailbridge domains add``, ``mailbridge import``), never by a practice's
own key. A domain is owned by one practice at most: ``practice_domains.domain`` is unique, and a
domain approved for one practice cannot be another's reply domain (checked here, on both writes).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from sqlalchemy import literal, select, union_all
from sqlalchemy.orm import Session

from mailbridge.domain.errors import Conflict, Invalid
from mailbridge.domain.models import Practice, PracticeDomain, Route

OPERATOR_LOCALS = ("postmaster", "abuse")  # RFC 5321 §4.5.1, RFC 2142
_LABEL = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
_DOMAIN = re.compile(rf"^{_LABEL}(?:\.{_LABEL})+$")


def normalise_domain(text: str, field: str = "domain") -> str:
    """``Acme.TEST.`` → ``acme.test``; anything that is not a DNS host name is refused."""
    domain = text.strip().rstrip(".").lower()
    if len(domain) > 253 or not _DOMAIN.match(domain):
        raise Invalid("invalid_domain", f"{text!r} is not a domain name", field)
    return domain


def domain_of(address: str) -> str:
    return address.rpartition("@")[2].strip().rstrip(".").lower()


@dataclass(frozen=True)
class Owner:
    practice_id: int
    reply_domain: bool  # the practice's reply domain (tokens, VERP) rather than an approved one
    practice: Practice | None = None  # loaded with the answer (kept: the RCPT decision reads no more)


def owner_of(session: Session, domain: str) -> Owner | None:
    """The one practice whose mail this domain is, or None (we do not relay: RFC 5321 §3.6).
    One statement on the RCPT path: the reply domains and the approved ones, both by index."""
    domain = domain.rstrip(".").lower()
    reply = select(Practice.id.label("pid"), literal(True).label("is_reply")).where(
        Practice.reply_domain == domain
    )
    approved = select(PracticeDomain.practice_id.label("pid"), literal(False).label("is_reply")).where(
        PracticeDomain.domain == domain
    )
    either = union_all(reply, approved).subquery()
    found = session.execute(
        select(Practice, either.c.is_reply)
        .join(either, Practice.id == either.c.pid)
        .order_by(either.c.is_reply.desc())
        .limit(1)
    ).first()
    if found is None:
        return None
    practice, is_reply = found
    return Owner(practice.id, bool(is_reply), practice)


def approved_domains(session: Session, practice_id: int) -> list[PracticeDomain]:
    return list(
        session.scalars(
            select(PracticeDomain)
            .where(PracticeDomain.practice_id == practice_id)
            .order_by(PracticeDomain.domain)
        )
    )


def owns(session: Session, practice: Practice, domain: str) -> bool:
    owner = owner_of(session, domain)
    return owner is not None and owner.practice_id == practice.id


def require_owned(session: Session, practice: Practice, address: str, field: str = "address") -> None:
    """A route (or a mailbox's routing address) may only sit on a domain of this practice."""
    if not owns(session, practice, domain_of(address)):
        raise Invalid(
            "domain_not_owned",
            f"{domain_of(address)} is not a domain of this practice: its reply domain, or a domain the "
            "operator approved (mailbridge domains add)",
            field,
        )


def check_reply_domain_free(session: Session, practice_id: int | None, domain: str) -> None:
    """409 ``reply_domain_taken`` when another practice has this domain (reply or approved)."""
    other = owner_of(session, domain)
    if other is not None and other.practice_id != practice_id:
        raise Conflict(
            "reply_domain_taken", f"{domain} is already a domain of another practice", "reply_domain"
        )


def approve(session: Session, practice: Practice, domain: str, source: str) -> tuple[PracticeDomain, bool]:
    """Operator approval (CLI, import, platform API): idempotent for the same practice."""
    domain = normalise_domain(domain)
    owner = owner_of(session, domain)
    if owner is not None and owner.practice_id != practice.id:
        raise Conflict("domain_taken", f"{domain} is already a domain of another practice", "domain")
    row = session.scalar(select(PracticeDomain).where(PracticeDomain.domain == domain))
    if row is not None:
        return row, False
    row = PracticeDomain(practice_id=practice.id, domain=domain, source=source)
    session.add(row)
    session.flush()
    return row, True


def routes_on(session: Session, practice_id: int, domain: str) -> list[str]:
    return list(
        session.scalars(
            select(Route.address)
            .where(
                Route.practice_id == practice_id, Route.address.like(f"%@{_like_escape(domain)}", escape="\\")
            )
            .order_by(Route.address)
        )
    )


def withdraw(session: Session, practice: Practice, domain: str, *, force: bool = False) -> list[str]:
    """Remove an approval; refused while routes of the practice sit on the domain unless *force*
    (then those routes stay but receive nothing). Returns the routes concerned."""
    domain = normalise_domain(domain)
    row = session.scalar(
        select(PracticeDomain).where(
            PracticeDomain.practice_id == practice.id, PracticeDomain.domain == domain
        )
    )
    if row is None:
        raise Invalid("domain_not_approved", f"{domain} is not an approved domain of this practice", "domain")
    routes = routes_on(session, practice.id, domain)
    if routes and not force:
        raise Conflict(
            "domain_in_use", f"routes on {domain} would stop receiving mail: {', '.join(routes)}", "domain"
        )
    session.delete(row)
    session.flush()
    return routes


def unowned_routes(session: Session, practice_id: int | None = None) -> list[tuple[int, str]]:
    """Routes that receive nothing because their domain is not their practice's (left by the
    0004 migration or a withdrawn approval): (practice id, address). For the CLI: reads every route."""
    reply = {pid: domain for pid, domain in session.execute(select(Practice.id, Practice.reply_domain))}
    approved = {
        (pid, domain)
        for pid, domain in session.execute(select(PracticeDomain.practice_id, PracticeDomain.domain))
    }
    query = select(Route.practice_id, Route.address).order_by(Route.address)
    if practice_id is not None:
        query = query.where(Route.practice_id == practice_id)
    found = []
    for pid, address in session.execute(query):
        domain = domain_of(address)
        if reply.get(pid) != domain and (pid, domain) not in approved:
            found.append((pid, address))
    return found


def _like_escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")

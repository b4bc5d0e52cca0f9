"""The operator's commands for access: ``mailbridge keys …`` and ``mailbridge domains …``.

These are the operator's door (a shell on the server), never a practice's: approving a domain for
a practice and creating its keys are things no practice key can do through the API.
"""

from __future__ import annotations

import sys
from datetime import datetime

from mailbridge.access import apikeys
from mailbridge.domain import directory
from mailbridge.domain import domains as owned
from mailbridge.domain.db import transaction
from mailbridge.domain.errors import DomainError
from mailbridge.wiring import Services


def _when(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%dT%H:%MZ") if value else "-"


def _fail(exc: DomainError) -> int:
    print(f"mailbridge: {exc.code}: {exc.detail}", file=sys.stderr)
    return 1


def keys_create(services: Services, practice: str, scope: str, label: str) -> int:
    try:
        with transaction(services.sessions) as session:
            row, key = apikeys.create(session, directory.get_practice(session, practice), scope, label)
    except DomainError as exc:
        return _fail(exc)
    print(f"key {row.id} for practice {practice}, scope {row.scope}: shown once, store it now")
    print(key)
    return 0


def keys_list(services: Services, practice: str | None) -> int:
    try:
        with transaction(services.sessions) as session:
            p = directory.get_practice(session, practice) if practice else None
            rows = apikeys.list_keys(session, p)
    except DomainError as exc:
        return _fail(exc)
    print(
        f"{'id':<24}  {'practice':<16}  {'scope':<5}  {'prefix':<12}  {'created':<17}  "
        f"{'last used':<17}  {'revoked':<17}  label"
    )
    for row, slug in rows:
        print(
            f"{row.id:<24}  {slug:<16}  {row.scope:<5}  {row.prefix:<12}  {_when(row.created_at):<17}  "
            f"{_when(row.last_used_at):<17}  {_when(row.revoked_at):<17}  {row.label}"
        )
    return 0


def keys_revoke(services: Services, key_id: str) -> int:
    try:
        with transaction(services.sessions) as session:
            row = apikeys.revoke(session, key_id)
            revoked = _when(row.revoked_at)
    except DomainError as exc:
        return _fail(exc)
    print(f"key {key_id} revoked ({revoked}): it is refused from the next request on")
    return 0


def domains_add(services: Services, practice: str, domain: str) -> int:
    try:
        with transaction(services.sessions) as session:
            row, created = owned.approve(session, directory.get_practice(session, practice), domain, "cli")
    except DomainError as exc:
        return _fail(exc)
    print(f"{row.domain}: {'approved' if created else 'already approved'} for practice {practice}")
    return 0


def domains_remove(services: Services, practice: str, domain: str, force: bool) -> int:
    try:
        with transaction(services.sessions) as session:
            routes = owned.withdraw(session, directory.get_practice(session, practice), domain, force=force)
    except DomainError as exc:
        return _fail(exc)
    print(f"{domain}: no longer a domain of practice {practice}")
    if routes:
        print(f"mailbridge: these routes now receive nothing: {', '.join(routes)}", file=sys.stderr)
    return 0


def domains_list(services: Services, practice: str) -> int:
    try:
        with transaction(services.sessions) as session:
            p = directory.get_practice(session, practice)
            approved = owned.approved_domains(session, p.id)
            inert = [address for _, address in owned.unowned_routes(session, p.id)]
            reply = p.reply_domain
    except DomainError as exc:
        return _fail(exc)
    print(f"{reply}  reply domain")
    for row in approved:
        print(f"{row.domain}  approved ({row.source}, {_when(row.created_at)})")
    for address in inert:
        print(f"warning: route {address} is on a domain this practice does not own: it receives nothing")
    return 0

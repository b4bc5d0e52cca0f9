"""A practice's domains: it may read them; only the platform (or the operator's CLI) approves one."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Query, Response

from mailbridge.domain import directory
from mailbridge.domain import domains as owned
from mailbridge.domain.db import transaction

from . import listings
from .deps import ServicesDep
from .schemas import Items

router = APIRouter(prefix="/api/v1/practices/{practice}", tags=["routing"])
platform_router = APIRouter(prefix="/api/v1/platform/practices/{practice}", tags=["platform"])


@router.get("/domains", response_model=listings.DomainList)
def list_domains(practice: str, svc: ServicesDep) -> Items:
    """The domains whose mail is this practice's: routes and postmaster@ exist only there."""
    with transaction(svc.sessions) as session:
        p = directory.get_practice(session, practice)
        items: list[dict[str, Any]] = [{"domain": p.reply_domain, "kind": "reply", "source": "practice"}]
        items += [
            {"domain": d.domain, "kind": "approved", "source": d.source}
            for d in owned.approved_domains(session, p.id)
            if d.domain != p.reply_domain
        ]
        return Items(items=items)


@platform_router.put("/domains/{domain}")
def approve_domain(practice: str, domain: str, svc: ServicesDep, response: Response) -> dict[str, Any]:
    """Operator approval (platform key only): 409 ``domain_taken`` when another practice owns it."""
    with transaction(svc.sessions) as session:
        p = directory.get_practice(session, practice)
        row, created = owned.approve(session, p, domain, "api")
        response.status_code = 201 if created else 200
        return {"domain": row.domain, "kind": "approved", "source": row.source}


@platform_router.delete("/domains/{domain}", status_code=204)
def withdraw_domain(
    practice: str, domain: str, svc: ServicesDep, force: bool = Query(default=False)
) -> Response:
    """409 ``domain_in_use`` while routes sit on it, unless ``force`` (they then receive nothing)."""
    with transaction(svc.sessions) as session:
        owned.withdraw(session, directory.get_practice(session, practice), domain, force=force)
    return Response(status_code=204)

"""Directory sync from the messaging app: practices, users, companies, favourites, friendships."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Depends, Query, Response
from sqlalchemy.orm import Session

from mailbridge.directory_import import DirectoryItems, apply_directory
from mailbridge.domain import directory, directory_pages, suppressions
from mailbridge.domain.db import transaction
from mailbridge.domain.errors import Invalid
from mailbridge.domain.models import FriendshipState, Practice, Suppression, User, UserKind
from mailbridge.domain.practice_settings import PracticeSettings
from mailbridge.observability import SETTINGS_REFUSED
from mailbridge.outbound.keys import KeyStore, keys_of

from .deps import ServicesDep
from .paging import PageQuery, page_query
from .schemas import (
    BulkOut,
    CompanyIn,
    CompanyOut,
    CompanyPage,
    DkimKeyOut,
    DkimOut,
    FriendshipIn,
    FriendshipOut,
    FriendshipPage,
    ItemError,
    ItemResultOut,
    PracticeIn,
    PracticeOut,
    UserIn,
    UserOut,
    UserPage,
)

router = APIRouter(prefix="/api/v1/practices", tags=["directory"])


def practice_out(session: Session, store: KeyStore, p: Practice) -> PracticeOut:
    """The practice with its effective settings (``dkim_selector``: the active RSA key's selector)
    and its DKIM state as this node sees it."""
    settings = PracticeSettings.model_validate(p.settings or {}).model_dump(mode="json")
    settings["dkim_selector"] = directory.active_dkim_selector(session, p)
    status = store.status(session, p)
    keys = [
        DkimKeyOut(
            selector=k.selector,
            algorithm=k.algorithm.value,
            state=k.state.value,
            dns_status=k.dns_status,
            created_at=k.created_at,
            activated_at=k.activated_at,
            last_checked_at=k.last_checked_at,
        )
        for k in keys_of(session, p)
    ]
    return PracticeOut(
        slug=p.slug,
        name=p.name,
        reply_domain=p.reply_domain,
        notify_from=p.notify_from,
        locale=p.locale,
        settings=settings,
        dkim=DkimOut(signing=status.signing, detail=status.detail, keys=keys),
    )


def user_out(session: Session, u: User) -> UserOut:
    """``email_bouncing`` is derived from the active suppression of the user's primary address: it ends
    when the suppression is removed or expires, and a new address starts clean."""
    return user_out_with(u, suppressions.active_for(session, u.practice_id, u.email))


def user_out_with(u: User, hit: Suppression | None) -> UserOut:
    """The user as the API shows it, given the suppression of their primary address (a list page
    looks them up for the whole page at once)."""
    return UserOut(
        id=u.external_id,
        email=u.email,
        alt_emails=u.alt_emails,
        name=u.name,
        kind=u.kind.value,
        role=u.role.value if u.role else None,
        active=u.active,
        locale=u.locale,
        portal_account=u.portal_account,
        email_bouncing=hit is not None and hit.reason in suppressions.BOUNCING,
        email_suppression=hit.reason.value if hit is not None else None,
    )


@router.put(
    "/{practice}",
    response_model=PracticeOut,
    description="Create or update a practice. `settings` is merged into the stored settings (JSON Merge "
    "Patch, RFC 7396): omitted keys keep their value, null clears a key. `settings.dkim_selector` is "
    "read-only (422 `dkim_selector_read_only` unless left out or unchanged): DKIM keys are managed with "
    "`mailbridge dkim`, and a settings write can never stop signing.",
)
def put_practice(practice: str, body: PracticeIn, svc: ServicesDep, response: Response) -> PracticeOut:
    from pydantic import ValidationError

    with transaction(svc.sessions) as session:
        try:
            row, created = directory.upsert_practice(
                session,
                practice,
                name=body.name,
                reply_domain=body.reply_domain,
                notify_from=str(body.notify_from),
                locale=body.locale,
                settings=body.settings,
            )
        except ValidationError as exc:
            first = exc.errors()[0]
            field = "settings." + ".".join(str(p) for p in first["loc"])
            raise Invalid("invalid_settings", f"{field}: {first['msg']}", field) from None
        except Invalid as exc:
            if exc.code == "dkim_selector_read_only":
                SETTINGS_REFUSED.labels("dkim_selector").inc()
            raise
        response.status_code = 201 if created else 200
        return practice_out(session, svc.dkim_keys, row)


@router.get("/{practice}", response_model=PracticeOut)
def get_practice(practice: str, svc: ServicesDep) -> PracticeOut:
    with transaction(svc.sessions) as session:
        return practice_out(session, svc.dkim_keys, directory.get_practice(session, practice))


@router.put("/{practice}/users/{user}", response_model=UserOut)
def put_user(practice: str, user: str, body: UserIn, svc: ServicesDep, response: Response) -> UserOut:
    with transaction(svc.sessions) as session:
        p = directory.get_practice(session, practice)
        row, created = directory.upsert_user(session, p, user, **body.fields())
        response.status_code = 201 if created else 200
        return user_out(session, row)


@router.get("/{practice}/users/{user}", response_model=UserOut)
def get_user(practice: str, user: str, svc: ServicesDep) -> UserOut:
    with transaction(svc.sessions) as session:
        p = directory.get_practice(session, practice)
        return user_out(session, directory.get_user(session, p, user))


@router.put("/{practice}/companies/{company}", response_model=CompanyOut)
def put_company(
    practice: str, company: str, body: CompanyIn, svc: ServicesDep, response: Response
) -> CompanyOut:
    with transaction(svc.sessions) as session:
        p = directory.get_practice(session, practice)
        row, created = directory.upsert_company(session, p, company, name=body.name)
        response.status_code = 201 if created else 200
        return CompanyOut(id=row.external_id, name=row.name)


@router.put("/{practice}/users/{user}/favorites/{company}", status_code=204)
def put_favorite(practice: str, user: str, company: str, svc: ServicesDep) -> Response:
    with transaction(svc.sessions) as session:
        p = directory.get_practice(session, practice)
        directory.set_favorite(
            session, directory.get_user(session, p, user), directory.get_company(session, p, company), True
        )
    return Response(status_code=204)


@router.delete("/{practice}/users/{user}/favorites/{company}", status_code=204)
def delete_favorite(practice: str, user: str, company: str, svc: ServicesDep) -> Response:
    with transaction(svc.sessions) as session:
        p = directory.get_practice(session, practice)
        directory.set_favorite(
            session, directory.get_user(session, p, user), directory.get_company(session, p, company), False
        )
    return Response(status_code=204)


@router.put("/{practice}/friendships/{user_a}/{user_b}", response_model=FriendshipOut)
def put_friendship(
    practice: str, user_a: str, user_b: str, body: FriendshipIn, svc: ServicesDep, response: Response
) -> FriendshipOut:
    with transaction(svc.sessions) as session:
        p = directory.get_practice(session, practice)
        a = directory.get_user(session, p, user_a, "user_a")
        b = directory.get_user(session, p, user_b, "user_b")
        created = directory.friendship_between(session, a, b) is None
        row = directory.set_friendship(session, p, a, b, FriendshipState(body.state))
        response.status_code = 201 if created else 200
        return FriendshipOut(user_a=user_a, user_b=user_b, state=row.state.value)


# ---- lists, deletion and bulk (issue 20 item 11) ------------------------------------------------


@router.get("/{practice}/users", response_model=UserPage)
def list_users(
    practice: str,
    svc: ServicesDep,
    kind: Literal["staff", "client", "external"] | None = Query(default=None, description="Only this kind"),
    active: bool | None = Query(default=None, description="Only active (true) or deactivated (false) users"),
    paging: PageQuery = Depends(page_query()),
) -> UserPage:
    """The practice's users by id, a page at a time (deleted users are not listed)."""
    with transaction(svc.sessions) as session:
        p = directory.get_practice(session, practice)
        page = directory_pages.users_page(
            session,
            p,
            kind=UserKind(kind) if kind else None,
            active=active,
            limit=paging.limit,
            cursor=paging.cursor,
        )
        return UserPage(
            items=[user_out_with(row.user, row.suppression) for row in page.items],
            next_cursor=page.next_cursor,
        )


@router.delete("/{practice}/users/{user}", status_code=204)
def delete_user(practice: str, user: str, svc: ServicesDep) -> Response:
    """The user leaves the directory: their participations, favourites, friendships, addresses and
    pending notifications end; what they wrote, the conversations they started and the audit trail
    stay (docs/integration.md, *Deleting users and companies*). An unknown or already deleted id: 404."""
    with transaction(svc.sessions) as session:
        p = directory.get_practice(session, practice)
        directory.delete_user(session, p, directory.get_user(session, p, user))
    return Response(status_code=204)


@router.get("/{practice}/companies", response_model=CompanyPage)
def list_companies(practice: str, svc: ServicesDep, paging: PageQuery = Depends(page_query())) -> CompanyPage:
    """The practice's companies by id, a page at a time (deleted companies are not listed)."""
    with transaction(svc.sessions) as session:
        p = directory.get_practice(session, practice)
        page = directory_pages.companies_page(session, p, limit=paging.limit, cursor=paging.cursor)
        return CompanyPage(
            items=[CompanyOut(id=c.external_id, name=c.name) for c in page.items],
            next_cursor=page.next_cursor,
        )


@router.delete("/{practice}/companies/{company}", status_code=204)
def delete_company(practice: str, company: str, svc: ServicesDep) -> Response:
    """The company leaves the directory and its favourites end; its conversations stay, read by
    their participants as the rules say (docs/integration.md). An unknown or deleted id: 404."""
    with transaction(svc.sessions) as session:
        p = directory.get_practice(session, practice)
        directory.delete_company(session, p, directory.get_company(session, p, company))
    return Response(status_code=204)


@router.get("/{practice}/users/{user}/favorites", response_model=CompanyPage)
def list_favorites(
    practice: str, user: str, svc: ServicesDep, paging: PageQuery = Depends(page_query())
) -> CompanyPage:
    """The companies this user follows (their memberships), by company id."""
    with transaction(svc.sessions) as session:
        p = directory.get_practice(session, practice)
        member = directory.get_user(session, p, user)
        page = directory_pages.favorites_page(session, member, limit=paging.limit, cursor=paging.cursor)
        return CompanyPage(
            items=[CompanyOut(id=c.external_id, name=c.name) for c in page.items],
            next_cursor=page.next_cursor,
        )


@router.get("/{practice}/friendships", response_model=FriendshipPage)
def list_friendships(
    practice: str,
    svc: ServicesDep,
    user: str | None = Query(default=None, description="Only this user's friendships"),
    state: Literal["requested", "accepted", "closed"] | None = Query(default=None),
    paging: PageQuery = Depends(page_query()),
) -> FriendshipPage:
    """Friendships between staff members (what opens a direct channel), oldest first."""
    with transaction(svc.sessions) as session:
        p = directory.get_practice(session, practice)
        member = directory.get_user(session, p, user, "user") if user else None
        page = directory_pages.friendships_page(
            session,
            p,
            user=member,
            state=FriendshipState(state) if state else None,
            limit=paging.limit,
            cursor=paging.cursor,
        )
        return FriendshipPage(
            items=[FriendshipOut(user_a=r.user_a, user_b=r.user_b, state=r.state.value) for r in page.items],
            next_cursor=page.next_cursor,
        )


@router.post("/{practice}/directory/import", response_model=BulkOut)
def bulk_upsert_directory(
    practice: str,
    body: DirectoryItems,
    svc: ServicesDep,
    atomic: bool = Query(
        default=False,
        description="true: all or nothing, as `mailbridge import` does: the first failing item answers "
        "with its own problem (plus `item`) and nothing is written",
    ),
) -> BulkOut:
    """Users, companies, favourites and friendships in one request, in the shapes of their single
    routes and through the same code (`mailbridge import` too). Each item is applied on its own and
    reported: `created`, `updated`, or `failed` with the problem its single route would answer; a
    failed item changes nothing, the others are kept. A body that does not match the schema is
    refused whole (422 naming the field)."""
    with transaction(svc.sessions) as session:
        p = directory.get_practice(session, practice)
        results = apply_directory(session, p, body, atomic=atomic)
    out = [
        ItemResultOut(
            type=r.type,
            id=r.id,
            status=r.status,
            error=ItemError(
                status=r.error.status, code=r.error.code, detail=r.error.detail, field=r.error.field
            )
            if r.error is not None
            else None,
        )
        for r in results
    ]
    counts = {
        status: sum(1 for r in results if r.status == status) for status in ("created", "updated", "failed")
    }
    return BulkOut(results=out, counts=counts)

"""Directory sync from the messaging app: practices, users, companies, favourites, friendships."""

from __future__ import annotations

from fastapi import APIRouter, Response
from sqlalchemy.orm import Session

from mailbridge.domain import directory, suppressions
from mailbridge.domain.db import transaction
from mailbridge.domain.errors import Invalid
from mailbridge.domain.models import FriendshipState, Practice, User
from mailbridge.domain.practice_settings import PracticeSettings
from mailbridge.observability import SETTINGS_REFUSED
from mailbridge.outbound.keys import KeyStore, keys_of

from .deps import ServicesDep
from .schemas import (
    CompanyIn,
    CompanyOut,
    DkimKeyOut,
    DkimOut,
    FriendshipIn,
    FriendshipOut,
    PracticeIn,
    PracticeOut,
    UserIn,
    UserOut,
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
    hit = suppressions.active_for(session, u.practice_id, u.email)
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

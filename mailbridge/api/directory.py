"""Directory sync from the messaging app: practices, users, companies, favourites, friendships."""

from __future__ import annotations

from fastapi import APIRouter, Response

from mailbridge.domain import directory
from mailbridge.domain.db import transaction
from mailbridge.domain.errors import Invalid
from mailbridge.domain.models import FriendshipState, Practice, User

from .deps import ServicesDep
from .schemas import (
    CompanyIn,
    CompanyOut,
    FriendshipIn,
    FriendshipOut,
    PracticeIn,
    PracticeOut,
    UserIn,
    UserOut,
)

router = APIRouter(prefix="/api/v1/practices", tags=["directory"])


def practice_out(p: Practice) -> PracticeOut:
    return PracticeOut(
        slug=p.slug,
        name=p.name,
        reply_domain=p.reply_domain,
        notify_from=p.notify_from,
        locale=p.locale,
        settings=p.settings,
    )


def user_out(u: User) -> UserOut:
    return UserOut(
        id=u.external_id,
        email=u.email,
        alt_emails=u.alt_emails,
        name=u.name,
        kind=u.kind.value,
        role=u.role.value if u.role else None,
        active=u.active,
        locale=u.locale,
        email_bouncing=u.email_bouncing,
    )


@router.put("/{practice}", response_model=PracticeOut)
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
        response.status_code = 201 if created else 200
        return practice_out(row)


@router.get("/{practice}", response_model=PracticeOut)
def get_practice(practice: str, svc: ServicesDep) -> PracticeOut:
    with transaction(svc.sessions) as session:
        return practice_out(directory.get_practice(session, practice))


@router.put("/{practice}/users/{user}", response_model=UserOut)
def put_user(practice: str, user: str, body: UserIn, svc: ServicesDep, response: Response) -> UserOut:
    with transaction(svc.sessions) as session:
        p = directory.get_practice(session, practice)
        row, created = directory.upsert_user(session, p, user, **body.fields())
        response.status_code = 201 if created else 200
        return user_out(row)


@router.get("/{practice}/users/{user}", response_model=UserOut)
def get_user(practice: str, user: str, svc: ServicesDep) -> UserOut:
    with transaction(svc.sessions) as session:
        p = directory.get_practice(session, practice)
        return user_out(directory.get_user(session, p, user))


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
    practice: str, user_a: str, user_b: str, body: FriendshipIn, svc: ServicesDep
) -> FriendshipOut:
    with transaction(svc.sessions) as session:
        p = directory.get_practice(session, practice)
        a = directory.get_user(session, p, user_a, "user_a")
        b = directory.get_user(session, p, user_b, "user_b")
        row = directory.set_friendship(session, p, a, b, FriendshipState(body.state))
        return FriendshipOut(user_a=user_a, user_b=user_b, state=row.state.value)

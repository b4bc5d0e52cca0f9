"""Webhook endpoints: create, change, rotate the secret, delete; their delivery log and redelivery.

An endpoint belongs to a practice (its events only) or, with no practice, to the platform (every
practice's events). Its signing secret is a Standard Webhooks secret (``whsec_`` + base64 of 32 random
bytes), generated here, returned once (in the response that creates the endpoint, or rotates the
secret), and stored sealed with the keyring, never shown again. After a rotation the previous secret
keeps signing beside the new one (two ``v1,`` signatures in ``webhook-signature``, as the
specification allows) until its overlap ends, so receivers can switch without losing a delivery.
"""

from __future__ import annotations

import base64
import re
import secrets
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from mailbridge.crypto.keyring import Keyring
from mailbridge.domain import pagination
from mailbridge.domain.errors import Conflict, Invalid, NotFound
from mailbridge.domain.events import EVENT_TYPES
from mailbridge.domain.models import (
    Practice,
    WebhookDelivery,
    WebhookDeliveryState,
    WebhookEndpoint,
    utcnow,
)

NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
ALL = "*"
# Every event becomes one delivery per endpoint: a practice (a tenant) must not multiply the work.
MAX_ENDPOINTS = 20
DELIVERY_KEYS = (
    pagination.Key(WebhookDelivery.created_at, "created_at"),
    pagination.Key(WebhookDelivery.id, "id"),
)


@dataclass(frozen=True)
class EndpointSpec:
    url: str
    events: list[str]
    active: bool = True
    include_content: bool = False


def new_secret() -> str:
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode("ascii")


def purpose(endpoint: WebhookEndpoint, which: str = "secret") -> str:
    return f"webhook:{endpoint.id}:{which}"


def scope_key(practice: Practice | None, name: str) -> str:
    return f"p{practice.id}:{name}" if practice is not None else f"platform:{name}"


def check_events(types: list[str]) -> list[str]:
    """Known types only, each once; ``["*"]`` subscribes to every type, present and future."""
    if not types:
        raise Invalid("events_required", 'events: name at least one event type, or "*"', "events")
    unknown = [t for t in types if t != ALL and t not in EVENT_TYPES]
    if unknown:
        raise Invalid(
            "unknown_event_type",
            f"events: unknown type {unknown[0]!r}; known: {', '.join(EVENT_TYPES)}",
            "events",
            {"known": list(EVENT_TYPES)},
        )
    return [ALL] if ALL in types else sorted(set(types))


def subscribed(endpoint: WebhookEndpoint, event_type: str) -> bool:
    return ALL in endpoint.events or event_type in endpoint.events


def get(session: Session, practice: Practice | None, name: str) -> WebhookEndpoint:
    endpoint = session.scalar(
        select(WebhookEndpoint).where(WebhookEndpoint.scope_key == scope_key(practice, name))
    )
    if endpoint is None:
        raise NotFound("webhook_not_found", f"webhook {name!r} not found")
    return endpoint


def listing(session: Session, practice: Practice | None) -> list[WebhookEndpoint]:
    query = select(WebhookEndpoint).where(
        WebhookEndpoint.practice_id == practice.id
        if practice is not None
        else WebhookEndpoint.practice_id.is_(None)
    )
    return list(session.scalars(query.order_by(WebhookEndpoint.name)).all())


def upsert(
    session: Session, keyring: Keyring, practice: Practice | None, name: str, spec: EndpointSpec
) -> tuple[WebhookEndpoint, str | None]:
    """Create or change; returns the endpoint and, when created, its secret (the only time it is shown).

    The URL is checked by the caller (``addresses.check_url``) before this runs. ``active: true``
    also clears a disable mailbridge made after sustained failure.
    """
    if not NAME.match(name):
        raise Invalid(
            "invalid_name", "name: 1-64 of a-z, 0-9, '-' and '_', starting with a letter or digit", "name"
        )
    types = check_events(spec.events)
    key = scope_key(practice, name)
    endpoint = session.scalar(select(WebhookEndpoint).where(WebhookEndpoint.scope_key == key))
    secret = None
    if endpoint is None:
        if len(listing(session, practice)) >= MAX_ENDPOINTS:
            raise Conflict(
                "too_many_webhooks", f"at most {MAX_ENDPOINTS} webhook endpoints; delete one first"
            )
        endpoint = WebhookEndpoint(
            scope_key=key,
            practice_id=practice.id if practice is not None else None,
            name=name,
            url=spec.url,
            events=types,
            secret="",
        )
        session.add(endpoint)
        session.flush()  # the id names the sealed secret's purpose
        secret = new_secret()
        endpoint.secret = keyring.seal(session, endpoint.practice_id, secret.encode(), purpose(endpoint))
    endpoint.url = spec.url
    endpoint.events = types
    endpoint.include_content = spec.include_content
    endpoint.active = spec.active
    if spec.active and endpoint.disabled_at is not None:
        endpoint.disabled_at = None
        endpoint.disabled_reason = None
    endpoint.updated_at = utcnow()
    session.flush()
    return endpoint, secret


def rotate(session: Session, keyring: Keyring, endpoint: WebhookEndpoint, overlap: timedelta) -> str:
    """A new secret (returned once); the current one keeps signing for *overlap* (0: stops now)."""
    secret = new_secret()
    now = utcnow()
    if overlap.total_seconds() > 0:
        current = keyring.open(session, endpoint.secret, purpose(endpoint))
        endpoint.previous_secret = keyring.seal(
            session, endpoint.practice_id, current, purpose(endpoint, "previous_secret")
        )
        endpoint.previous_expires_at = now + overlap
    else:
        endpoint.previous_secret = None
        endpoint.previous_expires_at = None
    endpoint.secret = keyring.seal(session, endpoint.practice_id, secret.encode(), purpose(endpoint))
    endpoint.secret_rotated_at = now
    session.flush()
    return secret


def signing_secrets(session: Session, keyring: Keyring, endpoint: WebhookEndpoint) -> list[str]:
    """The secrets that sign a delivery now: the current one, and the previous one during its overlap."""
    out = [keyring.open(session, endpoint.secret, purpose(endpoint)).decode()]
    if (
        endpoint.previous_secret
        and endpoint.previous_expires_at is not None
        and endpoint.previous_expires_at > utcnow()
    ):
        out.append(
            keyring.open(session, endpoint.previous_secret, purpose(endpoint, "previous_secret")).decode()
        )
    return out


def endpoint_out(endpoint: WebhookEndpoint, secret: str | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {
        "name": endpoint.name,
        "scope": "practice" if endpoint.practice_id is not None else "platform",
        "url": endpoint.url,
        "events": endpoint.events,
        "active": endpoint.active,
        "include_content": endpoint.include_content,
        "disabled_at": endpoint.disabled_at,
        "disabled_reason": endpoint.disabled_reason,
        "last_success_at": endpoint.last_success_at,
        "secret_rotated_at": endpoint.secret_rotated_at,
        "previous_secret_expires_at": endpoint.previous_expires_at,
        "created_at": endpoint.created_at,
        "updated_at": endpoint.updated_at,
    }
    if secret is not None:
        out["secret"] = secret
    return out


# ---- the delivery log ---------------------------------------------------------------------------------


STATES = tuple(s.value for s in WebhookDeliveryState)


def deliveries_page(
    session: Session,
    endpoint: WebhookEndpoint,
    *,
    state: str | None,
    limit: int,
    cursor: str | None,
) -> pagination.Page[WebhookDelivery]:
    """The endpoint's deliveries, newest first."""
    query = select(WebhookDelivery).where(WebhookDelivery.endpoint_id == endpoint.id)
    if state is not None:
        if state not in STATES:
            raise Invalid("invalid_state", f"state is one of {', '.join(STATES)}", "state")
        query = query.where(WebhookDelivery.state == WebhookDeliveryState(state))
    return pagination.page(session, query, DELIVERY_KEYS, limit=limit, cursor=cursor, descending=True)


def delivery_out(row: WebhookDelivery) -> dict[str, Any]:
    return {
        "id": row.id,
        "event_id": row.event_id,
        "event_type": row.event_type,
        "conversation": row.ordering_key,
        "state": row.state.value,
        "attempts": row.attempts,
        "next_attempt_at": row.next_attempt_at if row.state == WebhookDeliveryState.pending else None,
        "first_attempt_at": row.first_attempt_at,
        "last_attempt_at": row.last_attempt_at,
        "last_status": row.last_status,
        "last_error": row.last_error,
        "last_duration_ms": row.last_duration_ms,
        "created_at": row.created_at,
        "delivered_at": row.delivered_at,
    }


def redeliver(session: Session, endpoint: WebhookEndpoint, delivery_id: str) -> WebhookDelivery:
    """Send the event again, from the first attempt of the schedule, with the same ``webhook-id``
    (a receiver that already has it drops it as a duplicate)."""
    row = session.get(WebhookDelivery, delivery_id)
    if row is None or row.endpoint_id != endpoint.id:
        raise NotFound("delivery_not_found", "delivery not found")
    if not endpoint.active or endpoint.disabled_at is not None:
        raise Conflict(
            "webhook_inactive", "the endpoint is inactive or disabled: PUT it with active: true first"
        )
    if row.state == WebhookDeliveryState.pending:
        raise Conflict("already_pending", "this delivery is already waiting for its next attempt")
    row.state = WebhookDeliveryState.pending
    row.attempts = 0
    row.first_attempt_at = None
    row.next_attempt_at = utcnow()
    row.lease_until = None
    session.flush()
    return row

"""A practice's look in its notifications: its own templates (versioned, previewed) and its logo.

``PUT …/templates/{name}?locale=`` saves a new version of a template, made of up to three parts
(``subject``, ``text``, ``mjml``; a part left out or null is the shipped template's), after the
renderer's checks (``Renderer.check``): the sandbox's small language, only the variables that
template may use (a minimal notification: nothing about the conversation), MJML that compiles, a
rendering of realistic data, the required links in both text and HTML, and HTML that loads nothing
from elsewhere. ``DELETE`` goes back to the shipped template (versions are kept), ``GET`` shows the
versions and the shipped source to start from, ``POST …/preview`` renders a draft or the active
template with sample data and the practice's identity.
"""

from __future__ import annotations

import base64
import functools
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Body, Query, Request, Response
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy.orm import Session

from mailbridge.domain import directory, logos, templates
from mailbridge.domain.db import transaction
from mailbridge.domain.errors import Invalid, NotFound
from mailbridge.domain.models import Practice, PracticeLogo, PracticeTemplate
from mailbridge.domain.practice_settings import PracticeSettings
from mailbridge.outbound.catalog import SPECS, preview_context
from mailbridge.outbound.render import (
    LOCALES,
    SOURCE_LIMITS,
    Rendered,
    Renderer,
    Source,
    TemplateProblems,
)

from .deps import ServicesDep

router = APIRouter(prefix="/api/v1/practices/{practice}", tags=["templates"])
TemplateName = Literal[
    "notification_full",
    "notification_minimal",
    "notice",
    "forward",
    "notification_external_full",
    "notification_external_minimal",
    "notice_external",
]
LocaleQuery = Annotated[Literal["en", "fr"], Query(description="the template's language")]


@functools.lru_cache(maxsize=4)
def renderer_for(templates_dir: Path | None) -> Renderer:
    return Renderer(templates_dir)


class TemplateIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    subject: str | None = Field(
        default=None,
        max_length=SOURCE_LIMITS["subject"],
        description="Jinja text; null or left out: the shipped one",
    )
    text: str | None = Field(
        default=None, max_length=SOURCE_LIMITS["text"], description="Jinja text of the plain-text part"
    )
    mjml: str | None = Field(
        default=None, max_length=SOURCE_LIMITS["mjml"], description="MJML with Jinja, for the HTML part"
    )

    def source(self) -> Source:
        return Source(self.subject, self.text, self.mjml)

    def empty(self) -> bool:
        return self.subject is None and self.text is None and self.mjml is None


class Parts(BaseModel):
    subject: str | None
    text: str | None
    mjml: str | None


class VersionOut(Parts):
    version: int
    active: bool
    created_at: datetime
    created_by: str | None


class TemplateOut(BaseModel):
    name: str
    locale: str
    active_version: int | None = Field(description="null: the shipped template is used")
    default: Parts = Field(description="the shipped template, to start from")
    variables: list[str] = Field(description="what this template may use")
    versions: list[VersionOut] = Field(description="newest first")


class TemplateListItem(BaseModel):
    name: str
    locale: str
    source: Literal["default", "practice"]
    version: int | None


class TemplateList(BaseModel):
    items: list[TemplateListItem]


class PreviewOut(BaseModel):
    subject: str
    text: str
    html: str
    source: Literal["draft", "practice", "default"]
    version: int | None = None


class SavedOut(BaseModel):
    name: str
    locale: str
    version: int
    preview: PreviewOut


class LogoOut(BaseModel):
    content_type: str
    size: int
    width: int
    height: int
    sha256: str


def _sample(session: Session, svc: ServicesDep, practice: Practice, name: str, lang: str) -> dict[str, Any]:
    """Sample data in the practice's real name, colours, footer and logo (a data: URI, which a
    browser shows), for checks and previews."""
    settings = PracticeSettings.model_validate(practice.settings or {})
    logo = session.get(PracticeLogo, practice.id)
    logo_src = f"data:{logo.content_type};base64,{base64.b64encode(logo.data).decode()}" if logo else ""
    return preview_context(name, lang, practice.name, settings, svc.settings.app_url, logo_src)


def _check(renderer: Renderer, name: str, lang: str, source: Source, identity: dict[str, Any]) -> Rendered:
    try:
        return renderer.check(name, lang, source, identity)
    except TemplateProblems as exc:
        raise Invalid(
            "template_invalid",
            f"the template cannot be used: {exc.problems[0]}",
            "template",
            {"problems": exc.problems},
        ) from None


def _preview(
    renderer: Renderer, name: str, lang: str, source: Source | None, context: dict[str, Any]
) -> Rendered:
    return renderer.render(name, lang, context, source)


@router.get("/templates", response_model=TemplateList)
def list_templates(practice: str, svc: ServicesDep) -> TemplateList:
    with transaction(svc.sessions) as session:
        p = directory.get_practice(session, practice)
        own = templates.active(session, [p.id])
        items = [
            TemplateListItem(
                name=name,
                locale=lang,
                source="practice" if (p.id, name, lang) in own else "default",
                version=own[(p.id, name, lang)].version if (p.id, name, lang) in own else None,
            )
            for name in SPECS
            for lang in LOCALES
        ]
        return TemplateList(items=items)


@router.get("/templates/{name}", response_model=TemplateOut)
def get_template(practice: str, name: TemplateName, locale: LocaleQuery, svc: ServicesDep) -> TemplateOut:
    renderer = renderer_for(svc.settings.templates_dir)
    with transaction(svc.sessions) as session:
        p = directory.get_practice(session, practice)
        rows = templates.versions(session, p.id, name, locale)
        default = renderer.default(name, locale)
        return TemplateOut(
            name=name,
            locale=locale,
            active_version=next((r.version for r in rows if r.active), None),
            default=Parts(subject=default.subject, text=default.text, mjml=default.mjml),
            variables=sorted(SPECS[name].variables),
            versions=[_version_out(r) for r in rows],
        )


def _version_out(row: PracticeTemplate) -> VersionOut:
    return VersionOut(
        version=row.version,
        active=row.active,
        created_at=row.created_at,
        created_by=row.created_by,
        subject=row.subject,
        text=row.text,
        mjml=row.mjml,
    )


@router.put(
    "/templates/{name}",
    response_model=SavedOut,
    description="Save a new version of the practice's own template (the active one). 422 "
    "`template_invalid` lists every problem in `problems`.",
)
def put_template(
    practice: str,
    name: TemplateName,
    locale: LocaleQuery,
    body: TemplateIn,
    svc: ServicesDep,
    response: Response,
    actor: Annotated[str | None, Query(alias="as", max_length=128)] = None,
) -> SavedOut:
    if body.empty():
        raise Invalid("template_empty", "give at least one of subject, text, mjml", "template")
    renderer = renderer_for(svc.settings.templates_dir)
    with transaction(svc.sessions) as session:
        p = directory.get_practice(session, practice)
        created_by = "api"
        if actor is not None:
            created_by = f"staff:{directory.get_user(session, p, actor, 'as').external_id}"
        sample = _sample(session, svc, p, name, locale)
        rendered = _check(renderer, name, locale, body.source(), sample)
        row = templates.save_version(
            session,
            p.id,
            name,
            locale,
            subject=body.subject,
            text=body.text,
            mjml=body.mjml,
            created_by=created_by,
        )
        response.status_code = 201 if row.version == 1 else 200
        preview = PreviewOut(**_parts(rendered), source="practice", version=row.version)
        return SavedOut(name=name, locale=locale, version=row.version, preview=preview)


def _parts(rendered: Rendered) -> dict[str, str]:
    return {"subject": rendered.subject, "text": rendered.text, "html": rendered.html}


@router.delete("/templates/{name}", status_code=204)
def delete_template(practice: str, name: TemplateName, locale: LocaleQuery, svc: ServicesDep) -> Response:
    """Back to the shipped template; the versions stay (``GET`` lists them)."""
    with transaction(svc.sessions) as session:
        p = directory.get_practice(session, practice)
        templates.back_to_default(session, p.id, name, locale)
    return Response(status_code=204)


@router.post("/templates/{name}/preview", response_model=PreviewOut)
def preview_template(
    practice: str,
    name: TemplateName,
    locale: LocaleQuery,
    svc: ServicesDep,
    body: Annotated[TemplateIn | None, Body()] = None,
) -> PreviewOut:
    """A draft (the body's parts, checked as a save would) or, with no body, what the practice's
    notifications look like now; sample data, the practice's own name, colours, footer and logo."""
    renderer = renderer_for(svc.settings.templates_dir)
    with transaction(svc.sessions) as session:
        p = directory.get_practice(session, practice)
        sample = _sample(session, svc, p, name, locale)
        if body is not None and not body.empty():
            return PreviewOut(**_parts(_check(renderer, name, locale, body.source(), sample)), source="draft")
        own = templates.active(session, [p.id]).get((p.id, name, locale))
        if own is None:
            return PreviewOut(**_parts(_preview(renderer, name, locale, None, sample)), source="default")
        source = Source(own.subject, own.text, own.mjml)
        rendered = _preview(renderer, name, locale, source, sample)
        return PreviewOut(**_parts(rendered), source="practice", version=own.version)


# ---- the logo ------------------------------------------------------------------------------------


@router.put(
    "/logo",
    response_model=LogoOut,
    description="The request body is the image itself: PNG or JPEG (decided by its bytes), at most "
    "100 KB, sides of 16 to 4000 pixels. Sent inline (cid:) with the notifications that show the practice.",
)
async def put_logo(practice: str, request: Request, svc: ServicesDep) -> LogoOut:
    data = b""
    async for chunk in request.stream():
        data += chunk
        if len(data) > logos.MAX_BYTES:
            raise Invalid("logo_too_large", f"the logo must be at most {logos.MAX_BYTES // 1024} KB", "logo")
    from fastapi.concurrency import run_in_threadpool

    return await run_in_threadpool(_store_logo, svc, practice, data)


def _store_logo(svc: ServicesDep, practice: str, data: bytes) -> LogoOut:
    with transaction(svc.sessions) as session:
        p = directory.get_practice(session, practice)
        row = logos.put_logo(session, p.id, data)
        return _logo_out(row)


def _logo_out(row: PracticeLogo) -> LogoOut:
    return LogoOut(
        content_type=row.content_type,
        size=len(row.data),
        width=row.width,
        height=row.height,
        sha256=row.sha256,
    )


@router.get(
    "/logo", response_class=Response, responses={200: {"content": {"image/png": {}, "image/jpeg": {}}}}
)
def get_logo(practice: str, svc: ServicesDep) -> Response:
    with transaction(svc.sessions) as session:
        p = directory.get_practice(session, practice)
        row = session.get(PracticeLogo, p.id)
        if row is None:
            raise NotFound("logo_not_found", "this practice has no logo", "logo")
        return Response(
            row.data,
            media_type=row.content_type,
            headers={"X-Content-Type-Options": "nosniff", "Content-Disposition": 'inline; filename="logo"'},
        )


@router.delete("/logo", status_code=204)
def delete_logo(practice: str, svc: ServicesDep) -> Response:
    with transaction(svc.sessions) as session:
        p = directory.get_practice(session, practice)
        logos.delete_logo(session, p.id)
    return Response(status_code=204)

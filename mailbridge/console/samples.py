"""The Templates page: every notification and notice template rendered with a sample conversation,
through the product's own Renderer, and "send a test notification to me" through the real transport.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from mailbridge.domain.models import Practice, new_id, utcnow
from mailbridge.domain.practice_settings import PracticeSettings
from mailbridge.inbound.envelope import verp_address
from mailbridge.outbound.compose import Envelope, compose_bytes, named
from mailbridge.outbound.deliver import Delivery
from mailbridge.outbound.render import LOCALES, NOTICE_TEXTS, Rendered, Renderer
from mailbridge.wiring import Services

TEMPLATES = (
    "notification_full",
    "notification_minimal",
    "notice",
    "forward",
    "notification_external_full",
    "notification_external_minimal",
    "notice_external",
)


@dataclass(frozen=True)
class Sample:
    template: str
    locale: str
    notice_reason: str
    rendered: Rendered


def renderer(services: Services) -> Renderer:
    settings = services.settings
    return Renderer(settings.templates_dir) if settings.templates_dir else Renderer()


def render_sample(
    services: Services, practice: Practice, template: str, locale: str, notice_reason: str
) -> Sample:
    """What a recipient would see: the catalog's sample data in the practice's own identity, through
    the practice's active template when it has one (as the worker sends), else the shipped one."""
    from sqlalchemy import select

    from mailbridge.domain.models import PracticeTemplate
    from mailbridge.outbound.catalog import preview_context
    from mailbridge.outbound.render import Source

    template = template if template in TEMPLATES else TEMPLATES[0]
    locale = locale if locale in LOCALES else "en"
    reasons = NOTICE_TEXTS["en"]
    notice_reason = notice_reason if notice_reason in reasons else "attachment_withheld"
    settings = PracticeSettings.model_validate(practice.settings or {})
    context = preview_context(template, locale, practice.name, settings, services.settings.app_url)
    with services.sessions() as session:
        own = session.scalar(
            select(PracticeTemplate).where(
                PracticeTemplate.practice_id == practice.id,
                PracticeTemplate.name == template,
                PracticeTemplate.locale == locale,
                PracticeTemplate.active.is_(True),
            )
        )
        override = Source(own.subject, own.text, own.mjml) if own is not None else None
    r = renderer(services)
    if template in ("notice", "notice_external"):
        files = ["setup.exe (program or script)"] if notice_reason == "attachment_withheld" else []
        external = template == "notice_external"
        rendered = r.notice(notice_reason, locale, {**context, "files": files}, override, external)
    else:
        rendered = r.render(template, locale, context, override)
    return Sample(template, locale, notice_reason, rendered)


def send_test(services: Services, practice: Practice, sample: Sample, to: str) -> Delivery:
    """The sample, composed and signed as a notification is, sent now through the configured transport.

    Its envelope sender is a signed bounce address naming no outbox row: a bounce is recognised
    and recorded for the address, never matched to a real notification."""
    from mailbridge.outbound.worker import Worker

    domain = practice.notify_from.rpartition("@")[2].lower()
    envelope = Envelope(
        from_address=named(f"{practice.name} (test)", practice.notify_from),
        to_address=named(None, to),
        subject="[test] " + sample.rendered.subject,
        message_id=f"<t.{new_id()}@{domain}>",
        date=utcnow(),
        loop_value=services.settings.smtp_hostname,
    )
    data = compose_bytes(envelope, sample.rendered)
    with services.sessions() as session:  # the practice's active keys, as the worker signs with them
        signer = services.dkim_keys.signer_for(session, practice)
    if signer is not None:
        data = signer.sign(data)
    transport = Worker.from_services(services).transport
    mail_from = verp_address(services.verp_secret, "test" + new_id()[:8], practice.reply_domain)

    async def go() -> Delivery:
        try:
            return await transport.send(mail_from, to, data)
        finally:
            await transport.close()

    return asyncio.run(go())

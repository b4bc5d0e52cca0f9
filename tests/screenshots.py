"""``make screenshots``: a PNG of every console page, with the demo data, into docs/console/.

Runs the demo (its practices, its mail, its operator) in a throwaway data directory, serves it as
``mailbridge serve`` does, and has Debian's Chromium (Playwright, executable_path) sign in and visit
each page at 1280 px wide."""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from sqlalchemy import select

from mailbridge.console.accounts import ensure_demo_operator
from mailbridge.demo import load_demo, load_demo_mail
from mailbridge.domain.db import transaction
from mailbridge.domain.models import InboundLog, QuarantineItem
from tests.conftest import make_services
from tests.console_live import chromium, live_stack, sign_in

PAGES = (
    ("overview", "/"),
    ("trace", "/trace?address=bob%40client.test"),
    ("inbound", "/inbound"),
    ("inbound-detail", "/inbound/{refused}"),
    ("quarantine", "/quarantine"),
    ("quarantine-detail", "/quarantine/{held}"),
    ("deliveries", "/deliveries"),
    ("routes", "/routes"),
    ("dns", "/dns"),
    ("templates", "/templates"),
)


def main(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        services = make_services(Path(tmp), f"sqlite:///{tmp}/mailbridge.db")
        with transaction(services.sessions) as session:
            load_demo(session)
        load_demo_mail(services)
        from mailbridge.outbound.keys import genkey_command

        genkey_command(services, "demo", "mb202612", False)
        with transaction(services.sessions) as session:
            name, password = ensure_demo_operator(session, Path(tmp) / "secrets")
        with services.sessions() as session:
            refused = session.scalar(select(InboundLog.id).where(InboundLog.reason == "reply_user_mismatch"))
            held = session.scalar(
                select(QuarantineItem.id).where(QuarantineItem.reason == "auth_not_aligned")
            )
        with live_stack(services) as stack, chromium() as browser:
            page = browser.new_page(viewport={"width": 1280, "height": 860})
            sign_in(page, stack.url, name, password)
            for title, path in PAGES:
                page.goto(f"{stack.url}/console/p/demo{path.format(refused=refused, held=held)}")
                page.screenshot(
                    path=str(out / f"{title}.png"), full_page=title in ("overview", "inbound-detail")
                )
            page.goto(f"{stack.url}/console/audit")
            page.screenshot(path=str(out / "audit.png"))
            page.goto(f"{stack.url}/console/login")
            login = browser.new_page(viewport={"width": 1280, "height": 500})
            login.goto(f"{stack.url}/console/login")
            login.screenshot(path=str(out / "login.png"))
        services.close()
    print(f"screenshots written to {out}")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "docs/console"))

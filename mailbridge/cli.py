"""The ``mailbridge`` command: serve, db upgrade, demo, import, dkim genkey, imap check."""

from __future__ import annotations

import argparse
import json
import logging
import secrets
import sys
from pathlib import Path

from mailbridge.settings import Settings, SettingsError, load_settings


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mailbridge", description="Email gateway for secure practice messaging."
    )
    parser.add_argument("--config", help="TOML settings file (also MAILBRIDGE_CONFIG)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = sub.add_parser("serve", help="run HTTP API, SMTP/LMTP ingress, delivery worker and IMAP pollers")
    serve.add_argument(
        "--lmtp", action="store_true", help="speak LMTP on the SMTP listener (Postfix in front)"
    )
    serve.add_argument("--no-smtp", action="store_true", help="do not start the SMTP listener")
    serve.add_argument("--no-worker", action="store_true", help="do not start the delivery worker")
    serve.add_argument(
        "--migrate", action="store_true", help="apply migrations first (always done for SQLite)"
    )
    serve.add_argument(
        "--generate-api-key", action="store_true", help="create and print an API key if none is set"
    )

    db = sub.add_parser("db", help="database commands")
    dbsub = db.add_subparsers(dest="db_command", required=True, metavar="DB_COMMAND")
    dbsub.add_parser("upgrade", help="apply migrations up to the newest")

    demo = sub.add_parser("demo", help="load the demo practices (English and French) and print what to try")
    demo.add_argument("--if-empty", action="store_true", help="only when the database has no practice yet")

    imp = sub.add_parser("import", help="bulk-load a directory JSON file (same shapes as the API)")
    imp.add_argument("file", type=Path)

    dkim = sub.add_parser("dkim", help="DKIM keys")
    dkimsub = dkim.add_subparsers(dest="dkim_command", required=True, metavar="DKIM_COMMAND")
    genkey = dkimsub.add_parser("genkey", help="create a practice's DKIM key and print the DNS TXT record")
    genkey.add_argument("--practice", required=True)
    genkey.add_argument("--selector", default=None, help="default: mb<yyyymm>")
    genkey.add_argument("--ed25519", action="store_true", help="also create an ed25519 key (RFC 8463)")

    imap = sub.add_parser("imap", help="IMAP mailboxes")
    imapsub = imap.add_subparsers(dest="imap_command", required=True, metavar="IMAP_COMMAND")
    check = imapsub.add_parser("check", help="connect to a practice's mailboxes and print what is found")
    check.add_argument("--practice", required=True)

    keys = sub.add_parser("keys", help="encryption keys")
    keysub = keys.add_subparsers(dest="keys_command", required=True, metavar="KEYS_COMMAND")
    rotate = keysub.add_parser(
        "rotate-master", help="re-wrap every data key under a new master key (objects untouched)"
    )
    rotate.add_argument(
        "--prepare", action="store_true", help="add the next key as accepted first (several nodes)"
    )
    return parser


def _api_key(settings: Settings, generate: bool) -> str:
    if settings.api_key:
        return settings.api_key
    path = settings.data_dir / "secrets" / "api.key"
    if path.exists():
        return path.read_text().strip()
    if not generate:
        raise SettingsError("api_key: not set (MAILBRIDGE_API_KEY); use --generate-api-key to create one")
    path.parent.mkdir(parents=True, exist_ok=True)
    key = secrets.token_urlsafe(32)
    path.write_text(key + "\n")
    path.chmod(0o600)
    return key


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        settings = load_settings(args.config)
        if args.command == "serve":
            overrides: dict[str, object] = {}
            if args.lmtp:
                overrides["lmtp"] = True
            if args.no_smtp:
                overrides["smtp_enabled"] = False
            if args.no_worker:
                overrides["worker_enabled"] = False
            overrides["api_key"] = _api_key(settings, args.generate_api_key)
            settings = settings.model_copy(update=overrides)
    except SettingsError as exc:
        print(f"mailbridge: bad setting: {exc}", file=sys.stderr)
        return 2
    from mailbridge.logs import configure_logging

    configure_logging(settings)
    return _run(args, settings)


def _run(args: argparse.Namespace, settings: Settings) -> int:
    from mailbridge.domain.db import transaction, upgrade
    from mailbridge.wiring import build_services

    try:
        services = build_services(settings)
    except SettingsError as exc:
        print(f"mailbridge: bad setting: {exc}", file=sys.stderr)
        return 2
    try:
        if args.command == "serve":
            from mailbridge.crypto.agreement import Disagreement, check_agreement
            from mailbridge.domain.db import migrations_current
            from mailbridge.runtime import serve

            if args.migrate or services.engine.dialect.name == "sqlite":
                upgrade(services.engine)
            if migrations_current(services.engine):
                try:
                    with transaction(services.sessions) as session:
                        check_agreement(session, services.tokens.fingerprint, services.keyring)
                except Disagreement as exc:
                    print(f"mailbridge: {exc}", file=sys.stderr)
                    return 2
            print(
                f"mailbridge: HTTP on {settings.http_listen}, API key {settings.api_key[:4]}… (full key in "
                f"{settings.data_dir / 'secrets' / 'api.key'} or MAILBRIDGE_API_KEY)",
                file=sys.stderr,
            )
            serve(services)
            return 0
        if args.command == "db":
            upgrade(services.engine)
            print("mailbridge: database is at the newest migration")
            return 0
        if args.command == "demo":
            from mailbridge.demo import how_to_try, is_empty, load_demo

            upgrade(services.engine)
            with transaction(services.sessions) as session:
                if args.if_empty and not is_empty(session):
                    print("mailbridge: database already has practices; demo not loaded")
                    return 0
                load_demo(session)
            key = settings.api_key or _read_key(settings)
            print(how_to_try(settings.http_listen, settings.smtp_listen, key))
            return 0
        if args.command == "import":
            from pydantic import ValidationError

            from mailbridge.directory_import import load_directory
            from mailbridge.domain.errors import DomainError

            upgrade(services.engine)
            try:
                data = json.loads(args.file.read_text(encoding="utf-8"))
                with transaction(services.sessions) as session:
                    counts = load_directory(session, data)
            except (OSError, json.JSONDecodeError) as exc:
                print(f"mailbridge: cannot read {args.file}: {exc}", file=sys.stderr)
                return 2
            except ValidationError as exc:
                first = exc.errors()[0]
                print(
                    f"mailbridge: {args.file}: {'.'.join(map(str, first['loc']))}: {first['msg']}",
                    file=sys.stderr,
                )
                return 2
            except DomainError as exc:
                print(f"mailbridge: {args.file}: {exc.code}: {exc.detail}", file=sys.stderr)
                return 2
            print("mailbridge: imported " + ", ".join(f"{v} {k}" for k, v in counts.items()))
            return 0
        if args.command == "dkim":
            from mailbridge.outbound.keys import genkey_command

            return genkey_command(services, args.practice, args.selector, args.ed25519)
        if args.command == "imap":
            from mailbridge.ingress.imap import check_command

            return check_command(services, args.practice)
        if args.command == "keys" and args.keys_command == "rotate-master":
            from mailbridge.crypto.rotation import rotate_master_command

            return rotate_master_command(services, prepare=args.prepare)
        return 2
    finally:
        services.close()


def _read_key(settings: Settings) -> str:
    path = settings.data_dir / "secrets" / "api.key"
    return path.read_text().strip() if path.exists() else ""


if __name__ == "__main__":
    logging.basicConfig()
    sys.exit(main())

"""The ``mailbridge`` command: serve, db upgrade, demo, import, dkim, dns, imap check, keys, domains, operator."""

from __future__ import annotations

import argparse
import json
import logging
import os
import secrets
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from mailbridge.settings import Settings, SettingsError, load_settings

if TYPE_CHECKING:
    from mailbridge.wiring import Services

CONFIG_HELP = "TOML settings file (also MAILBRIDGE_CONFIG)"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mailbridge", description="Email gateway for secure practice messaging."
    )
    parser.add_argument("--config", help=CONFIG_HELP)
    # `--config` is accepted after the command too (`mailbridge serve --config X`): every command
    # parser inherits it, with no default of its own so it never hides one given before the command.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", default=argparse.SUPPRESS, help=CONFIG_HELP)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = sub.add_parser(
        "serve", parents=[common], help="run HTTP API, SMTP/LMTP ingress, delivery worker and IMAP pollers"
    )
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

    db = sub.add_parser("db", parents=[common], help="database commands")
    dbsub = db.add_subparsers(dest="db_command", required=True, metavar="DB_COMMAND")
    dbsub.add_parser("upgrade", help="apply migrations up to the newest", parents=[common])

    demo = sub.add_parser(
        "demo", parents=[common], help="load the demo practices (English and French) and print what to try"
    )
    demo.add_argument("--if-empty", action="store_true", help="only when the database has no practice yet")

    imp = sub.add_parser(
        "import", parents=[common], help="bulk-load a directory JSON file (same shapes as the API)"
    )
    imp.add_argument("file", type=Path)

    dkim = sub.add_parser(
        "dkim", parents=[common], help="DKIM keys: generate, check in DNS, activate, retire"
    )
    dkimsub = dkim.add_subparsers(dest="dkim_command", required=True, metavar="DKIM_COMMAND")
    genkey = dkimsub.add_parser(
        "genkey",
        help="create a new pending key under a new selector and print its DNS TXT record",
        parents=[common],
    )
    genkey.add_argument("--practice", required=True)
    genkey.add_argument("--selector", default=None, help="default: mb<yyyymm> (then mb<yyyymm>-2, …)")
    genkey.add_argument(
        "--ed25519",
        action="store_true",
        help="also an ed25519 key under <selector>e (RFC 8463 second signature)",
    )
    genkey.add_argument("--force", action="store_true", help="replace a pending key that never signed")
    listing = dkimsub.add_parser(
        "list", help="a practice's keys, their state and DNS status", parents=[common]
    )
    listing.add_argument("--practice", required=True)
    listing.add_argument("--json", action="store_true")
    dkim_check = dkimsub.add_parser(
        "check",
        help="look the keys' records up; activate a pending key whose record is published",
        parents=[common],
    )
    dkim_check.add_argument("--practice", required=True)
    activate = dkimsub.add_parser(
        "activate", help="sign with this pending key now (the old key becomes retiring)", parents=[common]
    )
    activate.add_argument("--practice", required=True)
    activate.add_argument("selector")
    retire = dkimsub.add_parser(
        "retire", help="retire a replaced key (its DNS record may then be removed)", parents=[common]
    )
    retire.add_argument("--practice", required=True)
    retire.add_argument("selector")
    retire.add_argument(
        "--force", action="store_true", help="retire the active key too: mail goes out unsigned"
    )

    dns = sub.add_parser("dns", help="the DNS records a practice publishes", parents=[common])
    dnssub = dns.add_subparsers(dest="dns_command", required=True, metavar="DNS_COMMAND")
    records = dnssub.add_parser(
        "records", help="print every record to publish (MX, SPF, DKIM, DMARC)", parents=[common]
    )
    records.add_argument("--practice", required=True)
    records.add_argument("--json", action="store_true")
    dns_check = dnssub.add_parser(
        "check",
        help="look every record up through the configured resolver; exit 1 if one is not right",
        parents=[common],
    )
    dns_check.add_argument("--practice", required=True)
    dns_check.add_argument("--json", action="store_true")

    keys = sub.add_parser(
        "keys",
        parents=[common],
        help="practice-scoped API keys (the platform key is MAILBRIDGE_API_KEY); the master key's rotation",
    )
    keysub = keys.add_subparsers(dest="keys_command", required=True, metavar="KEYS_COMMAND")
    create = keysub.add_parser(
        "create", help="create a key for one practice and print it (once)", parents=[common]
    )
    create.add_argument("--practice", required=True)
    create.add_argument("--scope", choices=["app", "read"], default="app", help="read: GET only")
    create.add_argument("--label", default="", help="a note to recognise the key by")
    key_list = keysub.add_parser("list", help="list keys (never the keys themselves)", parents=[common])
    key_list.add_argument("--practice", default=None)
    revoke = keysub.add_parser("revoke", help="revoke a key by its id", parents=[common])
    revoke.add_argument("id")
    rotate = keysub.add_parser(
        "rotate-master",
        help="re-wrap every data key under a new master key (objects untouched)",
        parents=[common],
    )
    rotate.add_argument(
        "--prepare", action="store_true", help="add the next key as accepted first (several nodes)"
    )

    domains = sub.add_parser(
        "domains", parents=[common], help="domains a practice owns besides its reply domain (routes)"
    )
    domsub = domains.add_subparsers(dest="domains_command", required=True, metavar="DOMAINS_COMMAND")
    add = domsub.add_parser("add", help="approve a domain for a practice", parents=[common])
    add.add_argument("--practice", required=True)
    add.add_argument("domain")
    remove = domsub.add_parser("remove", help="withdraw an approved domain", parents=[common])
    remove.add_argument("--practice", required=True)
    remove.add_argument("domain")
    remove.add_argument("--force", action="store_true", help="even if routes use it (they receive nothing)")
    domlist = domsub.add_parser(
        "list", help="the practice's reply domain and approved domains", parents=[common]
    )
    domlist.add_argument("--practice", required=True)

    op = sub.add_parser("operator", parents=[common], help="console operator accounts (argon2id passwords)")
    opsub = op.add_subparsers(dest="operator_command", required=True, metavar="OPERATOR_COMMAND")
    op_add = opsub.add_parser(
        "add",
        help="create an operator; prints a generated password unless --password-stdin",
        parents=[common],
    )
    op_add.add_argument("name")
    op_add.add_argument("--practice", action="append", help="a practice the operator may see (repeatable)")
    op_add.add_argument("--all-practices", action="store_true", help="every practice, present and future")
    op_add.add_argument(
        "--content", action="store_true", help="may read what mail says (subjects, bodies, raw)"
    )
    op_add.add_argument("--email", default=None, help="the operator's address (test notifications)")
    op_add.add_argument("--locale", default="en", choices=["en", "fr"])
    op_add.add_argument("--password-stdin", action="store_true", help="read the password from standard input")
    opsub.add_parser("list", help="operators, their practices and rights", parents=[common])
    op_remove = opsub.add_parser(
        "remove", help="delete an operator (its sessions end; its audit rows stay)", parents=[common]
    )
    op_remove.add_argument("name")
    reset = opsub.add_parser(
        "reset-password", help="a new password; every session of the account ends", parents=[common]
    )
    reset.add_argument("name")
    reset.add_argument("--password-stdin", action="store_true", help="read the password from standard input")

    imap = sub.add_parser("imap", parents=[common], help="IMAP mailboxes")
    imapsub = imap.add_subparsers(dest="imap_command", required=True, metavar="IMAP_COMMAND")
    check = imapsub.add_parser(
        "check", help="connect to a practice's mailboxes and print what is found", parents=[common]
    )
    check.add_argument("--practice", required=True)
    return parser


def _api_key(settings: Settings, generate: bool, config: str | None) -> tuple[str, str]:
    """The API key and where it came from, for the start-up line (an operator rotating the key
    needs to know which of the places is in force)."""
    if os.environ.get("MAILBRIDGE_API_KEY"):
        return settings.api_key, "from the environment (MAILBRIDGE_API_KEY)"
    if settings.api_key:
        return (
            settings.api_key,
            f"from api_key in {config or os.environ.get('MAILBRIDGE_CONFIG', 'the config')}",
        )
    path = settings.data_dir / "secrets" / "api.key"
    if path.exists():
        return path.read_text().strip(), f"from {path}"
    if not generate:
        raise SettingsError("api_key: not set (MAILBRIDGE_API_KEY); use --generate-api-key to create one")
    path.parent.mkdir(parents=True, exist_ok=True)
    key = secrets.token_urlsafe(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(key + "\n")
    return key, f"generated into {path}"


def main(argv: list[str] | None = None) -> int:
    # What mailbridge writes (the database, raw mail, attachments, outbox files, keys) is nobody
    # else's to read: group and others get nothing, whatever the shell's umask. Restored on return
    # for a caller that runs the command in its own process (tests).
    previous = os.umask(0o077)
    try:
        return _main(argv)
    finally:
        os.umask(previous)


def _main(argv: list[str] | None) -> int:
    args = _parser().parse_args(argv)
    key_origin = ""
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
            overrides["api_key"], key_origin = _api_key(settings, args.generate_api_key, args.config)
            settings = settings.model_copy(update=overrides)
    except SettingsError as exc:
        print(f"mailbridge: bad setting: {exc}", file=sys.stderr)
        return 2
    from mailbridge.logs import configure_logging

    configure_logging(settings)
    return _run(args, settings, key_origin)


def _refuse(problem: str) -> int:
    """One line on stderr, exit code 2: the operator's next step is in the line."""
    print(f"mailbridge: {problem}", file=sys.stderr)
    return 2


def _upgrade(services: Services) -> tuple[str | None, str | None]:
    """Migrations, then what they cannot do themselves: seal plaintext mailbox passwords (that needs
    the master key, which only the running service has). Returns the revisions before and after."""
    from mailbridge.access.credentials import reseal_legacy_passwords
    from mailbridge.domain.db import upgrade

    before, after = upgrade(services.engine)
    sealed = reseal_legacy_passwords(services.sessions, services.keyring)
    if sealed:
        print(f"mailbridge: sealed {sealed} plaintext mailbox password(s)", file=sys.stderr)
    return before, after


def _run(args: argparse.Namespace, settings: Settings, key_origin: str = "") -> int:
    from sqlalchemy.exc import SQLAlchemyError

    from mailbridge.domain.db import MigrationRefused, transaction
    from mailbridge.wiring import build_services

    try:
        services = build_services(settings)
    except SettingsError as exc:
        print(f"mailbridge: bad setting: {exc}", file=sys.stderr)
        return 2
    try:
        if args.command == "serve":
            from mailbridge.crypto.agreement import Disagreement, check_agreement
            from mailbridge.domain.db import pending_migrations
            from mailbridge.outbound.render import Renderer
            from mailbridge.runtime import ListenError, serve

            try:
                # SQLite is one node's own file: it is always brought up to date (README).
                if args.migrate or services.engine.dialect.name == "sqlite":
                    _upgrade(services)
                pending = pending_migrations(services.engine)
            except SQLAlchemyError as exc:
                return _refuse(f"database: cannot reach {_database(settings)}: {_first_line(exc)}")
            if pending is not None:  # an unmigrated schema would answer 451 to every message
                return _refuse(pending)
            try:
                with transaction(services.sessions) as session:
                    check_agreement(session, services.tokens.fingerprint, services.keyring)
            except Disagreement as exc:
                return _refuse(str(exc))
            if _import_disk_keys(services, sys.stderr):
                return 2
            problems = Renderer(settings.templates_dir).problems()
            if problems:  # every notification would fail: say so now, not at the first one
                more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
                return _refuse(f"templates: {problems[0]}{more}")
            try:
                serve(services, announce=f"API key {settings.api_key[:4]}… {key_origin}")
            except ListenError as exc:
                return _refuse(str(exc))
            return 0
        if args.command == "db":
            from mailbridge.domain.db import head_revision

            try:
                before, after = _upgrade(services)
            except SQLAlchemyError as exc:
                return _refuse(f"database: cannot reach {_database(settings)}: {_first_line(exc)}")
            where = _database(settings)
            if before == after:
                print(f"mailbridge: {where} already at revision {after} (the newest), nothing to do")
            elif before is None:
                print(f"mailbridge: {where} created at revision {after} (was empty)")
            else:
                print(f"mailbridge: {where} upgraded from revision {before} to {after}")
            if after != head_revision(services.engine):
                return _refuse(f"database is at {after}, the code needs {head_revision(services.engine)}")
            return _import_disk_keys(services, sys.stdout)
        if args.command == "demo":
            from mailbridge.console.accounts import ensure_demo_operator
            from mailbridge.demo import how_to_try, is_empty, load_demo, load_demo_mail

            _upgrade(services)
            with transaction(services.sessions) as session:
                loaded = not (args.if_empty and not is_empty(session))
                if loaded:
                    load_demo(session)
            if loaded:
                load_demo_mail(services)
            else:
                print("mailbridge: database already has practices; demo not loaded")
            with transaction(services.sessions) as session:
                name, password = ensure_demo_operator(session, settings.data_dir / "secrets")
            key = settings.api_key or _read_key(settings)
            if loaded:
                print(how_to_try(settings.http_listen, settings.smtp_listen, key))
            print(f"Console: http://{settings.http_listen}/console/  sign in as {name} / {password}")
            return 0
        if args.command == "import":
            from pydantic import ValidationError

            from mailbridge.directory_import import load_directory
            from mailbridge.domain.errors import DomainError

            _upgrade(services)
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
            from mailbridge.dnsrecords import commands as dkim_commands

            if args.dkim_command == "genkey":
                return dkim_commands.dkim_genkey(
                    services, args.practice, args.selector, args.ed25519, args.force
                )
            if args.dkim_command == "list":
                return dkim_commands.dkim_list(services, args.practice, args.json)
            if args.dkim_command == "check":
                return dkim_commands.dkim_check(services, args.practice)
            if args.dkim_command == "activate":
                return dkim_commands.dkim_activate(services, args.practice, args.selector)
            return dkim_commands.dkim_retire(services, args.practice, args.selector, args.force)
        if args.command == "dns":
            from mailbridge.dnsrecords import commands as dns_commands

            if args.dns_command == "records":
                return dns_commands.dns_records(services, args.practice, args.json)
            return dns_commands.dns_check(services, args.practice, args.json)
        if args.command == "operator":
            from mailbridge.console.accounts import operator_command

            _upgrade(services)
            return operator_command(services, args)
        if args.command == "imap":
            from mailbridge.ingress.imap import check_command

            return check_command(services, args.practice)
        if args.command == "keys" and args.keys_command == "rotate-master":
            from mailbridge.crypto.rotation import rotate_master_command

            return rotate_master_command(services, prepare=args.prepare)
        if args.command == "keys":
            from mailbridge.access import commands

            if args.keys_command == "create":
                return commands.keys_create(services, args.practice, args.scope, args.label)
            if args.keys_command == "list":
                return commands.keys_list(services, args.practice)
            return commands.keys_revoke(services, args.id)
        if args.command == "domains":
            from mailbridge.access import commands

            if args.domains_command == "add":
                return commands.domains_add(services, args.practice, args.domain)
            if args.domains_command == "remove":
                return commands.domains_remove(services, args.practice, args.domain, args.force)
            return commands.domains_list(services, args.practice)
        return 2
    except MigrationRefused as exc:
        print(f"mailbridge: {exc}", file=sys.stderr)
        return 2
    finally:
        services.close()


def _database(settings: Settings) -> str:
    """The database named without its password."""
    from sqlalchemy import make_url

    return make_url(settings.effective_database_url).render_as_string(hide_password=True)


def _first_line(exc: BaseException) -> str:
    text = str(getattr(exc, "orig", None) or exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:200]


def _import_disk_keys(services: Any, out: TextIO) -> int:
    """Keys an older version kept under DATA_DIR/dkim/ move into the database, once (files kept)."""
    from mailbridge.crypto.keyring import KeyringError
    from mailbridge.domain.db import transaction
    from mailbridge.outbound.keys import import_disk_keys

    try:
        with transaction(services.sessions) as session:
            moved = import_disk_keys(session, services.keyring, services.settings.data_dir / "dkim")
    except KeyringError as exc:
        print(
            f"mailbridge: master_key: DKIM keys in DATA_DIR/dkim/ not moved into the database: {exc}",
            file=sys.stderr,
        )
        return 2
    for line in moved:
        print(f"mailbridge: DKIM key {line}", file=out)
    return 0


def _read_key(settings: Settings) -> str:
    path = settings.data_dir / "secrets" / "api.key"
    return path.read_text().strip() if path.exists() else ""


if __name__ == "__main__":
    logging.basicConfig()
    sys.exit(main())

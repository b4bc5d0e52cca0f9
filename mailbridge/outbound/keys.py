"""Per-practice DKIM keys in the database, sealed with the keyring, so that every node signs.

A key's life (``DkimKeyState``): ``mailbridge dkim genkey`` makes a *pending* key under a selector
of its own; it signs nothing until its TXT record is seen published (``dkim check``) or an operator
says so (``dkim activate``); it is then *active*, and the key it replaces becomes *retiring*: it
signs no more, but its record must stay published while mail it signed is still being verified
(a week is plenty); ``dkim retire`` ends that. A selector is never reused within a practice, and a
key that was ever active is never overwritten, so a published record always names the key that
signed. Each practice signs with its one active RSA key, plus its active ed25519 key when it has
one (RFC 8463: a second signature; verifiers that do not know ed25519 skip it).

The private keys are sealed with the keyring (``crypto.keyring``), bound to their place by the
purpose ``dkim:<practice id>:<selector>:<algorithm>:private_key``, so a sealed key copied into
another row or practice fails to open. Every node opens them with the deployment's master key. A
node that cannot (another master key, a damaged row) raises :class:`CannotSign`: the worker leaves
that practice's notifications pending with the reason, never sends them unsigned.

Keys written by older versions under ``DATA_DIR/dkim/<practice>/<selector>.{rsa,ed25519}.pem`` are
moved in by :func:`import_disk_keys` (``mailbridge db upgrade`` and ``serve``, on the node that has
them; the files are left in place). Until then a practice whose old ``dkim_selector`` setting names
such a key cannot be signed for by any node, and its notifications wait rather than leave unsigned.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Literal

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from mailbridge.crypto.keyring import Keyring, KeyringError
from mailbridge.domain.errors import Conflict, Invalid, NotFound
from mailbridge.domain.models import DkimAlgorithm, DkimKeyRow, DkimKeyState, Practice, utcnow
from mailbridge.outbound.sign import (
    DkimKey,
    DkimSigner,
    generate_ed25519_key,
    generate_rsa_key,
    public_txt_value,
)

log = logging.getLogger(__name__)

# One DNS label (RFC 1035 2.3.1), lower case; 62 at most so that the ed25519 twin ("<selector>e") fits.
SELECTOR = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,60}[a-z0-9])?$")
#: Keys whose records must be published: the one waiting to be seen, the signing ones, the replaced ones.
PUBLISHED_STATES = (DkimKeyState.pending, DkimKeyState.active, DkimKeyState.retiring)
_SIGNING_ALGORITHM: dict[DkimAlgorithm, Literal["rsa-sha256", "ed25519-sha256"]] = {
    DkimAlgorithm.rsa: "rsa-sha256",
    DkimAlgorithm.ed25519: "ed25519-sha256",
}


class CannotSign(Exception):
    """The practice has a key this node cannot sign with: its mail waits (never leaves unsigned)."""


def seal_purpose(practice_id: int, selector: str, algorithm: DkimAlgorithm) -> str:
    return f"dkim:{practice_id}:{selector}:{algorithm.value}:private_key"


def from_domain(practice: Practice) -> str:
    """The d= of the practice's signatures: the domain of its From address (DMARC alignment)."""
    return practice.notify_from.rpartition("@")[2].lower().rstrip(".")


def keys_of(
    session: Session, practice: Practice, states: Iterable[DkimKeyState] | None = None
) -> list[DkimKeyRow]:
    query = select(DkimKeyRow).where(DkimKeyRow.practice_id == practice.id)
    if states is not None:
        query = query.where(DkimKeyRow.state.in_(list(states)))
    return list(session.scalars(query.order_by(DkimKeyRow.created_at, DkimKeyRow.id)))


def _key_named(session: Session, practice: Practice, selector: str) -> DkimKeyRow:
    row = session.scalar(
        select(DkimKeyRow).where(DkimKeyRow.practice_id == practice.id, DkimKeyRow.selector == selector)
    )
    if row is None:
        raise NotFound(
            "dkim_key_not_found", f"practice {practice.slug!r} has no DKIM key with selector {selector!r}"
        )
    return row


# ---- signing ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class SigningStatus:
    """What a practice's mail gets from this node: shown by the API and ``/readyz``."""

    signing: Literal["signed", "unsigned", "cannot_sign"]
    detail: str | None = None


class KeyStore:
    """Signers built from the database's active keys, kept while those keys stay the active ones.

    One per process (``wiring.Services.dkim_keys``), shared by the worker, the API and ``/readyz``.
    The worker reads the active keys with every batch (``BatchSnapshot``), so a key activated on any
    node signs on every node from its next batch on.
    """

    def __init__(self, keyring: Keyring) -> None:
        self.keyring = keyring
        self._signers: dict[tuple[tuple[int, str], ...], DkimSigner] = {}
        self._lock = threading.Lock()
        self._failing: dict[str, str] = {}  # practice slug → why its last signer could not be built

    def active_keys(self, session: Session, practice_ids: Iterable[int]) -> dict[int, list[DkimKeyRow]]:
        """The active keys of these practices, in one query."""
        ids = sorted(set(practice_ids))
        found: dict[int, list[DkimKeyRow]] = {}
        if not ids:
            return found
        rows = session.scalars(
            select(DkimKeyRow)
            .where(DkimKeyRow.practice_id.in_(ids), DkimKeyRow.state == DkimKeyState.active)
            .order_by(DkimKeyRow.id)
        )
        for row in rows:
            found.setdefault(row.practice_id, []).append(row)
        return found

    def signer(self, session: Session, practice: Practice, active: Sequence[DkimKeyRow]) -> DkimSigner | None:
        """The signer of *practice* from its *active* keys; None when it has no key at all.

        Raises :class:`CannotSign` when it has one this node cannot use.
        """
        try:
            signer = self._signer(session, practice, active)
        except CannotSign as why:
            with self._lock:
                self._failing[practice.slug] = str(why)
            raise
        with self._lock:
            self._failing.pop(practice.slug, None)
        return signer

    def _signer(
        self, session: Session, practice: Practice, active: Sequence[DkimKeyRow]
    ) -> DkimSigner | None:
        if not active:
            legacy = (practice.settings or {}).get("dkim_selector")
            if legacy:
                raise CannotSign(
                    f"DKIM selector {legacy!r} is set but its key is not in the database yet: run "
                    f"`mailbridge db upgrade` on the node whose DATA_DIR/dkim/{practice.slug}/ holds it "
                    "(if none does: `mailbridge dkim genkey`, publish, `dkim check`)"
                )
            return None
        cache_key = tuple(sorted((row.id, row.private_key) for row in active))
        with self._lock:
            cached = self._signers.get(cache_key)
        if cached is not None:
            return cached
        keys = []
        for row in active:
            try:
                pem = self.keyring.open(
                    session, row.private_key, seal_purpose(practice.id, row.selector, row.algorithm)
                )
            except KeyringError as exc:
                raise CannotSign(f"cannot open DKIM key {row.selector!r}: {exc}") from None
            keys.append(
                DkimKey(
                    domain=row.domain,
                    selector=row.selector,
                    private_pem=pem,
                    algorithm=_SIGNING_ALGORITHM[row.algorithm],
                )
            )
        try:
            signer = DkimSigner(keys)
        except ValueError as exc:
            raise CannotSign(f"DKIM keys {', '.join(r.selector for r in active)}: {exc}") from None
        with self._lock:
            self._signers[cache_key] = signer
        return signer

    def signer_for(self, session: Session, practice: Practice) -> DkimSigner | None:
        return self.signer(session, practice, self.active_keys(session, [practice.id]).get(practice.id, []))

    def status(self, session: Session, practice: Practice) -> SigningStatus:
        try:
            signer = self.signer_for(session, practice)
        except CannotSign as why:
            return SigningStatus("cannot_sign", str(why))
        if signer is None:
            return SigningStatus("unsigned", "no active DKIM key: notifications go out unsigned")
        elsewhere = sorted(
            {row.domain for row in keys_of(session, practice, [DkimKeyState.active])}
            - {from_domain(practice)}
        )
        if elsewhere:
            # Still signed, and verifiable, but d= no longer aligns with From (RFC 7489 3.1.1).
            return SigningStatus(
                "signed",
                f"the active key signs as d={', '.join(elsewhere)} but mail is From {from_domain(practice)}: "
                "DMARC alignment fails; make a key for the new domain (`mailbridge dkim genkey`)",
            )
        return SigningStatus("signed")

    def problems(self, session: Session) -> dict[str, str]:
        """Practice slug → why this node cannot sign for it: every practice with an active key is
        tried (a wrong master key shows before any mail waits), plus what the worker last met."""
        found: dict[str, str] = {}
        by_practice: dict[int, list[DkimKeyRow]] = {}
        for row in session.scalars(
            select(DkimKeyRow).where(DkimKeyRow.state == DkimKeyState.active).order_by(DkimKeyRow.id)
        ):
            by_practice.setdefault(row.practice_id, []).append(row)
        if by_practice:
            practices = session.scalars(select(Practice).where(Practice.id.in_(list(by_practice))))
            for practice in practices:
                try:
                    self.signer(session, practice, by_practice[practice.id])
                except CannotSign as exc:
                    found[practice.slug] = str(exc)
        with self._lock:
            for slug, reason in self._failing.items():
                found.setdefault(slug, reason)
        return found


# ---- the keys' life ---------------------------------------------------------------------------


def _selectors_for(base: str, ed25519: bool) -> list[str]:
    return [base, base + "e"] if ed25519 else [base]


def _reserved(practice: Practice) -> set[str]:
    """The selector an older version's setting names (and its ed25519 twin): its key may still be on
    some node's disk, waiting for :func:`import_disk_keys`; no new key may take its name."""
    legacy = (practice.settings or {}).get("dkim_selector")
    return {str(legacy), f"{legacy}e"} if legacy else set()


def _default_selector(session: Session, practice: Practice, ed25519: bool, today: date) -> str:
    """``mb<yyyymm>``, then ``mb<yyyymm>-2``, … : the first whose names (and twin) were never used."""
    used = set(session.scalars(select(DkimKeyRow.selector).where(DkimKeyRow.practice_id == practice.id)))
    used |= _reserved(practice)
    base = f"mb{today:%Y%m}"
    for n in range(1, 1000):
        candidate = base if n == 1 else f"{base}-{n}"
        if not any(s in used for s in _selectors_for(candidate, ed25519)):
            return candidate
    raise Conflict("dkim_selector_exhausted", "no free selector this month: give one with --selector")


def generate(
    session: Session,
    keyring: Keyring,
    practice: Practice,
    *,
    selector: str | None = None,
    ed25519: bool = False,
    force: bool = False,
    today: date | None = None,
) -> list[DkimKeyRow]:
    """New *pending* keys: RSA-2048 under *selector*, and with *ed25519* an Ed25519 key under
    ``<selector>e``. Nothing signs with them until they are activated.

    A selector already used is refused; with *force*, a key that was never active is replaced
    (a key that ever signed keeps its selector forever: its record may still verify mail).
    """
    if selector is not None and not SELECTOR.match(selector):
        raise Invalid(
            "dkim_selector_invalid",
            f"selector {selector!r}: one DNS label of a-z, 0-9 and '-', at most 62 characters",
            "selector",
        )
    base = selector or _default_selector(session, practice, ed25519, today or date.today())
    wanted = _selectors_for(base, ed25519)
    for name in wanted:
        if name in _reserved(practice):
            raise Conflict(
                "dkim_selector_in_use",
                f"selector {name!r} names the key an older version signed with (still on a node's disk: "
                "`mailbridge db upgrade` there moves it into the database); choose another selector",
                "selector",
            )
    existing = {
        row.selector: row
        for row in session.scalars(
            select(DkimKeyRow).where(DkimKeyRow.practice_id == practice.id, DkimKeyRow.selector.in_(wanted))
        )
    }
    for name, row in existing.items():
        if row.activated_at is not None or row.state != DkimKeyState.pending:
            raise Conflict(
                "dkim_selector_in_use",
                f"selector {name!r} belongs to a key that was {row.state.value} (never overwritten: its "
                "record may still verify mail); choose another selector or leave --selector out",
                "selector",
            )
        if not force:
            raise Conflict(
                "dkim_selector_exists",
                f"selector {name!r} already has a pending key; --force replaces a key that never signed",
                "selector",
            )
    if existing:
        session.execute(delete(DkimKeyRow).where(DkimKeyRow.id.in_([r.id for r in existing.values()])))
    domain = from_domain(practice)
    made = []
    for name, algorithm in zip(wanted, (DkimAlgorithm.rsa, DkimAlgorithm.ed25519), strict=False):
        pem = generate_rsa_key(2048) if algorithm == DkimAlgorithm.rsa else generate_ed25519_key()
        made.append(_new_row(session, keyring, practice, name, domain, algorithm, pem, DkimKeyState.pending))
    session.flush()
    return made


def _new_row(
    session: Session,
    keyring: Keyring,
    practice: Practice,
    selector: str,
    domain: str,
    algorithm: DkimAlgorithm,
    pem: bytes,
    state: DkimKeyState,
) -> DkimKeyRow:
    now = utcnow()
    row = DkimKeyRow(
        practice_id=practice.id,
        selector=selector,
        domain=domain,
        algorithm=algorithm,
        private_key=keyring.seal(session, practice.id, pem, seal_purpose(practice.id, selector, algorithm)),
        public_txt=public_txt_value(pem).decode("ascii"),
        state=state,
        created_at=now,
        activated_at=now if state in (DkimKeyState.active, DkimKeyState.retiring) else None,
        retired_at=now if state == DkimKeyState.retired else None,
    )
    session.add(row)
    return row


def activate(session: Session, practice: Practice, selector: str) -> list[str]:
    """Make a pending key the one that signs; the key it replaces becomes *retiring*.

    Returns what changed, one sentence each (nothing when the key is already active). An ed25519
    key only signs beside an RSA key, so it needs one active first.
    """
    row = _key_named(session, practice, selector)
    if row.state == DkimKeyState.active:
        return []
    if row.state != DkimKeyState.pending:
        raise Conflict(
            "dkim_key_retired",
            f"key {selector!r} is {row.state.value}: a replaced key never signs again; generate a new one",
        )
    active = keys_of(session, practice, [DkimKeyState.active])
    if row.algorithm == DkimAlgorithm.ed25519 and not any(k.algorithm == DkimAlgorithm.rsa for k in active):
        raise Conflict(
            "dkim_needs_rsa",
            f"key {selector!r} is ed25519, a second signature beside RSA (RFC 8463): activate an RSA key first",
        )
    now = utcnow()
    changes = []
    for old in active:
        if old.algorithm == row.algorithm:
            old.state = DkimKeyState.retiring
            changes.append(
                f"{old.selector} ({old.algorithm.value}) is now retiring: keep its record published"
            )
    row.state = DkimKeyState.active
    row.activated_at = now
    changes.append(f"{row.selector} ({row.algorithm.value}) now signs {practice.slug}'s mail")
    session.flush()
    return changes


def retire(session: Session, practice: Practice, selector: str, *, force: bool = False) -> list[str]:
    """A retiring (or pending) key is retired: its record may be removed. An active key only with
    *force*, which stops signing (its ed25519 companion goes too: it cannot sign alone)."""
    row = _key_named(session, practice, selector)
    if row.state == DkimKeyState.retired:
        return []
    targets = [row]
    was_active = row.state == DkimKeyState.active
    if was_active:
        if not force:
            raise Conflict(
                "dkim_key_active",
                f"key {selector!r} signs {practice.slug}'s mail: activate its replacement first "
                "(`dkim genkey`, then `dkim check`); --force retires it and mail goes out unsigned",
            )
        if row.algorithm == DkimAlgorithm.rsa:
            targets += [k for k in keys_of(session, practice, [DkimKeyState.active]) if k.id != row.id]
    now = utcnow()
    changes = []
    for target in targets:
        was = target.state
        target.state = DkimKeyState.retired
        target.retired_at = now
        changes.append(f"{target.selector} ({target.algorithm.value}) retired (was {was.value})")
    session.flush()
    if was_active and not keys_of(session, practice, [DkimKeyState.active]):
        log.warning("dkim_signing_stopped", extra={"practice": practice.slug, "selector": selector})
        changes.append(f"WARNING: {practice.slug} has no active DKIM key left: its mail goes out unsigned")
    return changes


def record_dns_status(row: DkimKeyRow, status: str) -> None:
    row.dns_status = status
    row.last_checked_at = utcnow()


# ---- keys of older versions, on disk ----------------------------------------------------------

_PEM_NAME = re.compile(r"^(?P<selector>[A-Za-z0-9][A-Za-z0-9-]*)\.(?P<algorithm>rsa|ed25519)\.pem$")


def import_disk_keys(session: Session, keyring: Keyring, root: Path) -> list[str]:
    """Move keys of older versions (``root/<practice>/<selector>.{rsa,ed25519}.pem``) into the table.

    Once per key and idempotent: a selector already in the table is left alone, and the files stay
    where they are. The key the practice's old ``dkim_selector`` setting named is imported *active*
    (it was signing; its ed25519 twin ``<selector>e`` too), unless the practice already has an
    active key of that algorithm (then *retiring*); any other is imported *retired* (it signed
    nothing). Returns one sentence per key moved.
    """
    if not root.is_dir():
        return []
    moved: list[str] = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        practice = session.scalar(select(Practice).where(Practice.slug == folder.name))
        if practice is None:
            log.warning("dkim_import_unknown_practice", extra={"path": str(folder)})
            continue
        legacy = (practice.settings or {}).get("dkim_selector")
        taken = set(session.scalars(select(DkimKeyRow.selector).where(DkimKeyRow.practice_id == practice.id)))
        files = sorted(folder.glob("*.pem"), key=lambda p: (not p.name.endswith(".rsa.pem"), p.name))
        for path in files:
            match = _PEM_NAME.match(path.name)
            if match is None:
                log.warning("dkim_import_unknown_file", extra={"path": str(path)})
                continue
            algorithm = DkimAlgorithm(match["algorithm"])
            base = match["selector"].lower()
            selector = base if algorithm == DkimAlgorithm.rsa else base + "e"
            if selector in taken:
                continue
            pem = path.read_bytes()
            try:
                public_txt_value(pem)
            except ValueError as exc:
                log.warning("dkim_import_unreadable", extra={"path": str(path), "error": str(exc)})
                continue
            state = DkimKeyState.retired
            if base == legacy:
                active = keys_of(session, practice, [DkimKeyState.active])
                clash = any(k.algorithm == algorithm for k in active)
                state = DkimKeyState.retiring if clash else DkimKeyState.active
            _new_row(session, keyring, practice, selector, from_domain(practice), algorithm, pem, state)
            session.flush()
            taken.add(selector)
            moved.append(f"{practice.slug}: {path.name} imported as {selector} ({state.value})")
            log.info(
                "dkim_key_imported",
                extra={"practice": practice.slug, "selector": selector, "state": state.value},
            )
        if legacy and legacy in taken:
            settings = dict(practice.settings or {})
            settings.pop("dkim_selector", None)  # the key store now says which key signs
            practice.settings = settings
    session.flush()
    return moved

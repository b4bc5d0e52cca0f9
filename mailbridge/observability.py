"""Metrics (Prometheus) and readiness: what an operator watches.

Node-wide series carry only low-cardinality labels (state, reason, code, result). Figures per
practice live in the ``mailbridge_practice_*`` families, labelled by the practice's slug, on the
few series where the label set stays small (inbound by state, deliveries by result, quarantine
held): a few tens of series per practice. ``metrics_practice_label = false`` leaves them out of
``/metrics`` for deployments with thousands of practices; the API's ``…/inbound`` and
``…/outbound`` logs and ``…/quarantine`` give the same figures per practice. ``*_created``
series are not exported (they double the series count and nobody graphs them).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector
from sqlalchemy import func, select, text

from mailbridge.domain import suppressions
from mailbridge.domain.db import migrations_current
from mailbridge.domain.models import Outbox, OutboxState, Practice, QuarantineItem, utcnow
from mailbridge.wiring import Services

disable_created_metrics()  # type: ignore[no-untyped-call]  # no `*_created` series (prometheus_client's switch, process-wide)

REGISTRY = CollectorRegistry()
INBOUND = Counter(
    "mailbridge_inbound_total",
    "Inbound messages by final state and reason",
    ["state", "reason"],
    registry=REGISTRY,
)
SMTP_REPLIES = Counter("mailbridge_smtp_replies_total", "SMTP answers by code", ["code"], registry=REGISTRY)
DELIVERIES = Counter(
    "mailbridge_deliveries_total", "Outbound deliveries by result", ["result"], registry=REGISTRY
)
UNSIGNED = Counter(
    "mailbridge_notifications_unsigned_total",
    "Emails sent without a DKIM signature (the practice has no active key), by practice",
    ["practice"],
    registry=REGISTRY,
)
DKIM_CANNOT_SIGN = Counter(
    "mailbridge_dkim_cannot_sign_total",
    "Outbox rows deferred because this node cannot open the practice's DKIM key, by practice",
    ["practice"],
    registry=REGISTRY,
)
SETTINGS_REFUSED = Counter(
    "mailbridge_settings_refused_total",
    "Practice settings writes refused (e.g. one that would change dkim_selector), by key",
    ["key"],
    registry=REGISTRY,
)
TEMPLATE_OVERRIDE_FAILED = Counter(
    "mailbridge_template_override_failed_total",
    "Emails sent with the default template because the practice's own failed to render cleanly, by practice",
    ["practice"],
    registry=REGISTRY,
)
NOTIFICATION_MUTES = Counter(
    "mailbridge_notification_mutes_total",
    "Conversations muted for a recipient, by source (one_click, page, api)",
    ["source"],
    registry=REGISTRY,
)
BOUNCES = Counter(
    "mailbridge_bounces_total",
    "Bounce and complaint reports by verdict: hard, soft, complaint (counted for the row's recipient) or ignored",
    ["kind"],
    registry=REGISTRY,
)
DELIVERY_REFUSALS = Counter(
    "mailbridge_delivery_refusals_total",
    "Notifications refused for a reason of ours (sender policy, sender address, message), never a suppression",
    ["reason"],
    registry=REGISTRY,
)
NOTIFICATIONS_SUPPRESSED = Counter(
    "mailbridge_notifications_suppressed_total",
    "Notifications not sent because their address is suppressed, by suppression reason",
    ["reason"],
    registry=REGISTRY,
)
SUPPRESSIONS = Gauge(
    "mailbridge_suppressions", "Addresses suppressed now, by reason", ["reason"], registry=REGISTRY
)
STEP_SECONDS = Histogram(
    "mailbridge_pipeline_step_seconds",
    "Pipeline step latency",
    ["step"],
    registry=REGISTRY,
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)
SMTP_LIMITS = Counter(
    "mailbridge_smtp_limit_hits_total",
    "SMTP sessions or transfers stopped by a resource limit",
    ["limit"],
    registry=REGISTRY,
)
HTTP_LIMITS = Counter(
    "mailbridge_http_limit_hits_total",
    "HTTP connections closed by a limit (connection cap, header-read timeout)",
    ["limit"],
    registry=REGISTRY,
)
API_RATE_LIMITED = Counter(
    "mailbridge_api_rate_limited_total",
    "API requests refused with 429 by the per-key rate limit (api/ratelimit.py)",
    registry=REGISTRY,
)
ACCEPT_ERRORS = Counter(
    "mailbridge_accept_errors_total",
    "Connections the operating system could not accept (out of descriptors or memory)",
    registry=REGISTRY,
)
OUTBOX_DEPTH = Gauge("mailbridge_outbox_depth", "Pending outbox rows", registry=REGISTRY)
OUTBOX_AGE = Gauge(
    "mailbridge_outbox_oldest_seconds", "Age of the oldest pending outbox row", registry=REGISTRY
)
IMAP_STATUS = Gauge(
    "mailbridge_imap_mailbox_up",
    "IMAP mailbox connected (1) or failing (0), by practice slug and mailbox name",
    ["practice", "mailbox"],
    registry=REGISTRY,
)
QUARANTINE_HELD = Gauge(
    "mailbridge_quarantine_held", "Quarantined messages waiting for staff review", registry=REGISTRY
)
WEBHOOK_ATTEMPTS = Counter(
    "mailbridge_webhook_attempts_total",
    "Webhook delivery attempts by result: delivered, failed (to be retried), gave_up (schedule exhausted)",
    ["result"],
    registry=REGISTRY,
)
WEBHOOK_DISABLED = Counter(
    "mailbridge_webhook_endpoints_disabled_total",
    "Webhook endpoints disabled after failing for their whole retry schedule",
    registry=REGISTRY,
)
PRACTICE_PREFIX = "mailbridge_practice_"
PRACTICE_INBOUND = Counter(
    "mailbridge_practice_inbound_total",
    "Inbound messages by practice and final state",
    ["practice", "state"],
    registry=REGISTRY,
)
PRACTICE_DELIVERIES = Counter(
    "mailbridge_practice_deliveries_total",
    "Delivery attempts by practice and result",
    ["practice", "result"],
    registry=REGISTRY,
)
PRACTICE_QUARANTINE_HELD = Gauge(
    "mailbridge_practice_quarantine_held",
    "Quarantined messages waiting for staff review, by practice",
    ["practice"],
    registry=REGISTRY,
)


def count_practice_inbound(practice: str | None, state: str) -> None:
    PRACTICE_INBOUND.labels(practice or "-", state).inc()


def count_practice_delivery(practice: str | None, result: str) -> None:
    PRACTICE_DELIVERIES.labels(practice or "-", result).inc()


STORAGE_ERRORS = Counter(
    "mailbridge_storage_errors_total",
    "Object store operations that failed (raw mail, attachments), by action",
    ["action"],
    registry=REGISTRY,
)

OUTBOX_LAG_LIMIT = timedelta(minutes=15)

# The latest counters and histograms of each extra SMTP process (ingress.cluster), by slot.
Sample = tuple[str, str, tuple[tuple[str, str], ...], float]  # family, sample name, labels, value
CHILD_SAMPLES: dict[int, list[Sample]] = {}
RETIRED_SLOT = 0  # the counts of children that died, kept so the node's counters never go back


def retire_child(slot: int) -> None:
    """A child is gone: fold its last counts into the retired total (its replacement starts at 0)."""
    gone = CHILD_SAMPLES.pop(slot, None)
    if not gone:
        return
    totals = {
        (family, name, labels): value for family, name, labels, value in CHILD_SAMPLES.get(RETIRED_SLOT, [])
    }
    for family, name, labels, value in gone:
        totals[(family, name, labels)] = totals.get((family, name, labels), 0.0) + value
    CHILD_SAMPLES[RETIRED_SLOT] = [
        (family, name, labels, value) for (family, name, labels), value in totals.items()
    ]


def export_samples() -> list[Sample]:
    """This process's counters and histograms, for the parent that serves /metrics."""
    out: list[Sample] = []
    for family in REGISTRY.collect():
        if family.type not in ("counter", "histogram"):
            continue
        for sample in family.samples:
            if not sample.name.endswith("_created"):
                out.append((family.name, sample.name, tuple(sorted(sample.labels.items())), sample.value))
    return out


class _NodeTotals(Collector):
    """This process's metrics plus its SMTP processes' latest reports, summed label set by label set."""

    def collect(self) -> Iterator[Metric]:
        extra: defaultdict[str, dict[tuple[str, tuple[tuple[str, str], ...]], float]] = defaultdict(dict)
        for samples in list(CHILD_SAMPLES.values()):
            for family_name, name, labels, value in samples:
                bucket = extra[family_name]
                bucket[(name, labels)] = bucket.get((name, labels), 0.0) + value
        for family in REGISTRY.collect():
            theirs = extra.get(family.name)
            if not theirs:
                yield family
                continue
            merged = Metric(family.name, family.documentation, family.type, family.unit)
            for sample in family.samples:
                key = (sample.name, tuple(sorted(sample.labels.items())))
                merged.add_sample(sample.name, sample.labels, sample.value + theirs.pop(key, 0.0))
            for (name, labels), value in theirs.items():  # label sets only the children have seen
                merged.add_sample(name, dict(labels), value)
            yield merged


def _outbox_stats(services: Services) -> tuple[int, float]:
    with services.sessions() as session:
        depth, oldest = session.execute(
            select(func.count(), func.min(Outbox.next_attempt_at)).where(Outbox.state == OutboxState.pending)
        ).one()
    age = 0.0
    if oldest is not None:  # min() keeps the column's UTCDateTime: aware, as everywhere
        age = max(0.0, (utcnow() - oldest).total_seconds())
    return int(depth), age


def _quarantine_held(services: Services) -> list[tuple[str, int]]:
    with services.sessions() as session:
        rows = session.execute(
            select(Practice.slug, func.count())
            .join(QuarantineItem, QuarantineItem.practice_id == Practice.id)
            .where(QuarantineItem.state == "held")
            .group_by(Practice.slug)
        ).all()
    return [(str(slug), int(count)) for slug, count in rows]


def readiness(services: Services) -> dict[str, dict[str, Any]]:
    checks: dict[str, dict[str, Any]] = {}
    try:
        with services.engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        checks["database"] = {"ok": True}
        checks["migrations"] = {"ok": migrations_current(services.engine)}
        _, age = _outbox_stats(services)
        checks["outbox_lag"] = {"ok": age < OUTBOX_LAG_LIMIT.total_seconds(), "seconds": round(age, 1)}
    except Exception as exc:  # readiness reports, it does not raise
        checks["database"] = {"ok": False, "error": type(exc).__name__}
    checks["templates"] = _templates_check(services)
    try:
        with services.sessions() as session:
            cannot = services.dkim_keys.problems(session)
        checks["dkim"] = {"ok": not cannot, "cannot_sign": cannot}
    except Exception as exc:  # a database fault is reported above
        checks["dkim"] = {"ok": False, "error": type(exc).__name__}
    try:  # every node reads and writes the same objects: a store it cannot reach makes it unready
        services.vault.check()
        checks["object_storage"] = {"ok": True}
    except Exception as exc:
        checks["object_storage"] = {"ok": False, "error": str(exc)[:200]}
    if services.settings.smtp_enabled:
        checks["smtp_listener"] = {"ok": services.flags.get("smtp_listening", False)}
    return checks


def _templates_check(services: Services) -> dict[str, Any]:
    """Every notification needs its templates: missing ones fail readiness, not the first send."""
    from mailbridge.outbound.render import Renderer

    problems = Renderer(services.settings.templates_dir).problems()
    if not problems:
        return {"ok": True}
    return {"ok": False, "error": problems[0], "problems": len(problems)}


class _WithoutPractices(Collector):
    """The node's series minus the per-practice families (``metrics_practice_label = false``)."""

    def __init__(self, inner: Collector) -> None:
        self.inner = inner

    def collect(self) -> Iterator[Metric]:
        for family in self.inner.collect():
            if not family.name.startswith(PRACTICE_PREFIX):
                yield family


def public_readiness(checks: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """What /readyz shows without a key: every check's verdict, numbers and error class names, never
    a name (the practices a node cannot sign for become their count)."""
    shown: dict[str, dict[str, Any]] = {}
    for name, check in checks.items():
        public = {k: v for k, v in check.items() if k in ("ok", "seconds", "error", "count")}
        if isinstance(check.get("cannot_sign"), dict):
            public["count"] = len(check["cannot_sign"])
        shown[name] = public
    return shown


def render_metrics(services: Services) -> tuple[bytes, str]:
    try:
        depth, age = _outbox_stats(services)
        OUTBOX_DEPTH.set(depth)
        OUTBOX_AGE.set(age)
        held = _quarantine_held(services)
        QUARANTINE_HELD.set(sum(count for _, count in held))
        PRACTICE_QUARANTINE_HELD.clear()  # a practice whose queue emptied shows no stale figure
        for slug, count in held:
            PRACTICE_QUARANTINE_HELD.labels(slug).set(count)
        with services.sessions() as session:
            for reason, count in suppressions.counts_by_reason(session).items():
                SUPPRESSIONS.labels(reason).set(count)
    except Exception:  # metrics must render even when the database is down
        pass
    source: Collector = _NodeTotals() if CHILD_SAMPLES else REGISTRY
    if services.settings.metrics_practice_label and source is REGISTRY:
        return generate_latest(REGISTRY), CONTENT_TYPE_LATEST
    if not services.settings.metrics_practice_label:
        source = _WithoutPractices(source)
    node = CollectorRegistry()
    node.register(source)
    return generate_latest(node), CONTENT_TYPE_LATEST

"""Metrics (Prometheus) and readiness: what an operator watches."""

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
    generate_latest,
)
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector
from sqlalchemy import func, select, text

from mailbridge.domain.db import migrations_current
from mailbridge.domain.models import Outbox, OutboxState, utcnow
from mailbridge.wiring import Services

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
BOUNCES = Counter("mailbridge_bounces_total", "Bounces received", ["kind"], registry=REGISTRY)
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
    "mailbridge_imap_mailbox_up", "IMAP mailbox connected (1) or failing (0)", ["mailbox"], registry=REGISTRY
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
    if services.settings.smtp_enabled:
        checks["smtp_listener"] = {"ok": services.flags.get("smtp_listening", False)}
    return checks


def render_metrics(services: Services) -> tuple[bytes, str]:
    try:
        depth, age = _outbox_stats(services)
        OUTBOX_DEPTH.set(depth)
        OUTBOX_AGE.set(age)
    except Exception:  # metrics must render even when the database is down
        pass
    if not CHILD_SAMPLES:
        return generate_latest(REGISTRY), CONTENT_TYPE_LATEST
    node = CollectorRegistry()
    node.register(_NodeTotals())
    return generate_latest(node), CONTENT_TYPE_LATEST

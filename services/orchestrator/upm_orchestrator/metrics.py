"""The orchestrator's domain metrics (Prometheus)."""

from __future__ import annotations

from prometheus_client import Counter

DECISIONS = Counter(
    "upm_orchestrator_decisions_total",
    "Permission decisions taken, by outcome (allow, deny, defer).",
    ["outcome"],
)
HELD_BACK = Counter(
    "upm_orchestrator_held_back_total",
    "Messages held back (denied or deferred), by reason code.",
    ["reason"],
)
RESERVATIONS = Counter(
    "upm_orchestrator_reservations_total",
    "Reservations confirmed or released, by what happened to them.",
    ["state"],
)

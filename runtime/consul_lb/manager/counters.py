"""What the applier counts, and its part of the runtime's state (state.json and the state
endpoint)."""

from __future__ import annotations

from dataclasses import dataclass

from consul_lb import model


@dataclass
class Counters:
    reloads: int = 0
    failed_reloads: int = 0
    failed_validations: int = 0
    renders: int = 0
    last_render_seconds: float = 0.0
    runtime_api_changes: int = 0
    reload_changes: int = 0
    runtime_api_fallbacks: int = 0
    last_reload: float = 0.0  # Unix time of the last successful reload or start


def state(strategy: str, c: Counters, lb: model.LoadBalancer | None) -> dict[str, object]:
    """Counters, published and skipped services."""
    return {
        "strategy": strategy,
        "reloads": c.reloads,
        "failed_reloads": c.failed_reloads,
        "failed_validations": c.failed_validations,
        "runtime_api_changes": c.runtime_api_changes,
        "reload_changes": c.reload_changes,
        "runtime_api_fallbacks": c.runtime_api_fallbacks,
        "services": [b.service for b in lb.backends] if lb else [],
        "skipped": [{"service": s.service, "reason": s.reason} for s in lb.skipped] if lb else [],
    }

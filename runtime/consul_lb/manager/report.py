"""What operators see of the load balancer: the state (state.json and
``/_consul_lb/state``), the figures /metrics shows, and where the endpoints read them.

Read from the runner's objects when asked (a scrape, a state request, after an event):
nothing is copied on the way, so they cannot drift from what the loop holds.
"""

from __future__ import annotations

import dataclasses
import json
import time
from typing import TYPE_CHECKING, Any

from consul_lb.observe.endpoints import Sources
from consul_lb.observe.metrics import Figures, WatchFigures

if TYPE_CHECKING:
    from consul_lb.manager.runner import Runner


class Report:
    def __init__(self, runner: Runner) -> None:
        self.runner = runner

    def state(self) -> dict[str, Any]:
        """What state.json and ``/_consul_lb/state`` show (JSON-serialisable; times are
        Unix seconds). Keys are listed in the README's "Observability" section."""
        r = self.runner
        state: dict[str, Any] = dict(r.applier.state())
        state["waiting"] = (
            f"first complete read of Consul at {r.client.config.address}" if r.waiting else None
        )
        state["errors"] = dict(r.errors)
        state["last_error"] = r.last_error or None
        watches = r.watcher.statuses()
        state["watches"] = [s.public() for s in watches]
        state["last_sync"] = max((w.last_success for w in watches), default=0.0) or None
        since = r.watcher.outage.since
        state["consul"] = {
            "address": r.client.config.address,
            "requests": r.client.stats.requests,
            "errors": r.client.stats.errors,
            "connections_opened": r.client.connections_opened,
            # Outage.since is monotonic; say it as wall-clock time.
            "unreachable_since": None
            if since is None
            else time.time() - (time.monotonic() - since),
        }
        state["last_reload"] = r.applier.counters.last_reload or None
        state["unreadable_services"] = r.watcher.missing()
        state["last_change"] = dataclasses.asdict(r.last_change) if r.last_change else None
        state["tls"] = r.tls.state()
        state["acme"] = r.acme.state()
        return state

    def figures(self) -> Figures:
        """A snapshot for one /metrics scrape."""
        r = self.runner
        lb = r.applier.applied
        backends = lb.backends if lb else ()
        certificates, certificates_skipped = r.tls.figures()
        acme_orders, acme_renewals = r.acme.figures()
        return Figures(
            strategy=r.haproxy.strategy,
            counters=dataclasses.replace(r.applier.counters),
            haproxy_restarts=r.haproxy.restarts,
            consul_requests=r.client.stats.requests,
            consul_errors=r.client.stats.errors,
            consul_connections=r.client.connections_opened,
            consul_up=r.watcher.outage.since is None,
            consul_last_success=max((w.last_success for w in r.watcher.statuses()), default=0),
            services_published=len(backends),
            servers_published=sum(len(b.servers) for b in backends),
            services_skipped=len(lb.skipped) if lb else 0,
            certificates=certificates,
            certificates_skipped=certificates_skipped,
            acme_orders=acme_orders if r.acme.enabled else None,
            acme_renewals=acme_renewals,
            waiting=r.waiting,
            errors=dict(r.errors),
            watches=[WatchFigures(w.name, w.last_success, w.errors) for w in r.watcher.statuses()],
        )

    def sources(self) -> Sources:
        """Where the metrics and state endpoints read their answers."""
        r = self.runner
        token = r.client.config.token
        return Sources(
            figures=self.figures,
            state=self.state,
            config_file=r.paths.config,
            secrets=lambda: [token, *r.settings.secrets()] if token else r.settings.secrets(),
            haproxy_metrics=("127.0.0.1", r.settings.stats_port),
            haproxy_auth=(r.settings.stats_user, r.settings.stats_password)
            if r.settings.stats_user and r.settings.stats_password
            else None,
            acme_challenge=r.acme.answer,
        )

    def write_state(self) -> None:
        """state.json in the state directory: what the load balancer does now."""
        tmp = self.runner.paths.state_dir / ".state.json.tmp"
        body = dict(self.state(), updated=time.time())
        tmp.write_text(json.dumps(body, indent=2, sort_keys=True) + "\n")
        tmp.replace(self.runner.paths.state_dir / "state.json")

"""What one size of the bench measured: one column of the table."""

from __future__ import annotations

from dataclasses import dataclass, field

# The stages of the no-reload path, in order: (key, what happened at that time).
STAGES = (
    ("answered", "the runtime's services watch has Consul's answer"),
    ("read", "the changed service read (UI summaries, then the service)"),
    ("changed", "the change reaches the runtime's loop"),
    ("snapshot", "snapshot taken (render wait over)"),
    ("rendered", "rendered (model + template)"),
    ("commands", "runtime-API commands done"),
    ("applied", "files installed"),
    ("routed", "first request routed to the new instance"),
)


@dataclass
class Row:
    services: int
    rounds: int = 0
    # in-process
    render_s: float | None = None
    render_change_s: float | None = None
    check_s: float | None = None
    config_kib: float | None = None
    # the image against Consul
    first_apply_s: float | None = None
    all_apply_s: float | None = None
    # Of the time to the first apply: until the runtime watches Consul (HAProxy started),
    # reading Consul, applying (render, haproxy -c, reload).
    start_parts: tuple[float, float, float] | None = None
    backends: int | None = None
    servers: int | None = None
    probe_ok: bool = False
    render_runtime_s: float | None = None  # its first render of the whole catalog
    render_change_runtime_s: float | None = None  # its render of one changed instance
    rss_mib: float | None = None
    rss_peak_mib: float | None = None
    haproxy_rss_mib: float | None = None
    conns_max: int | None = None
    conns_opened: int | None = None
    requests: list[int] = field(default_factory=list)
    delays: dict[str, list[float]] = field(default_factory=lambda: {"no reload": [], "reload": []})
    timeouts: dict[str, int] = field(default_factory=lambda: {"no reload": 0, "reload": 0})
    stages: dict[str, list[float]] = field(default_factory=lambda: {k: [] for k, _ in STAGES})
    notes: list[str] = field(default_factory=list)

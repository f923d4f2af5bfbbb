"""What one load balancer knows of each wanted certificate: what the fleet stored, the
last order's status, the last decision; shown in ``/_consul_lb/state``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from consul_lb.acme.plan import Decision, Stored, Wanted, renewal_time
from consul_lb.acme.store import Status


@dataclass
class Cert:
    """What this load balancer knows of one wanted certificate."""

    want: Wanted
    next_look: float = 0.0
    stored: Stored | None = None
    status: Status | None = None  # the fleet's last order
    decision: Decision | None = None
    holder: str | None = None  # another load balancer's, when it held the lock

    def public(self, renew_before: float) -> dict[str, Any]:
        s, st = self.stored, self.status
        return {
            "name": self.want.name,
            "service": self.want.service,
            "hosts": list(self.want.hosts),
            "skipped_hosts": list(self.want.skipped),
            "not_after": s.not_after if s else None,
            "sha256": s.fingerprint if s else None,
            "next_renewal": renewal_time(s, renew_before) if s else None,
            "due": self.decision.due if self.decision else None,
            "why": self.decision.why if self.decision else "not looked at yet",
            "next_look": self.next_look or None,
            "lock_holder": self.holder,
            "last_order": None
            if st is None
            else {
                "result": st.result,
                "time": st.time,
                "by": st.by,
                "error": st.error,
                "failures": st.failures,
                "next_attempt": st.next_attempt,
            },
        }

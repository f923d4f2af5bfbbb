"""The certificates HAProxy serves: read from the sources, checked, applied.

Called by the manager loop only (like the applier). A change of the certificate set is
applied through HAProxy's runtime API (``commands.py``) and the files on disk follow, so
that a reload or a restart starts from the same set. Two changes are structural and go
through a reload instead, because they change haproxy.cfg: the first certificate (the
HTTPS frontend is bound only when there is one) and the last one going, and a change of
the default certificate (HAProxy cannot remove the default of a running frontend).

The runtime writes what HAProxy reads in ``<state dir>/tls/``: ``certs/<name>`` (each
bundle: certificate, chain, key; mode 600, in a mode-700 directory) and ``certs.list``
(the crt-list, default first). They are outside ``live/`` because ``haproxy -c`` checks
a scratch copy of ``live/``; it reads these where they are.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from typing import Any

from consul_lb.atomic_write import replace_file
from consul_lb.consul.client import ConsulClient
from consul_lb.consul.watch import Outage
from consul_lb.haproxy.process import Haproxy
from consul_lb.model import LoadBalancer
from consul_lb.settings import Settings
from consul_lb.tls.bundle import BadBundle, Certificate
from consul_lb.tls.certs import EMPTY, CertSet, Parsed, Raw, TlsView, crt_list, select
from consul_lb.tls.commands import CertCommandError, CertCommands
from consul_lb.tls.report import Once, problems
from consul_lb.tls.sources import DirSource, KVSource

log = logging.getLogger("tls")


class Tls:
    def __init__(
        self,
        settings: Settings,
        haproxy: Haproxy,
        set_view: Callable[[TlsView], None],
        client: ConsulClient,
        notify: Callable[[], None],
        outage: Outage,
    ) -> None:
        self.settings = settings
        self.tls = settings.tls
        self.haproxy = haproxy
        self.set_view = set_view
        self.dir = settings.state_dir / "tls"
        self.certs_dir = self.dir / "certs"
        self.list_path = self.dir / "certs.list"
        self.commands = CertCommands(haproxy.admin)
        self.parsed = Parsed()
        self.applied: CertSet = EMPTY  # what HAProxy serves
        self.pending: CertSet | None = None  # written, waiting for a reload to serve it
        self.refused: dict[str, str] = {}  # fingerprint -> HAProxy's reason
        self.once = Once()
        self.unverified: set[str] = set()  # services told about "verify none"
        self.sources: dict[str, DirSource | KVSource] = {}
        if self.tls.cert_dir is not None:
            self.sources["dir"] = DirSource(self.tls.cert_dir, notify)
        if self.tls.cert_kv is not None:
            self.sources["kv"] = KVSource(client, self.tls.cert_kv, notify, outage)

    # -- lifecycle ----------------------------------------------------------------------
    def prepare(self) -> None:
        """Before HAProxy's first start: the directory as it is now (KV follows once
        Consul answers), so that the HTTPS frontend is bound from the start."""
        if not self.sources:  # no certificate source: no TLS, no files
            return
        source = self.sources.get("dir")
        if isinstance(source, DirSource):
            source.scan()
        found = self._select()
        self._report(found)
        self._write(found)
        self.pending = found
        self.set_view(self._view(found))

    def start(self) -> None:
        for source in self.sources.values():
            source.start()

    def stop(self) -> None:
        for source in self.sources.values():
            source.stop()

    # -- applying -----------------------------------------------------------------------
    def apply(self) -> str:
        """Bring HAProxy to what the sources hold. Says what the loop must do next:
        "none", or "render" (haproxy.cfg changes: render and reload), or "force" (reload
        though haproxy.cfg does not change: HAPROXY_RUNTIME_API=false)."""
        target = self.pending if self.pending is not None else self.applied
        new = self._select(target)
        self._report(new)
        if new == target:
            return "none"
        old = self.applied
        structural = bool(old.certs) != bool(new.certs) or old.default != new.default
        running = self.haproxy.running()
        waiting = self.pending is not None  # a render is due anyway
        if structural or waiting or not running or not self.settings.runtime_api:
            self._write(new)
            self.pending = new
            self.set_view(self._view(new))
            if structural or waiting:
                return "render"
            if not running:  # HAProxy starts again from these files
                self.settle("reload")
                return "none"
            return "force"
        self.applied = self._apply_live(old, new)
        self._report(self.applied)
        return "none"

    def _apply_live(self, old: CertSet, new: CertSet) -> CertSet:
        served = old.by_name
        refusals: list[BadBundle] = []
        wanted = new.by_name
        crt = str(self.list_path)
        for name in sorted(served.keys() | wanted.keys()):
            before, after = served.get(name), wanted.get(name)
            path = str(self.certs_dir / name)
            try:
                if after is None:
                    self.commands.remove(crt, path)
                    (self.certs_dir / name).unlink(missing_ok=True)
                    del served[name]
                    log.info("certificate %r removed (runtime API, no reload)", name)
                elif before is None or before.pem != after.pem:
                    if before is None:
                        self.commands.add(crt, path, after.pem)
                    else:
                        self.commands.replace(path, after.pem)
                    self._write_cert(after)
                    served[name] = after
                    log.info(
                        "certificate %r %s: %s (runtime API, no reload)",
                        name,
                        "added" if before is None else "replaced",
                        ", ".join(after.names),
                    )
            except (CertCommandError, OSError) as exc:
                if after is not None:
                    self.refused[after.fingerprint] = f"HAProxy refuses it: {exc}"
                    kept = "; serving its previous version" if before is not None else ""
                    refusals.append(
                        BadBundle(name, after.source, f"HAProxy refuses it: {exc}{kept}")
                    )
                else:
                    log.error("certificate %r could not be removed: %s", name, exc)
        applied = CertSet(
            tuple(served[n] for n in sorted(served)),
            tuple(sorted([*new.skipped, *refusals], key=lambda b: (b.source, b.name))),
            old.default,
        )
        self._write_list(applied)
        return applied

    def settle(self, outcome: str) -> None:
        """After a render: a pending set is served once HAProxy reloaded (or nothing had
        to change); when haproxy -c rejected it, the previous set is put back."""
        pending, self.pending = self.pending, None
        if pending is None:
            return
        if outcome != "rejected":
            self.applied = pending
            self._prune(pending)
            return
        for cert in pending.certs:
            if self.applied.by_name.get(cert.name) != cert:
                self.refused[cert.fingerprint] = "haproxy -c rejects the configuration with it"
        self._write(self.applied)
        self.set_view(self._view(self.applied))
        log.error("the new certificates were rejected; serving the previous ones")

    # -- files --------------------------------------------------------------------------
    def _write(self, certs: CertSet) -> None:
        for cert in certs.certs:
            self._write_cert(cert)
        self._write_list(certs)

    def _write_cert(self, cert: Certificate) -> None:
        self.certs_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.certs_dir, 0o700)
        path = self.certs_dir / cert.name
        try:
            if path.read_bytes() == cert.pem:
                return
        except OSError:
            pass
        replace_file(path, cert.pem, mode=0o600)

    def _write_list(self, certs: CertSet) -> None:
        text = crt_list(certs, str(self.certs_dir))
        try:
            if self.list_path.read_text() == text:
                return
        except OSError:
            pass
        replace_file(self.list_path, text.encode())

    def _prune(self, certs: CertSet) -> None:
        """Remove the files of certificates no longer served."""
        keep = {c.name for c in certs.certs}
        if self.certs_dir.is_dir():
            for path in self.certs_dir.iterdir():
                if path.name not in keep and not path.name.startswith("."):
                    path.unlink(missing_ok=True)

    # -- reading and reporting ------------------------------------------------------------
    def _select(self, previous: CertSet = EMPTY) -> CertSet:
        raw: dict[str, dict[str, Raw]] = {n: s.snapshot() for n, s in self.sources.items()}
        found = select(raw, previous, self.tls.default_cert, self.parsed)
        if not any(c.fingerprint in self.refused for c in found.certs):
            return found
        keep: list[Certificate] = []
        skipped = list(found.skipped)
        for cert in found.certs:
            why = self.refused.get(cert.fingerprint)
            if why is None:
                keep.append(cert)
                continue
            old = previous.by_name.get(cert.name)
            if old is not None and old.fingerprint not in self.refused:
                keep.append(old)
                why += "; serving its previous version"
            skipped.append(BadBundle(cert.name, cert.source, why))
        names = {c.name for c in keep}
        default = found.default if found.default in names else None
        if default is None:
            default = (
                self.tls.default_cert
                if self.tls.default_cert in names
                else min(names, default=None)
            )
        return CertSet(
            tuple(keep), tuple(sorted(skipped, key=lambda b: (b.source, b.name))), default
        )

    def _view(self, certs: CertSet) -> TlsView:
        return TlsView.of(certs, str(self.list_path))

    def _report(self, certs: CertSet) -> None:
        self.once.log(problems(certs, self.tls.default_cert, time.time()))

    def report_backends(self, lb: LoadBalancer | None) -> None:
        """Say once per service that its TLS to the instances is not verified."""
        if lb is None or self.tls.backend_ca_file is not None:
            return
        for b in lb.backends:
            if b.tls and b.service not in self.unverified:
                log.warning(
                    "service %r: HAPROXY.BACKEND.TLS=true without HAPROXY_BACKEND_CA_FILE: "
                    "the instances' certificates are not verified (verify none)",
                    b.service,
                )
                self.unverified.add(b.service)

    def state(self) -> dict[str, Any]:
        now = time.time()
        served = self.applied
        kv = self.sources.get("kv")
        return {
            "https_port": self.tls.https_port,
            "https_bound": bool(served.certs),
            "default": served.default,
            "certificates": [c.public(now) for c in served.certs],
            "skipped": [b.public() for b in served.skipped],
            "pending_reload": self.pending is not None,
            "sources": {
                "dir": str(self.tls.cert_dir) if self.tls.cert_dir else None,
                "kv": self.tls.cert_kv,
            },
            "kv_watch": kv.status.public() if isinstance(kv, KVSource) else None,
        }

    def figures(self) -> tuple[list[tuple[str, float]], int]:
        """(name, expiry as Unix time) of each certificate served, and how many are
        skipped."""
        served = self.applied
        return [(c.name, c.not_after) for c in served.certs], len(served.skipped)

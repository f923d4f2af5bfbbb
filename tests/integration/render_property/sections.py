"""Check 2, the sections: every line of haproxy.cfg is one of the templates' shapes with the
model's values, and the fixed sections are those of an empty catalog."""

from __future__ import annotations

import itertools
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import jinja2
from consul_lb import model
from consul_lb.haproxy.limits import Limits
from consul_lb.render import BACKEND_TEMPLATE, HAPROXY_TEMPLATE


def parse_sections(config: str) -> tuple[list[str], list[tuple[str, list[str]]]]:
    """(lines before the first section, [(section header, body lines)])."""
    preamble: list[str] = []
    sections: list[tuple[str, list[str]]] = []
    for line in config.split("\n"):
        if line and not line[0].isspace() and not line.startswith("#"):
            sections.append((line, []))
        elif sections:
            sections[-1][1].append(line)
        else:
            preamble.append(line)
    for _, body in sections:
        while body and not body[-1]:
            body.pop()
    return preamble, sections


@dataclass(frozen=True)
class Expected:
    """A dynamic section: lines that carry the model's values (each exactly once), the
    server lines (in the model's order, each one of the spellings its server allows),
    lines it may hold, lines that must not be there, and the path prefix a
    ``replace-path`` line must strip (None: no such line)."""

    header: str
    values: list[str]
    servers: list[frozenset[str]] = field(default_factory=list)
    optional: frozenset[str] = frozenset()
    forbidden: tuple[str, ...] = ()
    strip: str | None = None


def server_lines(s: model.Server, checks: bool, tls: bool) -> frozenset[str]:
    """The spellings of a server line: its options in any order; weight 1 (HAProxy's
    default) written or not."""
    address = f"ipv6@{s.address}" if ":" in s.address else s.address
    options = ["check"] if checks else []
    options += [f"maxconn {s.maxconn}"] if s.maxconn is not None else []
    # README: TLS to the instances, not verified without HAPROXY_BACKEND_CA_FILE.
    options += ["ssl verify none"] if tls else []
    weights = [[f"weight {s.weight}"]] if s.weight != 1 else [[], ["weight 1"]]
    return frozenset(
        f"    server {s.name} {address}:{s.port}" + "".join(f" {o}" for o in order)
        for w in weights
        for order in itertools.permutations(options + w)
    )


HTTP_CHECK = ("    option httpchk", "    http-check expect rstatus ^[23]")
TCP_CHECK = "    option tcp-check"


def expected_dynamic_sections(
    lb: model.LoadBalancer, limits: Limits, sticky_key: str, serving: bool = False
) -> list[Expected]:
    """The model's frontends and backends as the templates' value-carrying lines;
    ``serving``: a certificate is served (the https frontend is bound)."""
    out: list[Expected] = []
    for b in lb.tcp_backends:
        out.append(
            Expected(
                f"frontend tcp_{b.frontend_port}",
                [f"    bind :{b.frontend_port}", "    mode tcp", f"    default_backend {b.name}"],
            )
        )
    for b in lb.backends:
        http = b.protocol == "http"
        lines = [f"mode {b.protocol}", f"balance {b.balance}"]
        # README: clients outside the networks get 403 (tcp: the connection is closed).
        if b.allow:
            src = f"{{ src {' '.join(b.allow)} }}"
            lines.append(
                f"http-request deny deny_status 403 unless {src}"
                if http
                else f"tcp-request content reject unless {src}"
            )
        http_only = [
            "option forwardfor",
            "http-request set-header X-Forwarded-Port %[dst_port]",
        ]
        lines += http_only[:1] if http else []
        # README: HAProxy checks with GET <path> (2xx or 3xx) instead of a TCP connect.
        if b.healthcheck_path:
            lines += [
                "option httpchk",
                f"http-check send meth GET uri {b.healthcheck_path} ver HTTP/1.1 hdr Host {b.name}",
                "http-check expect rstatus ^[23]",
            ]
        else:
            lines.append("option tcp-check")
        lines.append("default-server inter 10s fall 1 init-addr last,libc,none")
        # README: a cookie consul-lb-<service>, HAProxy's dynamic cookies keyed with
        # HAPROXY_STICKY_KEY.
        if b.sticky:
            lines += [
                f"cookie consul-lb-{b.service} insert indirect nocache dynamic",
                f"dynamic-cookie-key {sticky_key}",
            ]
        lines += http_only[1:] if http else []
        # README: a 308 to https, same host and path, the port named unless 443 (only
        # while a certificate is served); HSTS on https responses.
        if http and b.redirect_https and serving:
            lines.append(
                "http-request redirect code 308 location "
                "https://%[req.hdr(host),field(1,:)]:8443%[pathq] unless { ssl_fc }"
            )
        if http and b.hsts is not None:
            lines.append(
                "http-response set-header Strict-Transport-Security "
                f'"max-age={b.hsts}" if {{ ssl_fc }}'
            )
        strip = b.path if b.strip_path else None
        forbidden = () if http else tuple(f"    {f}" for f in http_only)
        forbidden += (TCP_CHECK,) if b.healthcheck_path else HTTP_CHECK
        out.append(
            Expected(
                f"backend {b.name}",
                [f"    {v}" for v in lines],
                [server_lines(s, limits.checks, b.tls) for s in b.servers],
                frozenset(
                    {
                        "    # HAPROXY.BACKEND.STRIP_PATH: the instances see the path without "
                        f"{strip}."
                    }
                    if strip
                    else ()
                ),
                forbidden,
                strip,
            )
        )
    return out


REPLACE_PATH = re.compile(r"    http-request replace-path \^(.+)/\?\(\.\*\) /\\1")


def strips(line: str, prefix: str) -> bool:
    """Whether a ``replace-path`` line removes exactly ``prefix`` (README: ``/api/users``
    arrives as ``/users``): its expression is the prefix, each character literal ('.'
    escaped, any other punctuation escaped or not)."""
    found = REPLACE_PATH.fullmatch(line)
    if not found:
        return False
    tokens = re.findall(r"\\[^A-Za-z0-9]|[A-Za-z0-9_~/-]", found[1])
    return "".join(tokens) == found[1] and "".join(t[-1] for t in tokens) == prefix


def template_literals(env: jinja2.Environment) -> dict[str, set[str]]:
    """Lines of the templates that render tcp frontends (the loop in haproxy.cfg.j2) and
    backends (backend.cfg.j2) and that hold no Jinja2 at all: static directives and
    comments, the same for every input. Read from the templates in use, so that a new
    static directive there (another engineer's ``option tcplog``) does not break this
    test, while anything that depends on the input still has to be one of the value
    lines above (and option-specific static lines are forbidden where the option is
    not, see HTTP_CHECK)."""
    assert env.loader is not None

    def source(name: str) -> list[str]:
        text = env.loader.get_source(env, name)[0] if env.loader else ""
        return re.sub(r"\{#.*?#\}", "", text, flags=re.DOTALL).split("\n")

    def literals(lines: Sequence[str]) -> set[str]:
        return {ln for ln in lines if "{{" not in ln and "{%" not in ln}

    lines = source(HAPROXY_TEMPLATE)
    begin = lines.index("{% for b in lb.tcp_backends %}")
    end = lines.index("{% endfor %}", begin)
    return {
        "frontend": literals(lines[begin + 1 : end]),
        "backend": literals(source(BACKEND_TEMPLATE)),
    }


def check_dynamic_sections(
    sections: list[tuple[str, list[str]]],
    lb: model.LoadBalancer,
    limits: Limits,
    literals: Mapping[str, set[str]],
    sticky_key: str,
    serving: bool = False,
) -> None:
    expected = expected_dynamic_sections(lb, limits, sticky_key, serving)
    assert [h for h, _ in sections] == [e.header for e in expected], "sections differ from model"
    for (header, body), want in zip(sections, expected, strict=True):
        static = literals[header.split()[0]]
        servers = [ln for ln in body if ln.startswith("    server ")]
        stripping = [ln for ln in body if ln.startswith("    http-request replace-path ")]
        rest = [ln for ln in body if ln not in servers and ln not in stripping]
        values = Counter(want.values)
        extra = [ln for ln in rest if ln not in values and ln not in static | want.optional]
        assert not extra, f"{header}: lines the input was not entitled to: {extra}"
        assert Counter(ln for ln in rest if ln in values) == values, f"{header}: {body}"
        assert len(servers) == len(want.servers), f"{header}: {servers}"
        for line, spellings in zip(servers, want.servers, strict=True):
            assert line in spellings, f"{header}: {line!r}, expected one of {sorted(spellings)}"
        assert len(stripping) == (want.strip is not None), f"{header}: {stripping}"
        assert all(strips(ln, want.strip or "") for ln in stripping), f"{header}: {stripping}"
        assert not set(body) & set(want.forbidden), f"{header}: lines of options it has not"

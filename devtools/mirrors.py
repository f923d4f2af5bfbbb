"""Where Debian packages come from: one answer for mmdebstrap, the Dockerfiles and ./dev.

The Debian mirror is the one this host's apt already uses (its deb822 ``*.sources`` and
one-line ``*.list`` files), unless ``DEBIAN_MIRROR`` names another; the security archive
likewise, unless ``DEBIAN_SECURITY_MIRROR`` does. apt in builds goes through ``APT_PROXY``,
else the usual ``http_proxy``/``https_proxy``, else the proxy the host's apt is configured
with. No mirror host name is written in the project: the default is always the host's own.

Standard library only: ``scripts/setup-host.sh`` runs it with the system python3
(``python3 -m devtools.mirrors debian``) before the project's virtualenv exists.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from devtools.apt_sources import APT_DIR, OS_RELEASE, find_archives, host_sources, os_release

PROXY_SCHEMES = ("http", "https", "socks5h")
USAGE = "[describe|debian|apt-options|advice]"
EXAMPLES = (
    "DEBIAN_MIRROR=http://<mirror>/debian, DEBIAN_SECURITY_MIRROR=http://<mirror>/debian-security"
)


class MirrorError(ValueError):
    """No usable mirror, or a variable that is not a URL. The message says what to set."""


@dataclass(frozen=True)
class Origin:
    """A value and where it was found (a variable's name or a file), for messages."""

    value: str
    origin: str


@dataclass(frozen=True)
class Mirrors:
    debian: Origin
    security: Origin | None
    # The proxy apt uses for http:// and https:// mirrors, each with where it came from.
    http_proxy: Origin | None
    https_proxy: Origin | None
    no_proxy: str

    def proxy_env(self) -> dict[str, str]:
        """The proxy variables apt reads (also Docker's predefined build arguments, which
        ``docker history`` leaves out: a proxy URL may hold a password)."""
        env = {
            name: proxy.value
            for name, proxy in (("http_proxy", self.http_proxy), ("https_proxy", self.https_proxy))
            if proxy
        }
        if self.no_proxy:
            env["no_proxy"] = self.no_proxy
        return env

    def build_args(self) -> dict[str, str]:
        """Docker build arguments: the Dockerfiles write their apt sources from them."""
        return {
            "DEBIAN_MIRROR": self.debian.value,
            "DEBIAN_SECURITY_MIRROR": self.security.value if self.security else "",
            **self.proxy_env(),
        }

    def mmdebstrap_args(self, suite: str) -> list[str]:
        """mmdebstrap's mirror lines for ``suite``, with its updates and security suites
        (the proxies go in its environment: ``--aptopt`` would stay in the image)."""
        lines = [f"deb {self.debian.value} {suite} main"]
        lines.append(f"deb {self.debian.value} {suite}-updates main")
        if self.security:
            lines.append(f"deb {self.security.value} {suite}-security main")
        return lines

    def advice(self) -> str:
        """What to try when apt fails: where it fetched from, and which variables to set."""
        return (
            f"apt fetched from: {self.describe()}. If it could not reach them ('Could not "
            f"resolve', 'Failed to fetch' above), set {EXAMPLES}; if apt must go through a "
            "proxy, set APT_PROXY=http://<proxy>:<port>"
        )

    def describe(self) -> str:
        security = _shown(self.security) if self.security else "none"
        proxies = sorted({_shown(p) for p in (self.http_proxy, self.https_proxy) if p})
        return (
            f"Debian mirror {_shown(self.debian)}, security archive {security}, "
            f"apt proxy {', '.join(proxies) or 'none'}"
        )


def redact(url: str) -> str:
    """The URL without a password, for messages and logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = f"{parts.username}:***@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
    return parts._replace(netloc=netloc).geturl()


def _shown(found: Origin) -> str:
    return f"{redact(found.value)} (from {found.origin})"


def host_apt_proxies() -> dict[str, str]:
    """``Acquire::http::Proxy`` and ``Acquire::https::Proxy`` of the host's apt, if any."""
    cmd = ["apt-config", "shell", "http", "Acquire::http::Proxy", "https", "Acquire::https::Proxy"]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    except OSError:
        return {}
    found = {}
    for line in proc.stdout.splitlines():
        key, _, value = line.partition("=")
        value = " ".join(shlex.split(value))
        if value and value.upper() != "DIRECT":
            found[key] = value
    return found


# --------------------------------------------------------------------------- resolution


def _url(name: str, value: str, schemes: tuple[str, ...]) -> str:
    parts = urlsplit(value)
    if parts.scheme not in schemes or not parts.hostname or re.search(r"\s", value):
        raise MirrorError(
            f"{name}={value!r} is not a URL: expected {' or '.join(s + '://' for s in schemes)}"
            "HOST[:PORT][/PATH]"
        )
    return value.rstrip("/")


def _proxies(
    environ: Mapping[str, str], host_proxies: Callable[[], dict[str, str]]
) -> tuple[Origin | None, Origin | None]:
    if environ.get("APT_PROXY"):
        proxy = Origin(_url("APT_PROXY", environ["APT_PROXY"], PROXY_SCHEMES), "APT_PROXY")
        return proxy, proxy
    found: list[Origin | None] = []
    for scheme in ("http", "https"):
        name = next(
            (n for n in (f"{scheme}_proxy", f"{scheme.upper()}_PROXY") if environ.get(n)), ""
        )
        found.append(Origin(_url(name, environ[name], PROXY_SCHEMES), name) if name else None)
    if any(found):
        return found[0], found[1]
    host = host_proxies()
    return (
        Origin(host["http"], "the host's apt configuration") if "http" in host else None,
        Origin(host["https"], "the host's apt configuration") if "https" in host else None,
    )


def resolve(
    environ: Mapping[str, str] = os.environ,
    apt_dir: Path = APT_DIR,
    release_file: Path = OS_RELEASE,
    host_proxies: Callable[[], dict[str, str]] = host_apt_proxies,
) -> Mirrors:
    """Decide the mirrors and proxies; raise ``MirrorError`` saying what to set."""
    security: Origin | None = None
    if environ.get("DEBIAN_MIRROR"):
        debian = Origin(
            _url("DEBIAN_MIRROR", environ["DEBIAN_MIRROR"], ("http", "https")), "DEBIAN_MIRROR"
        )
    else:
        release = os_release(release_file)
        if release.get("ID") != "debian":
            raise MirrorError(
                f"this host runs {release.get('ID') or 'an unknown system'}, not Debian: its apt "
                f"sources are no Debian mirror; set {EXAMPLES}"
            )
        codename = release.get("VERSION_CODENAME", "")
        main, sec = find_archives(host_sources(apt_dir), codename)
        if main is None:
            raise MirrorError(
                f"no Debian mirror found in the host's apt sources ({apt_dir}/sources.list, "
                f"{apt_dir}/sources.list.d/*.list and *.sources: no http(s) 'deb' source of "
                f"suite {codename or 'stable'} with component main); set {EXAMPLES}"
            )
        debian = Origin(main.uri.rstrip("/"), main.origin)
        # The host's security archive goes with the host's mirror only: someone who names
        # another mirror may not reach the host's security archive either.
        security = Origin(sec.uri.rstrip("/"), sec.origin) if sec else None
    if environ.get("DEBIAN_SECURITY_MIRROR"):
        value = _url("DEBIAN_SECURITY_MIRROR", environ["DEBIAN_SECURITY_MIRROR"], ("http", "https"))
        security = Origin(value, "DEBIAN_SECURITY_MIRROR")
    http, https = _proxies(environ, host_proxies)
    return Mirrors(
        debian, security, http, https, environ.get("no_proxy") or environ.get("NO_PROXY", "")
    )


def main(argv: list[str]) -> int:
    """``python3 -m devtools.mirrors [describe|debian|apt-options|advice]`` for scripts."""
    what = argv[0] if argv else "describe"
    try:
        if what == "apt-options":
            # For the host's own apt, which reads its configuration and http_proxy itself:
            # only APT_PROXY needs passing on, and no mirror needs finding.
            if os.environ.get("APT_PROXY"):
                proxy = _url("APT_PROXY", os.environ["APT_PROXY"], PROXY_SCHEMES)
                print(f"-oAcquire::http::Proxy={proxy} -oAcquire::https::Proxy={proxy}")
            return 0
        mirrors = resolve()
    except MirrorError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if what == "describe":
        print(mirrors.describe())
    elif what == "advice":
        print(mirrors.advice())
    elif what == "debian":
        print(mirrors.debian.value)
    else:
        print(f"usage: python3 -m devtools.mirrors {USAGE}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""The host's apt sources, read as apt reads them: deb822 ``*.sources`` stanzas and
one-line ``*.list`` entries (sources.list(5)), and which of them is Debian's archive.

Standard library only, like devtools/mirrors.py, which decides with it. Not python-apt's
``aptsources``: bookworm's (2.6) skips deb822 files, where Debian now keeps its sources,
and neither it nor python-debian is there for the host set-up's plain python3.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from pathlib import Path

APT_DIR = Path("/etc/apt")
OS_RELEASE = Path("/etc/os-release")
# Suites a Debian host may name its release by instead of its codename.
SUITE_ALIASES = ("stable", "testing", "unstable", "sid")


@dataclass(frozen=True)
class Source:
    """One ``deb`` source of the host's apt: one URI and its suites."""

    uri: str
    suites: tuple[str, ...]
    components: tuple[str, ...]
    signed_by: str
    origin: str


def parse_one_line(text: str, origin: str) -> list[Source]:
    """``deb [options] URI SUITE COMPONENT...`` lines (sources.list(5), one-line style)."""
    sources = []
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        match = re.match(r"^deb\s+(?:\[([^\]]*)\]\s+)?(\S+)\s+(\S+)\s*(.*)$", line)
        if match:
            options = dict(o.split("=", 1) for o in (match[1] or "").split() if "=" in o)
            signed_by = options.get("signed-by", "")
            sources.append(
                Source(match[2], (match[3],), tuple(match[4].split()), signed_by, origin)
            )
    return sources


def parse_deb822(text: str, origin: str) -> list[Source]:
    """Stanzas of ``Types:``, ``URIs:``, ``Suites:``... (sources.list(5), deb822 style)."""
    sources = []
    for stanza in re.split(r"\n[ \t]*\n", text):
        fields: dict[str, str] = {}
        key = ""
        for line in stanza.splitlines():
            if line.startswith("#") or not line.strip():
                continue
            if line[0] in " \t" and key:  # a continuation line (an embedded key, say)
                fields[key] += " " + line.strip()
                continue
            key, _, value = line.partition(":")
            key = key.strip().lower()
            fields[key] = value.strip()
        if (
            "deb" not in fields.get("types", "").split()
            or fields.get("enabled", "").lower() == "no"
        ):
            continue
        suites = tuple(fields.get("suites", "").split())
        components = tuple(fields.get("components", "").split())
        for uri in fields.get("uris", "").split():
            sources.append(Source(uri, suites, components, fields.get("signed-by", ""), origin))
    return sources


def host_sources(apt_dir: Path = APT_DIR) -> list[Source]:
    """The host's sources in apt's own order: sources.list, then sources.list.d by name."""
    files = [apt_dir / "sources.list", *sorted((apt_dir / "sources.list.d").glob("*"))]
    sources: list[Source] = []
    for path in files:
        if path.suffix == ".list" and path.is_file():
            sources += parse_one_line(path.read_text(encoding="utf-8", errors="replace"), str(path))
        elif path.suffix == ".sources" and path.is_file():
            sources += parse_deb822(path.read_text(encoding="utf-8", errors="replace"), str(path))
    return sources


def _is_debian_archive(source: Source) -> bool:
    # Third-party repositories also use suite names like "bookworm" or "stable"; they are
    # told apart by their own keyring (Signed-By) or by having no "main" component.
    scheme = source.uri.split(":", 1)[0]
    return (
        scheme in ("http", "https")
        and "main" in source.components
        and (not source.signed_by or "debian-archive" in source.signed_by)
    )


def find_archives(sources: list[Source], codename: str) -> tuple[Source | None, Source | None]:
    """The host's Debian archive (the first source of its release's suite, else of an alias
    such as stable) and the security archive of that suite (``<suite>-security``)."""
    debian = [s for s in sources if _is_debian_archive(s)]
    for suite in (codename, *SUITE_ALIASES):
        main = next((s for s in debian if suite and suite in s.suites), None)
        if main is not None:
            security = next((s for s in debian if f"{suite}-security" in s.suites), None)
            return main, security
    return None, None


def os_release(path: Path = OS_RELEASE) -> dict[str, str]:
    values = {}
    for line in path.read_text(encoding="utf-8").splitlines() if path.is_file() else []:
        key, sep, value = line.partition("=")
        if sep:
            values[key.strip()] = " ".join(shlex.split(value))
    return values

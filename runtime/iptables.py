"""The SYN-drop rules of the ``syn-drop`` reload strategy.

Each rule carries a comment so that every rule this program ever added can be found and
removed, including rules left by a run that was killed in the middle of a reload.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
from collections.abc import Sequence

log = logging.getLogger("iptables")

COMMENT = "consul-lb-syn-drop"
TOOLS = ("iptables", "ip6tables")


class IptablesError(RuntimeError):
    pass


def _run(tool: str, args: Sequence[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([tool, "-w", *args], capture_output=True, text=True, check=False)


def _tools() -> list[str]:
    return [t for t in TOOLS if shutil.which(t)]


def check_available() -> None:
    """Fail at start-up, not at the first reload, when the rules cannot be managed."""
    if "iptables" not in _tools():
        raise IptablesError("HAPROXY_RELOAD_STRATEGY=syn-drop needs iptables in the image")
    need = (
        "HAPROXY_RELOAD_STRATEGY=syn-drop needs the NET_ADMIN capability "
        "(docker run --cap-add NET_ADMIN)"
    )
    try:
        proc = _run("iptables", ["-S", "INPUT"])
    except PermissionError as exc:
        # The image gives iptables a file capability; without NET_ADMIN in the
        # container's bounding set the kernel refuses to run it at all.
        raise IptablesError(f"{need}: cannot run iptables ({exc.strerror})") from None
    if proc.returncode != 0:
        said = (proc.stderr.strip().splitlines() or ["nothing"])[-1]
        raise IptablesError(f"{need}; iptables said: {said}")


def _rule(port: int) -> list[str]:
    return [
        "-p",
        "tcp",
        "--dport",
        str(port),
        "--syn",
        "-m",
        "comment",
        "--comment",
        COMMENT,
        "-j",
        "DROP",
    ]


def drop_syn(ports: Sequence[int]) -> None:
    for tool in _tools():
        for port in sorted(set(ports)):
            proc = _run(tool, ["-I", "INPUT", *_rule(port)])
            if proc.returncode != 0 and tool == "iptables":
                raise IptablesError(f"iptables -I failed: {proc.stderr.strip()}")


def rules(tool: str = "iptables") -> list[str]:
    """Our rules as ``iptables -S`` prints them."""
    proc = _run(tool, ["-S", "INPUT"])
    return [line for line in proc.stdout.splitlines() if COMMENT in line]


def remove_all() -> int:
    """Delete every rule of ours, in a loop until none is left; returns how many."""
    removed = 0
    for tool in _tools():
        for _ in range(1000):  # bounded: each pass removes at least one rule
            found = rules(tool)
            if not found:
                break
            for line in found:
                # "-A INPUT <spec>" -> "-D INPUT <spec>"
                spec = line.split()[2:]
                spec = [a.strip('"') for a in spec]
                if _run(tool, ["-D", "INPUT", *spec]).returncode == 0:
                    removed += 1
    return removed

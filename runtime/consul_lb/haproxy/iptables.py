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


def _restore(tool: str, lines: Sequence[str]) -> subprocess.CompletedProcess[str]:
    """Apply rule changes in one call (and one netfilter transaction) per tool: every
    process spawned here lengthens the time SYNs are dropped."""
    script = "*filter\n" + "".join(f"{line}\n" for line in lines) + "COMMIT\n"
    return subprocess.run(
        [f"{tool}-restore", "-w", "--noflush"],
        input=script,
        capture_output=True,
        text=True,
        check=False,
    )


def drop_syn(ports: Sequence[int]) -> None:
    for tool in _tools():
        lines = [" ".join(["-I", "INPUT", *_rule(port)]) for port in sorted(set(ports))]
        proc = _restore(tool, lines)
        # IPv6 may be unavailable in the container; IPv4 must work.
        if proc.returncode != 0 and tool == "iptables":
            raise IptablesError(f"iptables-restore failed: {proc.stderr.strip()}")


def rules(tool: str = "iptables") -> list[str]:
    """Our rules as ``iptables -S`` prints them."""
    proc = _run(tool, ["-S", "INPUT"])
    return [line for line in proc.stdout.splitlines() if COMMENT in line]


def remove_all() -> int:
    """Delete every rule of ours, and look again until none is left; returns how many."""
    removed = 0
    for tool in _tools():
        for _ in range(10):  # bounded; one pass removes them all unless another writer races
            found = rules(tool)
            if not found:
                break
            # "-A INPUT <spec>" -> "-D INPUT <spec>"
            deletions = ["-D " + line.split(None, 1)[1] for line in found]
            if _restore(tool, deletions).returncode == 0:
                removed += len(found)
                continue
            # One of them went away meanwhile: delete one by one.
            for line in found:
                spec = [a.strip('"') for a in line.split()[2:]]
                if _run(tool, ["-D", "INPUT", *spec]).returncode == 0:
                    removed += 1
    return removed

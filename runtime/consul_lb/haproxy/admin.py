"""HAProxy's CLI sockets: the admin socket (runtime API) and the master CLI."""

from __future__ import annotations

import socket


def socket_command(path: str, command: str, timeout: float = 30.0) -> str:
    """Send one command to an HAProxy CLI socket and return the whole answer. Raises
    OSError (no socket, refused, timeout)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(path)
        sock.sendall(command.encode() + b"\n")
        chunks: list[bytes] = []
        while True:
            data = sock.recv(65536)
            if not data:
                break
            chunks.append(data)
    return b"".join(chunks).decode(errors="replace")

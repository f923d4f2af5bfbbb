"""Certificates changed in a running HAProxy through its runtime API (the admin socket),
as HAProxy's management guide describes for "ssl cert" and "ssl crt-list":

- added: ``new ssl cert <file>``, ``set ssl cert <file> <<`` + the bundle, ``commit ssl
  cert <file>``, then ``add ssl crt-list <list> <file>`` (no SNI filter: HAProxy takes the
  names from the certificate);
- replaced: ``set ssl cert`` + ``commit ssl cert``: handshakes after the commit get the
  new certificate, open connections keep theirs;
- removed: ``del ssl crt-list <list> <file>``, then ``del ssl cert <file>``.

A transaction that fails is aborted (``abort ssl cert``) so that the next one starts
clean. Errors quote the command's first line only: the payload holds the private key.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

# How HAProxy (2.6 to 3.0) says each step worked; anything else is its error message.
NEW_OK = "New empty certificate store"
SET_OK = ("Transaction created", "Transaction updated")
DONE = "Success!"


class CertCommandError(RuntimeError):
    """HAProxy refused a step; the message is HAProxy's own answer (no key material)."""


class CertCommands:
    def __init__(self, admin: Callable[[str], str]) -> None:
        self.admin = admin
        self.commands = 0

    def _run(self, command: str, ok: Callable[[str], bool]) -> None:
        answer = self.admin(command).strip()
        self.commands += 1
        if not ok(answer):
            words = " ".join(answer.split()) or "no answer"
            raise CertCommandError(f"{command.splitlines()[0]!r}: {words}")

    def _load(self, path: str, pem: bytes) -> None:
        """Upload and commit ``pem`` into the store entry ``path``; abort on failure."""
        try:
            # The payload ends at the first empty line; a PEM has none.
            self._run(
                f"set ssl cert {path} <<\n{pem.decode().strip()}\n",
                lambda a: a.startswith(SET_OK),
            )
            self._run(f"commit ssl cert {path}", lambda a: DONE in a)
        except CertCommandError:
            with contextlib.suppress(OSError):
                self.admin(f"abort ssl cert {path}")
            raise

    def add(self, crt_list: str, path: str, pem: bytes) -> None:
        self._run(f"new ssl cert {path}", lambda a: a.startswith(NEW_OK))
        try:
            self._load(path, pem)
            self._run(f"add ssl crt-list {crt_list} {path}", lambda a: DONE in a)
        except CertCommandError:
            # Not in use by any frontend: the empty store entry can go.
            self.admin(f"del ssl cert {path}")
            raise

    def replace(self, path: str, pem: bytes) -> None:
        self._load(path, pem)

    def remove(self, crt_list: str, path: str) -> None:
        self._run(
            f"del ssl crt-list {crt_list} {path}",
            lambda a: a.startswith("Entry") and "deleted" in a,
        )
        self._run(f"del ssl cert {path}", lambda a: "deleted" in a and "Can't" not in a)

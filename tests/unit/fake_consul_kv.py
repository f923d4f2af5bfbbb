"""FakeConsul with what ACME's fleet coordination uses: KV writes (``cas``, ``acquire``,
``release``), deletes, sessions with a TTL, and transactions (``/v1/txn`` with
``check-session`` and ``set``), as Consul's KV, session and txn API pages describe them.

Differences from Consul, on purpose: a session's TTL may be below Consul's 10 s minimum
and it ends exactly at its TTL (Consul allows up to twice that), so that tests can let a
holder "die" quickly; lock delays are kept as given.
"""

from __future__ import annotations

import base64
import json
import re
import time
import uuid
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

from tests.unit.fake_consul import FakeConsul


@dataclass
class FakeSession:
    id: str
    ttl: float
    expires: float
    behavior: str
    lock_delay: float


def _seconds(raw: str) -> float:
    m = re.fullmatch(r"([0-9.]+)(ms|s|m)?", raw or "0s")
    if not m:
        raise ValueError(raw)
    unit = {"ms": 0.001, "s": 1.0, "m": 60.0, None: 1.0}[m.group(2)]
    return float(m.group(1)) * unit


class FakeConsulKV(FakeConsul):
    def __init__(self) -> None:
        super().__init__()
        self.sessions: dict[str, FakeSession] = {}
        self.delays: dict[str, float] = {}  # key -> no acquire before (monotonic)
        self.txns = 0

    # -- tests drive these ------------------------------------------------------------
    def value(self, key: str) -> bytes | None:
        with self.lock:
            found = self.kv.get(key)
            return None if found is None else found[0]

    def holder(self, key: str) -> str | None:
        with self.lock:
            return self.kv_sessions.get(key)

    def expire(self, session: str) -> None:
        """End a session now, as its TTL running out does."""
        with self.lock:
            self._invalidate(session)

    # -- Consul's semantics -------------------------------------------------------------
    def _set(self, key: str, value: bytes) -> None:
        self.kv_index = self._bump()
        self.kv[key] = (value, self.kv_index)

    def _invalidate(self, session_id: str) -> None:
        session = self.sessions.pop(session_id, None)
        if session is None:
            return
        for key, holder in list(self.kv_sessions.items()):
            if holder != session_id:
                continue
            del self.kv_sessions[key]
            self.delays[key] = time.monotonic() + session.lock_delay
            if session.behavior == "delete":
                self.kv.pop(key, None)
            self.kv_index = self._bump()

    def _expire_sessions(self) -> None:
        now = time.monotonic()
        for s in [s for s in self.sessions.values() if s.expires <= now]:
            self._invalidate(s.id)

    def answer(self, path: str, query: dict[str, str]) -> tuple[int, Any, int]:
        with self.lock:
            self._expire_sessions()
        return super().answer(path, query)

    def change(self, method: str, path: str, query: dict[str, str], body: bytes) -> tuple[int, Any]:
        with self.lock:
            self._expire_sessions()
            if path == "/v1/session/create":
                spec = json.loads(body or b"{}")
                ttl = _seconds(spec.get("TTL", "0s"))
                session = FakeSession(
                    str(uuid.uuid4()),
                    ttl,
                    time.monotonic() + (ttl or 1e9),
                    spec.get("Behavior", "release"),
                    _seconds(spec.get("LockDelay", "15s")),
                )
                self.sessions[session.id] = session
                return 200, {"ID": session.id}
            m = re.fullmatch(r"/v1/session/(renew|destroy)/(.+)", path)
            if m:
                found = self.sessions.get(m.group(2))
                if m.group(1) == "destroy":
                    self._invalidate(m.group(2))
                    return 200, True
                if found is None:
                    return 404, f"Session id '{m.group(2)}' not found"
                found.expires = time.monotonic() + found.ttl
                return 200, [{"ID": found.id}]
            if path == "/v1/txn":
                return self._txn(json.loads(body))
            m = re.fullmatch(r"/v1/kv/(.+)", path)
            if m and method == "DELETE":
                key = unquote(m.group(1))
                self.kv.pop(key, None)
                self.kv_sessions.pop(key, None)
                self.kv_index = self._bump()
                return 200, True
            if m:
                return 200, self._put(unquote(m.group(1)), query, body)
        return 404, None

    def _put(self, key: str, query: dict[str, str], body: bytes) -> bool:
        if "cas" in query:
            current = self.kv.get(key)
            if (current[1] if current else 0) != int(query["cas"]):
                return False
        if "acquire" in query:
            session = query["acquire"]
            if session not in self.sessions:
                return False
            holder = self.kv_sessions.get(key)
            if holder not in (None, session) or self.delays.get(key, 0) > time.monotonic():
                return False
            self.kv_sessions[key] = session
        elif "release" in query:
            if self.kv_sessions.get(key) != query["release"]:
                return False
            del self.kv_sessions[key]
        self._set(key, body)
        return True

    def _txn(self, ops: list[dict[str, Any]]) -> tuple[int, Any]:
        self.txns += 1
        for i, op in enumerate(ops):
            kv = op["KV"]
            if kv["Verb"] == "check-session" and self.kv_sessions.get(kv["Key"]) != kv["Session"]:
                return 409, {"Errors": [{"OpIndex": i, "What": "failed session check"}]}
        for op in ops:
            kv = op["KV"]
            if kv["Verb"] == "set":
                self._set(kv["Key"], base64.b64decode(kv["Value"]))
        return 200, {"Results": [], "Errors": None}

"""One ACME order, with certbot's ``acme`` library (RFC 8555): account, order, HTTP-01
challenges published in Consul KV, finalization, the certificate chain.

- The account key (RSA 2048, RS256) is made once for the whole fleet and kept in KV
  (``account.json``, written with ``cas=0``); registering it again is how a load
  balancer finds the account's URL (the server answers "exists" with its Location).
- Each certificate gets a new ECDSA P-256 key, which never leaves the process but in
  the bundle stored under ``HAPROXY_TLS_CERT_KV``.
- Every failure becomes an ``OrderError`` whose message says what happened in one line
  (no URL objects, no key material); rate limits (``rateLimited``, HTTP 429) and
  unavailability (HTTP 503) carry the server's Retry-After.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Sequence
from typing import Any

import requests
from acme import challenges, client, crypto_util, errors, messages
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from josepy.errors import DeserializationError
from josepy.jwk import JWK, JWKRSA

from consul_lb import __version__
from consul_lb.acme.settings import AcmeSettings
from consul_lb.acme.store import Store
from consul_lb.consul.client import ConsulError, describe

log = logging.getLogger("acme")

ORDER_TIMEOUT = 120.0  # seconds for the validation and finalization of one order
NETWORK_TIMEOUT = 30  # seconds for one request to the ACME server


class OrderError(Exception):
    """An order that did not end with a certificate. ``kind``: "failed" (the server
    refused or validation failed), "unreachable", or "rate_limited"; ``retry_after``:
    seconds the server asked to wait, if it did."""

    def __init__(self, message: str, kind: str = "failed", retry_after: float | None = None):
        super().__init__(message)
        self.kind = kind
        self.retry_after = retry_after


class AcmeIssuer:
    """Orders certificates from ``HAPROXY_ACME_DIRECTORY``; used by the worker's thread
    only."""

    def __init__(self, acme: AcmeSettings, store: Store, timeout: float = ORDER_TIMEOUT):
        assert acme.directory is not None
        self.acme = acme
        self.directory = acme.directory
        self.store = store
        self.timeout = timeout
        self.retry_after: float | None = None  # of the last 429 or 503 answer

    def issue(self, hosts: Sequence[str]) -> bytes:
        """A PEM bundle (certificate, chain, private key) for ``hosts``."""
        self.retry_after = None
        try:
            return self._issue(hosts)
        except OrderError:
            raise
        except messages.Error as exc:
            kind = "rate_limited" if exc.code == "rateLimited" else "failed"
            raise OrderError(_one_line(str(exc)), kind, self.retry_after) from None
        except errors.ValidationError as exc:
            raise OrderError(f"validation failed: {_validation(exc)}") from None
        except errors.TimeoutError:
            raise OrderError(
                f"the ACME server did not finish the order within {self.timeout:.0f}s"
            ) from None
        except requests.RequestException as exc:
            raise OrderError(
                f"ACME server {self.directory} unreachable: {describe(exc)}", "unreachable"
            ) from None
        except errors.ClientError as exc:
            raise OrderError(
                f"unexpected answer from the ACME server: {_response(exc)}",
                "failed",
                self.retry_after,
            ) from None
        except errors.Error as exc:
            raise OrderError(_one_line(str(exc)) or type(exc).__name__) from None

    def _issue(self, hosts: Sequence[str]) -> bytes:
        acme = self._client()
        key = ec.generate_private_key(ec.SECP256R1())
        key_pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        order = acme.new_order(crypto_util.make_csr(key_pem, list(hosts)))
        answers: list[tuple[messages.ChallengeBody, challenges.ChallengeResponse]] = []
        published: list[str] = []
        try:
            for authz in order.authorizations:
                if authz.body.status == messages.STATUS_VALID:
                    continue  # validated recently for this account: nothing to prove
                challb = next(
                    (c for c in authz.body.challenges if isinstance(c.chall, challenges.HTTP01)),
                    None,
                )
                if challb is None:
                    raise OrderError(
                        f"the ACME server offers no http-01 challenge for "
                        f"{authz.body.identifier.value}"
                    )
                response, validation = challb.response_and_validation(acme.net.key)
                token = challb.chall.encode("token")
                self.store.put(self.store.challenge_key(token), validation.encode())
                published.append(token)
                answers.append((challb, response))
            # Every load balancer answers from KV (consul_lb/acme/challenges.py), so the
            # server may ask any of them.
            for challb, response in answers:
                acme.answer_challenge(challb, response)
            deadline = dt.datetime.now() + dt.timedelta(seconds=self.timeout)
            order = acme.poll_and_finalize(order, deadline)
        finally:
            for token in published:
                try:
                    self.store.delete(self.store.challenge_key(token))
                except ConsulError as err:  # a leftover token proves nothing to anyone
                    log.warning("challenge token not removed from Consul KV: %s", err)
        return order.fullchain_pem.encode() + key_pem

    def _client(self) -> client.ClientV2:
        net = client.ClientNetwork(
            self._account_key(), user_agent=f"consul-lb/{__version__}", timeout=NETWORK_TIMEOUT
        )
        if self.acme.ca_file is not None:
            # requests takes a CA bundle's path where ClientNetwork passes verify_ssl.
            net.verify_ssl = str(self.acme.ca_file)  # type: ignore[assignment]
        net.session.hooks["response"].append(self._note_retry_after)
        directory = client.ClientV2.get_directory(self.directory, net)
        acme = client.ClientV2(directory, net)
        registration = messages.NewRegistration.from_data(
            email=self.acme.email, terms_of_service_agreed=True
        )
        try:
            acme.new_account(registration)
        except errors.ConflictError as exc:
            # The key has an account already: the server says where (RFC 8555 7.3.1).
            net.account = messages.RegistrationResource(
                uri=exc.location, body=messages.Registration()
            )
        return acme

    def _account_key(self) -> JWK:
        """The fleet's account key from KV; made and written once when there is none."""
        key = self.store.account_key
        raw, _ = self.store.get(key, consistent=True)
        if raw is None:
            made = JWKRSA(key=rsa.generate_private_key(public_exponent=65537, key_size=2048))
            if self.store.create_once(key, made.json_dumps().encode()):
                return made
            raw, _ = self.store.get(key, consistent=True)  # another one wrote it first
        try:
            return JWK.json_loads(raw or b"")
        except (DeserializationError, ValueError):
            raise OrderError(
                f"the account key in Consul KV ({key}) cannot be read; delete it to make a new one"
            ) from None

    def _note_retry_after(self, response: requests.Response, *args: Any, **kwargs: Any) -> None:
        if response.status_code in (429, 503) and "Retry-After" in response.headers:
            when = client.ClientV2.retry_after(response, 0)
            self.retry_after = max(0.0, (when - dt.datetime.now()).total_seconds())


def _one_line(text: str) -> str:
    return " ".join(text.split())[:300]


def _validation(exc: errors.ValidationError) -> str:
    found = []
    for authzr in exc.failed_authzrs:
        for chall in authzr.body.challenges:
            if chall.error is not None:
                found.append(f"{authzr.body.identifier.value}: {chall.error.detail or chall.error}")
    return _one_line("; ".join(found)) or "no detail from the ACME server"


def _response(exc: errors.ClientError) -> str:
    what = exc.args[0] if exc.args else exc
    if isinstance(what, tuple):
        what = what[0]
    if isinstance(what, requests.Response):
        return f"HTTP {what.status_code} {what.reason}"
    return _one_line(str(what))

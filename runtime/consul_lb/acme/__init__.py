"""Certificates from an ACME server (Let's Encrypt), obtained and renewed by a fleet of
load balancers that coordinate through Consul: a session lock per certificate, the
HTTP-01 challenges published in KV, the certificates stored under the TLS KV prefix
(see docs/acme.md)."""

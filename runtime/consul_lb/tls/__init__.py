"""TLS at the edge: certificates from a directory and from Consul KV, checked with the
``cryptography`` library, served by an HTTPS frontend and rotated through HAProxy's
runtime API (see docs/tls.md)."""

"""Fixtures shared by the fast tier."""

from tests.unit.local_haproxy import stack

__all__ = ["stack"]

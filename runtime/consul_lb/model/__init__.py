"""The pure middle of the pipeline: catalog + settings -> the load balancer to render.

No I/O here: ``types`` holds the values, ``tags`` reads ``HAPROXY.*`` tags, ``build``
decides what is published and what is skipped.
"""

from consul_lb.model.build import Candidates, build, server_name, valid_address, wants, watched
from consul_lb.model.types import Backend, LoadBalancer, Server, Skipped

__all__ = [
    "Backend",
    "Candidates",
    "LoadBalancer",
    "Server",
    "Skipped",
    "build",
    "server_name",
    "valid_address",
    "wants",
    "watched",
]

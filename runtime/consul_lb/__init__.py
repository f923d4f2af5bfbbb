"""consul-lb: render configuration from Consul's catalog and apply it (HAProxy mode)."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("consul-lb")
except PackageNotFoundError:  # running from a checkout that is not installed
    __version__ = "0+unknown"

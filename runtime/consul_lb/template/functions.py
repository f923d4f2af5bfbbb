"""The functions a template calls: ``services()``, ``service()``, ``key()``,
``key_or_default()``, ``env()``; they record what the template asked for (its
dependencies: consul-template's discovery by rendering)."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import Any

from consul_lb.consul.catalog import Catalog, Instance, Service
from consul_lb.consul.kv import normalise_key


class TemplateData:
    """The functions a template calls, over one catalog snapshot and the KV values read
    so far; it records what the template asked for (its dependencies)."""

    def __init__(
        self,
        catalog: Catalog,
        kv: Mapping[str, str | None],
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.catalog = catalog
        self.kv = kv
        self.env = os.environ if env is None else env
        self.keys: set[str] = set()  # every key asked for
        self.missing: set[str] = set()  # asked for but not read from Consul yet
        self.absent: set[str] = set()  # key() of a key that does not exist

    def services(self) -> list[Service]:
        # The catalog holds every instance with its health; templates see the passing
        # ones only, as consul-template's service() does (and HAProxy mode serves).
        return [Service(s.name, s.tags, s.passing) for s in self.catalog.services]

    def service(self, name: str, tag: str | None = None) -> list[Instance]:
        found = self.catalog.get(name)
        instances = found.passing if found else ()
        return [i for i in instances if tag is None or tag in i.tags]

    def _lookup(self, path: str) -> str | None:
        key = normalise_key(str(path))
        if not key:
            if self.missing:
                # Built from a placeholder ("" for a key not read yet): this render is
                # thrown away anyway, and "" is no key to watch.
                return None
            raise ValueError("empty KV key path")
        self.keys.add(key)
        if key not in self.kv:
            self.missing.add(key)
            return None
        return self.kv[key]

    def key(self, path: str) -> str:
        value = self._lookup(path)
        if value is None:
            # consul-template's key() waits for the key to exist; key_or_default does not.
            # An empty path here was built from a placeholder: no key to wait for.
            key = normalise_key(str(path))
            if key and key not in self.missing:
                self.absent.add(key)
            return ""
        return value

    def key_or_default(self, path: str, default: str = "") -> str:
        value = self._lookup(path)
        return default if value is None else value

    def env_var(self, name: str, default: str = "") -> str:
        return self.env.get(name, default)

    def functions(self) -> dict[str, Callable[..., Any]]:
        return {
            "services": self.services,
            "service": self.service,
            "key": self.key,
            "key_or_default": self.key_or_default,
            "env": self.env_var,
        }

"""Command line of the runtime: ``consul-lb haproxy`` runs the load balancer."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

from consul_lb import __version__, logs, model
from consul_lb import template as template_mode
from consul_lb.consul.config import ConsulConfig, ConsulConfigError
from consul_lb.haproxy.files import Paths
from consul_lb.haproxy.limits import fit
from consul_lb.manager import applier as haproxy_mode
from consul_lb.settings import SettingsError, from_env

ENV_HELP = """\
environment:
  HAPROXY_DOM                 domain services are published under (required):
                              service <svc> answers at http://<svc>.<HAPROXY_DOM>
  HAPROXY_*                   limits and timeouts, see the README
  CONSUL_HTTP_ADDR            Consul address, host:port or scheme://host:port
                              (CONSUL_SERVER is accepted as an alias)
  CONSUL_HTTP_TOKEN[_FILE], CONSUL_HTTP_SSL, CONSUL_HTTP_SSL_VERIFY,
  CONSUL_CACERT, CONSUL_CLIENT_CERT, CONSUL_CLIENT_KEY   as for the consul CLI
  CONSUL_LB_LOG_FORMAT        text (default) or json
  CONSUL_LB_LOG_LEVEL         debug, info (default), warning, error
"""


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="consul-lb",
        description="Render configuration from Consul's catalog and apply it.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=ENV_HELP,
    )
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    hp = sub.add_parser(
        "haproxy",
        help="run HAProxy for the services tagged HAPROXY.ENABLE=true",
        description=(
            "Watch Consul, render haproxy.cfg for the services tagged HAPROXY.ENABLE=true, "
            "check it with haproxy -c and apply it without dropping connections."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=ENV_HELP,
    )
    template_mode.add_parser(sub)
    hp.add_argument(
        "--dry-run",
        action="store_true",
        help="render the configuration for the current catalog to stdout and exit",
    )
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    env = os.environ
    logs.setup(env.get("CONSUL_LB_LOG_LEVEL", "info"), env.get("CONSUL_LB_LOG_FORMAT", "text"))
    log = logging.getLogger("main")
    try:
        # Template mode needs no HAPROXY_* settings.
        settings = None if args.command == "template" else from_env(env)
        consul = ConsulConfig.from_env(env)
    except (SettingsError, ConsulConfigError) as exc:
        print(f"consul-lb: {exc}", file=sys.stderr)
        return 2
    if settings is None:
        log.info("consul-lb %s starting in template mode", __version__)
        return template_mode.run(args, consul)
    if args.command == "haproxy" and args.dry_run:
        from consul_lb.consul.watch import read_once

        catalog = read_once(consul, model.wants)
        limits = fit(settings.maxconn_global, settings.maxconn)
        files, lb, problems = haproxy_mode.render_catalog(
            catalog, settings, limits, Paths(settings.state_dir)
        )
        for s in lb.skipped:
            print(f"# skipped {s.service!r}: {s.reason}", file=sys.stderr)
        for line in problems:
            print(f"# left out {line}", file=sys.stderr)
        sys.stdout.write(files.config)
        sys.stdout.write("\n# ---- hosts.map ----\n")
        sys.stdout.write("".join(f"# {line}\n" for line in files.hosts_map.splitlines()))
        return 0
    log.info("consul-lb %s starting in HAProxy mode", __version__)
    return haproxy_mode.run(settings, consul)


if __name__ == "__main__":
    sys.exit(main())

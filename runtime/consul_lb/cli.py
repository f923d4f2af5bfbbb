"""Command line of the runtime: ``consul-lb haproxy`` runs the load balancer,
``consul-lb template`` renders templates (consul-template style)."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Mapping, Sequence

from consul_lb import __version__, logs
from consul_lb.consul.client import ConsulClient, ConsulError
from consul_lb.consul.config import ConsulConfig, ConsulConfigError
from consul_lb.haproxy.files import read_installed
from consul_lb.manager import runner
from consul_lb.settings import Common, Settings, SettingsError, common_from_env, from_env
from consul_lb.template import args as template_args
from consul_lb.template import runner as template_runner

ENV_HELP = """\
environment (all of them, with defaults and units: the README's tables):
  HAPROXY_DOM                 domain services are published under (required):
                              service <svc> answers at http://<svc>.<HAPROXY_DOM>
  HAPROXY_*                   ports, limits, timeouts, reload strategy
  CONSUL_HTTP_ADDR            Consul address, host:port or scheme://host:port
                              (CONSUL_SERVER is accepted as an alias)
  CONSUL_HTTP_TOKEN[_FILE], CONSUL_HTTP_SSL, CONSUL_HTTP_SSL_VERIFY,
  CONSUL_CACERT, CONSUL_CLIENT_CERT, CONSUL_CLIENT_KEY   as for the consul CLI
  CONSUL_LB_MAX_CONNS         connections to Consul at most (default 64)
  CONSUL_LB_MAX_STALE         how stale a read may be, e.g. 2s (default); 0: leader only
  CONSUL_LB_LOG_FORMAT        text (default) or json
  CONSUL_LB_LOG_LEVEL         debug, info (default), warning, error
exit codes: 0 stopped, 1 failed, 2 invalid configuration (the message names the variable)
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
    hp.add_argument(
        "--dry-run",
        action="store_true",
        help="print the configuration the current catalog gives (exactly what the load "
        "balancer would run) and exit",
    )
    template_args.add_parser(sub)
    return p


def read_config(
    env: Mapping[str, str], haproxy_mode: bool
) -> tuple[Common, Settings | None, ConsulConfig]:
    """Every variable, every problem reported at once (SettingsError)."""
    problems: list[str] = []
    common = Common()
    settings: Settings | None = None
    consul: ConsulConfig | None = None
    try:
        if haproxy_mode:
            settings = from_env(env)
            common = settings.common
        else:
            common = common_from_env(env)
    except SettingsError as exc:
        problems += exc.problems
    try:
        consul = ConsulConfig.from_env(env)
    except ConsulConfigError as exc:
        problems += exc.problems
    if problems or consul is None:
        raise SettingsError(problems)
    return common, settings, consul


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    env = os.environ
    haproxy_mode = args.command == "haproxy"
    try:
        common, settings, consul = read_config(env, haproxy_mode)
    except SettingsError as exc:
        print(f"consul-lb: {exc}", file=sys.stderr)
        return 2
    logs.setup(common.log_level, common.log_format)
    log = logging.getLogger("main")
    if settings is None:
        log.info("consul-lb %s starting in template mode", __version__)
        client = ConsulClient(consul, common.max_conns, common.max_stale)
        return template_runner.run(args, client)
    if args.dry_run:
        return dry_run(settings, consul)
    log.info("consul-lb %s starting in HAProxy mode", __version__)
    return runner.run(settings, consul)


def dry_run(settings: Settings, consul: ConsulConfig) -> int:
    """The same pipeline as the running load balancer: one read of Consul, the model,
    limits, port probe, render, haproxy -c with the same isolation."""
    r = runner.Runner(settings, consul)
    # Next to a running load balancer, its own tcp ports are not "taken by another program".
    r.applier.current = read_installed(r.paths)
    try:
        catalog = r.watcher.read_once()
    except (ConsulError, TimeoutError) as exc:
        print(
            f"consul-lb: cannot read Consul at {consul.address}: {exc}; check "
            "CONSUL_HTTP_ADDR (and CONSUL_HTTP_TOKEN, CONSUL_HTTP_SSL, CONSUL_CACERT)",
            file=sys.stderr,
        )
        return 1
    finally:
        r.watcher.stop()
    plan = r.applier.checked(r.applier.plan(catalog))
    if plan is None:
        print("consul-lb: haproxy -c rejects the configuration (see above)", file=sys.stderr)
        return 1
    for s in plan.lb.skipped:
        print(f"# skipped {s.service!r}: {s.reason}", file=sys.stderr)
    for line in plan.problems:
        print(f"# left out {line}", file=sys.stderr)
    config = plan.files.config
    for secret in settings.secrets():
        config = config.replace(secret, "<redacted>")
    sys.stdout.write(config)
    for name, text in plan.files.maps.items():
        if text:
            sys.stdout.write(f"\n# ---- {name} ----\n")
            sys.stdout.write("".join(f"# {line}\n" for line in text.splitlines()))
    return 0


if __name__ == "__main__":
    sys.exit(main())

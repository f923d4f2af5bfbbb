#!/usr/bin/env bash
# Makes this Debian machine ready to build and test the project:
#  - Debian packages: Docker engine (docker.io), mmdebstrap (base image without a
#    registry), Compose v2 (trixie's Go docker-compose, pinned: bookworm only has 1.29),
#    Debian's docker-registry (push tests), haproxy (the fast tests run a real one),
#    python3-venv, curl, nghttp2-client (h2load, for `invoke bench tls`), pebble (the
#    ACME test server: the fast tests order certificates from it).
#  - a running Docker engine (an existing one is used as it is);
#  - the project's virtualenv in .venv with the project and its dev extra installed.
# Idempotent and quiet when there is nothing to do. Each step is one progress line; its
# output goes to the log file (build/logs/), shown when it fails (devtools/progress.py).
# Packages come from the mirror devtools/mirrors.py decides (the host's own, unless
# DEBIAN_MIRROR says otherwise); APT_PROXY is passed to apt.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '[setup] %s\n' "$*" >&2; }
# step TITLE HINT COMMAND...: run COMMAND as one step of devtools/progress.py.
step() { python3 -m devtools.progress --title "$1" --hint "$2" -- "${@:3}"; }

if [ "$(id -u)" != 0 ]; then
  log "needs root (installs Debian packages and starts dockerd)"; exit 1
fi

export DEBIAN_FRONTEND=noninteractive
apt_hint=$(python3 -m devtools.mirrors advice 2>&1 || true)
APT_OPTIONS=$(python3 -m devtools.mirrors apt-options)
export APT_OPTIONS
apt_updated=""
# Run by a step (in a child bash, hence exported): update once, then install.
apt_install() {
  # shellcheck disable=SC2086 # one word per option, none with spaces
  if [ -z "${APT_UPDATED:-}" ]; then apt-get $APT_OPTIONS update; fi
  # shellcheck disable=SC2086
  apt-get $APT_OPTIONS install -y --no-install-recommends "$@"
}
export -f apt_install

# Trixie's Compose v2 (a static Go binary) runs on bookworm; pin trixie low so that only
# packages asked for by name come from it. The source follows the mirror in use.
codename=$(. /etc/os-release && echo "${VERSION_CODENAME:-}")
trixie_list=/etc/apt/sources.list.d/trixie-compose.list
if [ "$codename" = bookworm ]; then
  mirror=$(python3 -m devtools.mirrors debian)
  if [ "$(cat "$trixie_list" 2>/dev/null)" != "deb $mirror trixie main" ]; then
    log "pinned trixie apt source for docker-compose v2: $mirror"
    echo "deb $mirror trixie main" > "$trixie_list"
    printf 'Package: *\nPin: release n=trixie\nPin-Priority: 100\n' > /etc/apt/preferences.d/trixie-compose
  fi
fi

missing=()
command -v dockerd >/dev/null || missing+=(docker.io)
command -v mmdebstrap >/dev/null || missing+=(mmdebstrap)
command -v docker-registry >/dev/null || missing+=(docker-registry)
command -v curl >/dev/null || missing+=(curl)
command -v iptables >/dev/null || missing+=(iptables)
# The fast tests run a real HAProxy (the runtime API, server state, reloads).
command -v haproxy >/dev/null || missing+=(haproxy)
# HTTP/1.1 and HTTP/2 load over TLS for `invoke bench tls`.
command -v h2load >/dev/null || missing+=(nghttp2-client)
# Let's Encrypt's ACME test server and its mock DNS: the fast tests of ACME order from it.
command -v pebble >/dev/null || missing+=(pebble)
python3 -c 'import ensurepip, venv' 2>/dev/null || missing+=(python3-venv)
if [ ${#missing[@]} -gt 0 ]; then
  # No init system here: keep package scripts from trying to start services.
  trap 'rm -f /usr/sbin/policy-rc.d' EXIT
  printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d; chmod +x /usr/sbin/policy-rc.d
  APT_UPDATED=$apt_updated step "installing host packages: ${missing[*]}" "$apt_hint" \
    bash -c 'apt_install "$@"' apt_install "${missing[@]}"
  rm -f /usr/sbin/policy-rc.d
  apt_updated=1
fi
if ! docker compose version >/dev/null 2>&1; then
  APT_UPDATED=$apt_updated step "installing Compose v2 (docker-compose from trixie)" "$apt_hint" \
    bash -c 'apt_install -t trixie docker-compose'
fi

start_dockerd() {
  echo "dockerd's own log: /var/log/dockerd.log"
  setsid dockerd >/var/log/dockerd.log 2>&1 < /dev/null &
  for _ in $(seq 1 60); do
    docker info >/dev/null 2>&1 && return 0
    sleep 1
  done
  tail -n 20 /var/log/dockerd.log
  return 1
}
export -f start_dockerd
if ! docker info >/dev/null 2>&1; then
  step "starting the Docker engine" "read /var/log/dockerd.log; a dockerd already running \
but not answering may need stopping first" bash -c start_dockerd
fi

# Reinstall the project into the venv only when its metadata changed.
stamp=.venv/.installed-pyproject
if [ ! -x .venv/bin/python ]; then
  step "creating the virtualenv .venv" "check that python3-venv is installed" python3 -m venv .venv
fi
if [ ! -f "$stamp" ] || ! cmp -s pyproject.toml "$stamp"; then
  step "installing the project and its dev extra into .venv" \
    "pip uses its own configuration: set PIP_INDEX_URL (or see pip config list) if it cannot \
reach its package index" \
    .venv/bin/pip install --disable-pip-version-check --progress-bar off -e '.[dev]'
  cp pyproject.toml "$stamp"
fi

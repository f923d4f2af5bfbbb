#!/usr/bin/env bash
# Makes this Debian machine ready to build and test the project:
#  - Debian packages: Docker engine (docker.io), mmdebstrap (base image without a
#    registry), Compose v2 (trixie's Go docker-compose, pinned: bookworm only has 1.29),
#    Debian's docker-registry (push tests), python3-venv, curl.
#  - a running Docker engine (an existing one is used as it is);
#  - the project's virtualenv in .venv with the project and its dev extra installed.
# Idempotent and quiet when there is nothing to do.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '[setup] %s\n' "$*" >&2; }

if [ "$(id -u)" != 0 ]; then
  log "needs root (installs Debian packages and starts dockerd)"; exit 1
fi

export DEBIAN_FRONTEND=noninteractive
apt_updated=""
apt_install() {
  if [ -z "$apt_updated" ]; then apt-get update -qq; apt_updated=1; fi
  apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

# Trixie's Compose v2 (a static Go binary) runs on bookworm; pin trixie low so that only
# packages asked for by name come from it.
codename=$(. /etc/os-release && echo "${VERSION_CODENAME:-}")
if [ "$codename" = bookworm ] && [ ! -f /etc/apt/sources.list.d/trixie-compose.list ]; then
  log "adding a pinned trixie apt source for docker-compose v2"
  echo "deb http://deb.debian.org/debian trixie main" > /etc/apt/sources.list.d/trixie-compose.list
  printf 'Package: *\nPin: release n=trixie\nPin-Priority: 100\n' > /etc/apt/preferences.d/trixie-compose
  apt_updated=""
fi

missing=()
command -v dockerd >/dev/null || missing+=(docker.io)
command -v mmdebstrap >/dev/null || missing+=(mmdebstrap)
command -v docker-registry >/dev/null || missing+=(docker-registry)
command -v curl >/dev/null || missing+=(curl)
command -v iptables >/dev/null || missing+=(iptables)
python3 -c 'import ensurepip, venv' 2>/dev/null || missing+=(python3-venv)
if [ ${#missing[@]} -gt 0 ]; then
  log "installing Debian packages: ${missing[*]}"
  # No init system here: keep package scripts from trying to start services.
  printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d; chmod +x /usr/sbin/policy-rc.d
  apt_install "${missing[@]}"
  rm -f /usr/sbin/policy-rc.d
fi
if ! docker compose version >/dev/null 2>&1; then
  log "installing Compose v2 (docker-compose from trixie)"
  apt_install -t trixie docker-compose
fi

if ! docker info >/dev/null 2>&1; then
  log "starting dockerd (log: /var/log/dockerd.log)"
  setsid dockerd >/var/log/dockerd.log 2>&1 < /dev/null &
  for _ in $(seq 1 60); do
    docker info >/dev/null 2>&1 && break
    sleep 1
  done
  docker info >/dev/null 2>&1 || { log "dockerd did not start; see /var/log/dockerd.log"; tail -n 20 /var/log/dockerd.log >&2; exit 1; }
fi

# Reinstall the project into the venv only when its metadata changed.
stamp=.venv/.installed-pyproject
if [ ! -x .venv/bin/python ]; then
  log "creating .venv"
  python3 -m venv .venv
fi
if [ ! -f "$stamp" ] || ! cmp -s pyproject.toml "$stamp"; then
  log "installing the project and its dev extra into .venv"
  .venv/bin/pip install -q --disable-pip-version-check -e '.[dev]'
  cp pyproject.toml "$stamp"
fi

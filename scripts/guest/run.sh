#!/usr/bin/env bash
# Boots the systemd + cgroup v2 test guest (scripts/guest/build-image.sh) under qemu with this
# checkout shared in, and waits until it powers off. In the guest, scripts/guest/in-guest.sh
# installs sandboxd with the README's command and runs the in-guest tests; everything it
# reports lands in RESULTS_DIR (status, junit.xml, logs, the guest's journal, timings).
#
#   scripts/guest/run.sh RESULTS_DIR [TIMEOUT_S]
#
# The guest has no network (-nic none): Python packages come from a wheelhouse built here, as
# an operator's offline mirror would provide (the image carries the npm cache for tsx).
# The disk image is used with snapshot=on, so the cached image stays pristine. Run as root.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
CACHE=${SANDBOXD_TESTS_CACHE:-/var/cache/sandboxd-tests}
RESULTS=${1:?usage: run.sh RESULTS_DIR [TIMEOUT_S]}
TIMEOUT_S=${2:-1500}
export PIP_DISABLE_PIP_VERSION_CHECK=1
mkdir -p "$RESULTS"
RESULTS=$(cd "$RESULTS" && pwd)
start=$SECONDS
log() { echo "guest run: [$((SECONDS - start)) s] $*" >&2; }
timing() { echo "$1 $2" >>"$RESULTS/host-timings.txt"; }

t=$SECONDS
image=$("$HERE/build-image.sh" | tail -1)
timing image_s $((SECONDS - t))

# A pip from Debian's python3 (the guest's interpreter is the same version) to fill the
# wheelhouse: pip itself and the build backend, the daemon's and the tests' dependencies,
# and the jail's data stack, each resolved on its own as each venv installs it.
t=$SECONDS
deps=$(/usr/bin/python3 - "$REPO/pyproject.toml" <<'PY'
import sys, tomllib
project = tomllib.load(open(sys.argv[1], "rb"))["project"]
print("\n".join(project["dependencies"] + project["optional-dependencies"]["test"]))
PY
)
build_req=$(/usr/bin/python3 -c 'import sys, tomllib; print("\n".join(tomllib.load(open(sys.argv[1], "rb"))["build-system"]["requires"]))' "$REPO/pyproject.toml")
wkey=$( { echo "$deps"; echo "$build_req"; cat "$REPO/jail-configs/python-requirements.txt"; /usr/bin/python3 -V; } | sha256sum | cut -c1-16)
wheels="$CACHE/wheelhouse/$wkey"
if [ ! -f "$wheels/done" ]; then
  log "filling the wheelhouse $wheels"
  rm -rf "$CACHE/wheelhouse"
  mkdir -p "$wheels"
  /usr/bin/python3 -m venv "$wheels/.pip"
  pip=("$wheels/.pip/bin/pip" wheel -q -w "$wheels")
  "${pip[@]}" pip setuptools wheel $build_req
  echo "$deps" >"$wheels/.deps.txt"
  "${pip[@]}" -r "$wheels/.deps.txt"
  "${pip[@]}" -r "$REPO/jail-configs/python-requirements.txt"
  rm -rf "$wheels/.pip"
  touch "$wheels/done"
fi
timing wheelhouse_s $((SECONDS - t))

# The e2e client (@librechat/agents) as the host's e2e tests install it: shared in read-only.
client="$REPO/tests/e2e/client"
want=$(/usr/bin/python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["dependencies"]["@librechat/agents"])' "$client/package.json")
have=$(/usr/bin/python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["version"])' \
  "$client/node_modules/@librechat/agents/package.json" 2>/dev/null || true)
if [ "$want" != "$have" ]; then
  log "npm ci in tests/e2e/client"
  (cd "$client" && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error)
fi

# The e2e client runs in the guest on the host's node: @librechat/agents needs a newer node
# than Debian 12's (it uses the File global of node 20). Jails keep the guest's own node.
node_dir=$(dirname "$(readlink -f "$(command -v node)")")

rm -f "$RESULTS/status" "$RESULTS/junit.xml" "$RESULTS/console.log"
log "booting $image (bound: $TIMEOUT_S s)"
t=$SECONDS
rc=0
timeout --kill-after=10 "$TIMEOUT_S" qemu-system-x86_64 \
  -accel tcg,thread=multi -cpu max -smp 2 -m 2048 \
  -kernel "$image/vmlinuz" -initrd "$image/initrd.img" \
  -append "console=ttyS0 root=/dev/vda rw quiet panic=-1 systemd.unified_cgroup_hierarchy=1" \
  -drive "file=$image/disk.raw,format=raw,if=virtio,snapshot=on,cache=unsafe" \
  -virtfs "local,path=$REPO,mount_tag=checkout,security_model=none,readonly=on" \
  -virtfs "local,path=$RESULTS,mount_tag=results,security_model=none" \
  -virtfs "local,path=$wheels,mount_tag=wheelhouse,security_model=none,readonly=on" \
  -virtfs "local,path=$node_dir,mount_tag=clientnode,security_model=none,readonly=on" \
  -nic none -display none -serial "file:$RESULTS/console.log" -no-reboot \
  -pidfile "$RESULTS/qemu.pid" || rc=$?
timing guest_s $((SECONDS - t))
log "guest ended (qemu exit $rc); results in $RESULTS"
[ "$rc" -eq 0 ] || exit "$rc"
[ "$(cat "$RESULTS/status" 2>/dev/null)" = 0 ]

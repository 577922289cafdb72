#!/bin/bash
# Runs inside the test guest (systemd as PID 1, cgroup v2), started by the image's one job
# after boot with the shares mounted: /mnt/checkout (read-only), /mnt/results, /mnt/wheelhouse. Installs sandboxd exactly as the README says, from a copy of the checkout,
# then runs the in-guest tests. Everything it reports goes to /mnt/results; the guest powers
# off when this script ends, whatever its outcome.
set -uo pipefail
R=/mnt/results
export HOME=/root LC_ALL=C.UTF-8 DEBIAN_FRONTEND=noninteractive PIP_DISABLE_PIP_VERSION_CHECK=1
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
SRC=/srv/sandboxd
t0=$SECONDS
rc=1
step() { echo "guest: [$((SECONDS - t0)) s] $*"; }
timing() { echo "$1 $2" >>"$R/guest-timings.txt"; }
finish() {
  journalctl -u sandboxd.service --no-pager -o short-monotonic >"$R/sandboxd-journal.txt" 2>&1
  journalctl -b --no-pager -o short-monotonic >"$R/journal.txt" 2>&1
  timing total_in_guest_s $((SECONDS - t0))
  echo "$rc" >"$R/status"
  # Everything is on the share (9p writes through). The guest is thrown away (snapshot=on):
  # power off at once instead of waiting on an orderly shutdown, which was seen to stall.
  systemctl poweroff --force --force
}
trap finish EXIT
: >"$R/guest-timings.txt"
step "guest up: $(uname -r), $(stat -fc %T /sys/fs/cgroup), systemd $(systemctl --version | head -1)"
timing boot_to_script_s "$(cut -d' ' -f1 /proc/uptime)"

# An operator's offline mirror: pip reads only the wheelhouse, npm only its cache.
printf '[global]\nno-index = true\nfind-links = /mnt/wheelhouse\n' >/etc/pip.conf
printf 'offline=true\ncache=/var/cache/sandboxd-npm\nupdate-notifier=false\n' >/root/.npmrc

# The checkout as an operator has it (a clone); the e2e client's node_modules are shared in.
mkdir -p "$SRC"
tar -C /mnt/checkout --exclude=./.git --exclude=./.venv --exclude=./tests/e2e/client/node_modules \
  --exclude=__pycache__ --exclude=.mypy_cache --exclude=.pytest_cache -cf - . | tar -C "$SRC" -xf -
ln -s /mnt/checkout/tests/e2e/client/node_modules "$SRC/tests/e2e/client/node_modules"

step "install: ./scripts/install.sh"
t=$SECONDS
(cd "$SRC" && ./scripts/install.sh) 2>&1 | tee "$R/install.log"
install_rc=$?
timing install_s $((SECONDS - t))
step "install exit $install_rc"
if [ "$install_rc" -ne 0 ]; then
  tail -40 "$R/install.log"
  exit 1
fi

step "test environment"
t=$SECONDS
/usr/bin/python3 -m venv /srv/test-venv && /srv/test-venv/bin/pip install -q -e "$SRC[test]" >"$R/test-venv.log" 2>&1 \
  || { tail -20 "$R/test-venv.log"; exit 1; }
timing test_venv_s $((SECONDS - t))

# The e2e client's node (the host's, shared read-only) first on the tests' PATH only.
mkdir -p /mnt/clientnode /srv/client-node
mount -t 9p -o trans=virtio,version=9p2000.L,ro clientnode /mnt/clientnode && ln -sf /mnt/clientnode/node /srv/client-node/node
step "client node: $(/srv/client-node/node --version 2>&1)"

step "pytest"
t=$SECONDS
cd "$SRC"
PATH=/srv/client-node:$PATH SANDBOXD_GUEST_TIER=1 SANDBOXD_TEST_DAEMON_URL=http://127.0.0.1:8000 \
  timeout 1200 /srv/test-venv/bin/python -m pytest -p no:cacheprovider -v -rA \
  --junitxml="$R/junit.xml" -o junit_family=xunit2 \
  tests/guest \
  "tests/e2e/test_librechat_client.py::test_python_hello[root]" \
  "tests/e2e/test_librechat_client.py::test_bash_tool" \
  "tests/e2e/test_languages_client.py::test_each_language_through_the_real_tool[py]" \
  "tests/e2e/test_languages_client.py::test_each_language_through_the_real_tool[bash]" \
  >"$R/pytest.log" 2>&1
rc=$?
timing pytest_s $((SECONDS - t))
tail -30 "$R/pytest.log"
step "pytest exit $rc"

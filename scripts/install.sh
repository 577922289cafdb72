#!/usr/bin/env bash
# Installs sandboxd on a Debian 12 / Ubuntu host and starts it on 127.0.0.1:8000 with the
# built-in defaults. Run as root from a checkout: sudo ./scripts/install.sh
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
"$REPO/scripts/setup-host.sh"

PORT=8000
if [ -d /run/systemd/system ] && [ "$(ps -o comm= -p 1)" = systemd ]; then
  # Secrets reach the unit as credentials (LoadCredential=): files in this directory, root only.
  install -d -m 0700 /etc/sandboxd/credentials
  install -m 0644 "$REPO/systemd/sandboxd.service" /etc/systemd/system/sandboxd.service
  systemctl daemon-reload
  systemctl enable sandboxd.service
  systemctl restart sandboxd.service
  echo "sandboxd is running under systemd (systemctl status sandboxd)"
else
  # No systemd (a container or a minimal VM): run in the background, logging to a file.
  if pid=$(pgrep -f '/opt/sandboxd/venv/bin/sandboxd serve'); then kill -TERM $pid; sleep 2; fi
  nohup /opt/sandboxd/venv/bin/sandboxd serve >>/var/log/sandboxd.log 2>&1 &
  echo "sandboxd started as pid $! (log: /var/log/sandboxd.log)"
fi
for _ in $(seq 1 100); do
  if /opt/sandboxd/venv/bin/python -c "import urllib.request,sys; urllib.request.urlopen('http://127.0.0.1:$PORT/health', timeout=1)" 2>/dev/null; then
    echo "ready: LIBRECHAT_CODE_BASEURL=http://127.0.0.1:$PORT"; exit 0
  fi
  sleep 0.3
done
echo "sandboxd did not answer /health; run: /opt/sandboxd/venv/bin/sandboxd doctor" >&2
exit 1

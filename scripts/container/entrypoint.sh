#!/bin/sh
# Entrypoint of the sandboxd container image (tini runs it as its child; see the Dockerfile).
#
# Configuration, in order:
# 1. A file mounted at /etc/sandboxd/sandboxd.toml is the operator's own config and is used as
#    is (auth mode, keys, limits, uid range: everything comes from it).
# 2. Otherwise SANDBOXD_API_KEY must be set: the daemon listens on 0.0.0.0 inside the
#    container, and off loopback it refuses to run without authentication. The key goes into
#    a root-only file and leaves the environment before anything else starts, so neither the
#    daemon nor the jails it starts inherit it.
#
# Then the matplotlib font cache is built inside a real jail (an image build has no jail), and
# the daemon replaces this shell; it proves every isolation layer before it serves.
set -eu

# The daemon and warm-cache create directories the jails' uids must traverse: a umask from
# the runtime (or a line of this script) must not leave them 0700.
umask 022

OPERATOR_CONFIG=/etc/sandboxd/sandboxd.toml
GENERATED_DIR=/run/sandboxd-entrypoint
# Outside uids of this container's jails (60000 of them from the base).
# - In a user namespace (podman --uidmap, docker's userns-remap) they are the container's own
#   uids, which the engine maps to host uids: 1000-60999, inside the usual map of 0-65535 and
#   below nobody (65534); the image has no other users there.
# - Without one they are host uids: the host install uses 300000-359999, and useradd hands out
#   subordinate-id blocks from 100000 up, so a container takes a range far above both. Give
#   every further container on one host its own base.
if [ "$(awk 'NR == 1 { print $1, $2, $3 }' /proc/self/uid_map)" = "0 0 4294967295" ]; then
  UID_BASE=${SANDBOXD_UID_BASE:-1000000000}
else
  UID_BASE=${SANDBOXD_UID_BASE:-1000}
fi

if [ -f "$OPERATOR_CONFIG" ]; then
  if [ -n "${SANDBOXD_API_KEY:-}" ]; then
    echo "sandboxd-entrypoint: $OPERATOR_CONFIG is mounted; SANDBOXD_API_KEY is ignored" >&2
  fi
  set -- --config "$OPERATOR_CONFIG"
else
  if [ -z "${SANDBOXD_API_KEY:-}" ]; then
    echo "sandboxd-entrypoint: set SANDBOXD_API_KEY, or mount a config at $OPERATOR_CONFIG" >&2
    exit 2
  fi
  case $UID_BASE in
    ''|*[!0-9]*) echo "sandboxd-entrypoint: SANDBOXD_UID_BASE must be a number" >&2; exit 2 ;;
  esac
  rm -rf "$GENERATED_DIR"
  mkdir -m 0700 "$GENERATED_DIR"
  # The key file is root-only; the config naming it is not a secret.
  (umask 077 && printf '%s\n' "$SANDBOXD_API_KEY" > "$GENERATED_DIR/api-keys")
  cat > "$GENERATED_DIR/sandboxd.toml" <<EOF
host = "0.0.0.0"
port = 8000
uid_base = $UID_BASE

[auth]
mode = "api_key"
api_keys_file = "$GENERATED_DIR/api-keys"
EOF
  set -- --config "$GENERATED_DIR/sandboxd.toml"
fi
unset SANDBOXD_API_KEY

# A failure here only costs matplotlib speed; the daemon's own start-up checks below decide
# whether this container can run jails, and name the missing layer if it cannot.
/opt/sandboxd/venv/bin/sandboxd warm-cache "$@" \
  || echo "sandboxd-entrypoint: font cache not built; starting the daemon anyway" >&2
exec /opt/sandboxd/venv/bin/sandboxd serve "$@"

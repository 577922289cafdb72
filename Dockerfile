# Optional container image for running sandboxd beside a LibreChat compose stack.
#
# nsjail needs what a container normally lacks: mounting (tmpfs per session, the jail's own
# mounts), creating user/pid/net namespaces, and a writable cgroup subtree. Run it with:
#   docker run --privileged --cgroupns=private -p 127.0.0.1:8000:8000 \
#     -e SANDBOXD_API_KEY=<key> sandboxd
# A host install (scripts/install.sh, systemd) is the tested and recommended deployment; this
# image is not exercised by the test suite.
FROM debian:12-slim

COPY . /src
RUN /src/scripts/setup-host.sh --no-warm-cache \
 && rm -rf /var/lib/apt/lists/*

# Off loopback the daemon refuses to run without authentication: the entrypoint writes the key
# from SANDBOXD_API_KEY into a config file, builds the font cache, then serves.
RUN printf '%s\n' '#!/bin/sh' 'set -eu' \
    ': "${SANDBOXD_API_KEY:?set SANDBOXD_API_KEY}"' \
    'mkdir -p /etc/sandboxd' \
    'umask 077; printf "%s\n" "$SANDBOXD_API_KEY" > /etc/sandboxd/api-keys' \
    'printf "host = \"0.0.0.0\"\n[auth]\nmode = \"api_key\"\napi_keys_file = \"/etc/sandboxd/api-keys\"\n" > /etc/sandboxd/sandboxd.toml' \
    '/opt/sandboxd/venv/bin/sandboxd warm-cache' \
    'exec /opt/sandboxd/venv/bin/sandboxd serve' > /usr/local/bin/sandboxd-entrypoint \
 && chmod 0755 /usr/local/bin/sandboxd-entrypoint

EXPOSE 8000
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/sandboxd-entrypoint"]

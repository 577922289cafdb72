# sandboxd as a container beside a LibreChat compose stack (docker-compose.example.yml).
#
# Build: scripts/container/build.sh (podman; makes the base image locally, caches the result),
# or `docker build -t localhost/sandboxd:latest .` where the base image can be pulled.
# Run: it does not need --privileged, but it needs more than a default container: five
# capabilities, an unmasked /proc and a writable cgroup group of its own, best in a user
# namespace. SECURITY.md, "Container deployment", lists the exact set and why each item is there.
FROM debian:12-slim

# Only what the image installs: scripts/container/build.sh hashes exactly these inputs to
# decide whether the cached image is still current.
COPY pyproject.toml README.md /src/
COPY sandboxd/ /src/sandboxd/
COPY jail-configs/ /src/jail-configs/
COPY scripts/setup-host.sh scripts/host-packages.sh /src/scripts/

# The host install, unchanged (apt packages, daemon venv, jail venv, toolchains). On a host
# whose outbound TLS is intercepted, build.sh mounts that host's CA bundle read-only at
# /run/build-ca/ca.crt for this step only: pip and npm trust it here, and nothing of it stays
# in the image. The font cache needs a jail, so the entrypoint builds it at start.
RUN set -eu; \
    if [ -s /run/build-ca/ca.crt ]; then \
      export PIP_CERT=/run/build-ca/ca.crt NODE_EXTRA_CA_CERTS=/run/build-ca/ca.crt; \
    fi; \
    /src/scripts/setup-host.sh --no-warm-cache; \
    rm -rf /src /var/lib/apt/lists/* /root/.cache /root/.npm

COPY scripts/container/entrypoint.sh /usr/local/bin/sandboxd-entrypoint

EXPOSE 8000
STOPSIGNAL SIGTERM
# tini as PID 1: forwards SIGTERM to the daemon and reaps any process orphaned to it.
ENTRYPOINT ["/usr/bin/tini", "--", "/usr/local/bin/sandboxd-entrypoint"]

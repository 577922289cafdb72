#!/usr/bin/env bash
# Builds the sandboxd container image with podman (Debian 12's podman 4.3 or later), as root,
# without any container registry, and caches it.
#
#   scripts/container/build.sh        # prints the image reference (localhost/sandboxd:<hash>) last
#
# 1. Base image: `debootstrap --variant=minbase bookworm` from the archive apt already uses,
#    imported as localhost/debian:12-slim (what the Dockerfile's `FROM debian:12-slim` resolves
#    to with --pull=never). Rebuilt only when its recipe (mirror, suite, sources) changes.
# 2. The image: labelled with a sha256 of its inputs (the Dockerfile and every file it copies,
#    this script, the base image) and rebuilt only when that hash changes; images of older
#    hashes are removed.
#
# CA trust: when this machine adds its own CAs (files in /usr/local/share/ca-certificates, or
# PIP_CERT / SSL_CERT_FILE / NODE_EXTRA_CA_CERTS naming a bundle, as behind a TLS-intercepting
# proxy), that bundle is mounted read-only into the RUN step so pip and npm can reach their
# registries. The bundle does not stay in the image, but what was downloaded was checked only
# against this machine's trust: such an image is for this machine only (it is labelled
# org.sandboxd.build-ca=host). Build images to ship elsewhere on a host without extra CAs.
#
# podman settings come from CONTAINERS_CONF, by default this directory's containers.conf.
# The cache directory (SANDBOXD_CONTAINER_CACHE) holds only a lock file and the last build log.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
CACHE=${SANDBOXD_CONTAINER_CACHE:-/var/cache/sandboxd-tests/container}
IMAGE=${SANDBOXD_IMAGE:-localhost/sandboxd}
BASE_IMAGE=localhost/debian:12-slim
SUITE=bookworm
LABEL_INPUTS=org.sandboxd.inputs
LABEL_BASE=org.sandboxd.base-recipe
export CONTAINERS_CONF=${CONTAINERS_CONF:-$REPO/scripts/container/containers.conf}

log() { echo "build.sh: $*" >&2; }

if [ "$(id -u)" -ne 0 ]; then log "run as root (rootful podman)"; exit 1; fi
for tool in podman debootstrap sha256sum tar flock; do
  command -v "$tool" >/dev/null || { log "$tool is missing (apt-get install podman runc debootstrap)"; exit 1; }
done
mkdir -p "$CACHE"
# One build at a time per cache (two test runs on one machine wait for each other).
exec 9>"$CACHE/build.lock"
flock 9

# --- 1. the base image --------------------------------------------------------------------
# The archive apt uses here: the first URIs of the deb822 sources, else sources.list.
SOURCES=/etc/apt/sources.list.d/debian.sources
MIRROR=""
if [ -r "$SOURCES" ]; then
  MIRROR=$(awk '/^URIs:/ {print $2; exit}' "$SOURCES")
elif [ -r /etc/apt/sources.list ]; then
  MIRROR=$(awk '$1 == "deb" && $3 == "'"$SUITE"'" {print $2; exit}' /etc/apt/sources.list)
fi
MIRROR=${MIRROR:-http://deb.debian.org/debian}
base_recipe=$( { echo "debootstrap --variant=minbase $SUITE $MIRROR"; [ -r "$SOURCES" ] && cat "$SOURCES"; } \
  | sha256sum | cut -c1-64)
have_base=$(podman image inspect --format "{{index .Labels \"$LABEL_BASE\"}}" "$BASE_IMAGE" 2>/dev/null || true)
if [ "$have_base" != "$base_recipe" ]; then
  log "making the base image $BASE_IMAGE from $MIRROR ($SUITE, minbase)"
  start=$SECONDS
  rootfs=$(mktemp -d "$CACHE/rootfs.XXXXXX")
  trap 'rm -rf "$rootfs"' EXIT
  debootstrap --variant=minbase "$SUITE" "$rootfs" "$MIRROR" >"$CACHE/debootstrap.log" 2>&1 \
    || { tail -20 "$CACHE/debootstrap.log" >&2; exit 1; }
  # The same suites as the host (updates, security), so the image gets the same package versions.
  if [ -r "$SOURCES" ]; then
    install -m 0644 "$SOURCES" "$rootfs/etc/apt/sources.list.d/debian.sources"
    rm -f "$rootfs/etc/apt/sources.list"
  fi
  rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
  tar -C "$rootfs" --numeric-owner -c . \
    | podman import --quiet --change "LABEL $LABEL_BASE=$base_recipe" - "$BASE_IMAGE" >/dev/null
  rm -rf "$rootfs"
  trap - EXIT
  log "base image ready in $((SECONDS - start)) s"
fi
base_id=$(podman image inspect --format '{{.Id}}' "$BASE_IMAGE")

# --- 2. the sandboxd image ----------------------------------------------------------------
# Exactly what the Dockerfile copies (keep in step with its COPY lines and .dockerignore).
inputs=(Dockerfile .dockerignore pyproject.toml README.md scripts/setup-host.sh scripts/host-packages.sh
        scripts/container/entrypoint.sh scripts/container/build.sh)
cd "$REPO"
mapfile -t tree < <(find sandboxd jail-configs -type f ! -name '*.pyc' ! -path '*/__pycache__/*' | LC_ALL=C sort)
inputs_hash=$( {
  echo "base $base_id"
  # Names, modes and contents: a changed file, a new one or a lost exec bit all rebuild.
  for f in "${inputs[@]}" "${tree[@]}"; do
    printf '%s %s %s\n' "$f" "$(stat -c %a "$f")" "$(sha256sum < "$f" | cut -c1-64)"
  done
} | sha256sum | cut -c1-64)
tag="$IMAGE:${inputs_hash:0:16}"

if [ "$(podman image inspect --format "{{index .Labels \"$LABEL_INPUTS\"}}" "$tag" 2>/dev/null || true)" \
     = "$inputs_hash" ]; then
  log "cached: $tag (inputs unchanged)"
else
  ca_args=()
  ca_label=none
  ca_bundle=""
  for candidate in "${PIP_CERT:-}" "${SSL_CERT_FILE:-}" "${NODE_EXTRA_CA_CERTS:-}"; do
    if [ -n "$candidate" ] && [ -s "$candidate" ]; then ca_bundle=$candidate; break; fi
  done
  if [ -z "$ca_bundle" ] && compgen -G '/usr/local/share/ca-certificates/*.crt' >/dev/null \
     && [ -s /etc/ssl/certs/ca-certificates.crt ]; then
    ca_bundle=/etc/ssl/certs/ca-certificates.crt
  fi
  if [ -n "$ca_bundle" ]; then
    ca_args=(--volume "$(readlink -f "$ca_bundle"):/run/build-ca/ca.crt:ro")
    ca_label=host
    log "this machine's CA trust ($ca_bundle) is mounted for the build: the image is for this machine only"
  fi
  log "building $tag (first build: several minutes; log: $CACHE/build.log)"
  start=$SECONDS
  if ! podman build --pull=never --network host --layers --file Dockerfile \
      --label "$LABEL_INPUTS=$inputs_hash" --label "org.sandboxd.build-ca=$ca_label" \
      "${ca_args[@]}" --tag "$tag" --tag "$IMAGE:latest" . >"$CACHE/build.log" 2>&1; then
    tail -40 "$CACHE/build.log" >&2
    log "podman build failed (full log: $CACHE/build.log)"
    exit 1
  fi
  log "built $tag in $((SECONDS - start)) s"
fi
podman tag "$tag" "$IMAGE:latest"

# Images of earlier inputs go, with their build layers (an image still used by a container
# stays; podman says which).
while read -r ref; do
  [ "$ref" = "$tag" ] || [ "$ref" = "$IMAGE:latest" ] || podman rmi "$ref" >/dev/null || true
done < <(podman images --filter "label=$LABEL_INPUTS" --format '{{.Repository}}:{{.Tag}}')
echo "$tag"

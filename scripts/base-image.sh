#!/usr/bin/env bash
# Print the name of a Debian bookworm base image the engine has, making one when needed.
#   1. BASE_IMAGE already set and present            -> use it
#   2. debian:bookworm-slim present or pullable        -> use it (a normal machine with a registry)
#   3. otherwise (no registry, as on the CI machines)  -> debootstrap from the Debian mirror and
#      `docker import` it as agent-base:bookworm (about a minute, once; reused afterwards)
# Only the image name goes to stdout; progress goes to stderr.
set -euo pipefail

log() { printf '[base-image] %s\n' "$*" >&2; }
has_image() { docker image inspect "$1" >/dev/null 2>&1; }

if [[ -n ${BASE_IMAGE:-} ]] && has_image "$BASE_IMAGE"; then
  echo "$BASE_IMAGE"; exit 0
fi

registry_image=debian:bookworm-slim
if has_image "$registry_image" || timeout 60 docker pull -q "$registry_image" >/dev/null 2>&1; then
  log "using $registry_image"
  echo "$registry_image"; exit 0
fi

offline_image=agent-base:bookworm
if has_image "$offline_image"; then
  log "no registry; reusing $offline_image"
  echo "$offline_image"; exit 0
fi

log "no registry reachable: building $offline_image from the Debian mirror (debootstrap, ~1 min)"
if ! command -v debootstrap >/dev/null 2>&1; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq && apt-get install -y -qq debootstrap >/dev/null
fi
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
root=$(mktemp -d /tmp/agent-base.XXXXXX)
trap 'rm -rf "$root"' EXIT
debootstrap --variant=minbase --include=ca-certificates bookworm "$root" "$mirror" >/tmp/debootstrap.log 2>&1 || {
  log "debootstrap failed; last lines of /tmp/debootstrap.log:"; tail -n 20 /tmp/debootstrap.log >&2; exit 1; }
# A slim image like the registry's: no apt lists or caches. Keep the mirror the build will use.
rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/archives/*.deb
echo "deb $mirror bookworm main" >"$root/etc/apt/sources.list"
tar -C "$root" -c . | docker import -c 'CMD ["bash"]' - "$offline_image" >/dev/null
log "built $offline_image"
echo "$offline_image"

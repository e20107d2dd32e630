#!/usr/bin/env bash
# Make sure a Docker engine answers. On a machine that has only the docker CLI (and we are root),
# install Debian's docker.io and start dockerd in the background. Idempotent: does nothing when
# `docker info` already answers. Fails loudly when no engine can be had: tests must not skip.
set -euo pipefail

log() { printf '[docker-engine] %s\n' "$*" >&2; }

if docker info >/dev/null 2>&1; then
  log "engine already answers"
  exit 0
fi

if [[ $(id -u) -ne 0 ]]; then
  log "no Docker engine answers and we are not root: start Docker yourself (https://docs.docker.com/engine/install/)"
  exit 1
fi

if ! command -v dockerd >/dev/null 2>&1; then
  log "installing Debian's docker.io (dockerd, containerd, runc)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends docker.io iptables >/dev/null
fi

log "starting dockerd (log: /var/log/dockerd.log)"
# setsid: the engine must outlive this script and the test run's process group.
setsid dockerd >/var/log/dockerd.log 2>&1 < /dev/null &

for _ in $(seq 1 60); do
  if docker info >/dev/null 2>&1; then
    log "engine is up"
    exit 0
  fi
  sleep 0.5
done
log "dockerd did not answer within 30 s; last lines of /var/log/dockerd.log:"
tail -n 30 /var/log/dockerd.log >&2 || true
exit 1

#!/usr/bin/env bash
# The test command: sets up everything on a fresh machine and runs every test.
#   - a virtualenv in .venv with the project and its test extra
#   - a Docker engine (installs Debian's docker.io and starts dockerd when none answers; needs root)
#   - a base image (registry, or debootstrap from the Debian mirror when no registry is reachable)
#   - the agent image, rebuilt from agent_image/ (cached layers: seconds when nothing changed)
# Extra arguments go to pytest (e.g. scripts/test.sh -k channel -x).
# Nothing is skipped: when the engine cannot start, this fails loudly.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '\n[test] %s\n' "$*" >&2; }

PYTHON=${PYTHON:-python3}
if [[ ! -x .venv/bin/python ]]; then
  log "creating .venv"
  "$PYTHON" -m venv .venv
fi
log "installing the project and its test extra"
.venv/bin/python -m pip install -q --disable-pip-version-check -e '.[test]'

log "making sure a Docker engine answers"
scripts/docker-engine.sh

log "making sure a base image exists"
BASE_IMAGE=$(scripts/base-image.sh)
export BASE_IMAGE

log "building the agent image (base $BASE_IMAGE)"
.venv/bin/python -m bot images --base-image "$BASE_IMAGE"

log "running the tests"
export AGENTBOT_REQUIRE_DOCKER=1  # conftest: a missing engine or image is an error, never a skip
exec .venv/bin/python -m pytest "$@"

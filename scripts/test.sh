#!/usr/bin/env bash
# Set up .venv with the project and its test dependencies, lint, and run the test suite.
# The first run compiles llama-cpp-python from source (about 7 minutes on 2 cores); pip caches
# the wheel, so later runs take seconds. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."

. scripts/_venv.sh test

.venv/bin/ruff check .
exec .venv/bin/python -m pytest "$@"

#!/usr/bin/env bash
# Set up .venv with the project and its test dependencies, lint, and run the test suite.
# The first run compiles llama-cpp-python from source (about 7 minutes on 2 cores); pip caches
# the wheel, so later runs take seconds. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
"$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
  || { echo "error: Python 3.11 or newer is needed (PYTHON=$PYTHON)" >&2; exit 1; }
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
CMAKE_BUILD_PARALLEL_LEVEL=$(nproc) .venv/bin/python -m pip install --quiet -e '.[test]'

.venv/bin/ruff check .
exec .venv/bin/python -m pytest "$@"

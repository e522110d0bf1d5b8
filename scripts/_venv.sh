# Sourced by the set-up scripts: make .venv (Python 3.11+) and install the project with the
# extras named in $1 ("test", "demo"). The first install compiles llama-cpp-python (about
# 7 minutes on 2 cores); pip caches the wheel.
PYTHON=${PYTHON:-python3}
"$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
  || { echo "error: Python 3.11 or newer is needed (PYTHON=$PYTHON)" >&2; exit 1; }
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
CMAKE_BUILD_PARALLEL_LEVEL=$(nproc) .venv/bin/python -m pip install --quiet -e ".[$1]"

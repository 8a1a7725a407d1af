# Shared by scripts/demo and scripts/test: make ./.venv and install conveyor into it.
# Usage: . scripts/_venv.sh EXTRAS   (e.g. "dev,train,metrics,files")
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
extras="$1"
if [[ ",$extras," == *",train,"* ]]; then
    # torch first, pinned: a bare "torch" requirement would pull a CUDA build.
    .venv/bin/python -m pip install -q --disable-pip-version-check "torch==2.13.0"
fi
.venv/bin/python -m pip install -q --disable-pip-version-check -e ".[$extras]"

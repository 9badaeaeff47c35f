#!/usr/bin/env bash
# Create or reuse the project's virtual environment and install npcrepro into it.
#
# Torch goes in first, on its own, so that nothing else can pull a different (e.g. CUDA) build:
# every later install is constrained to the torch that is already there. Set TORCH_SPEC to pick
# another build (e.g. TORCH_SPEC="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu124").
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=${VENV:-.venv}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
stamp="$VENV/.npcrepro-stamp"

if [ ! -x "$VENV/bin/python" ]; then
    echo "[bootstrap] creating virtual environment $VENV"
    "$PY" -m venv "$VENV"
fi
# shellcheck disable=SC1091
. "$VENV/bin/activate"

want=$(cat pyproject.toml scripts/bootstrap.sh | sha256sum | cut -c1-16)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
    exit 0
fi

echo "[bootstrap] installing into $VENV (torch first, then npcrepro[book,dev] constrained to it)"
python -m pip install -q --upgrade pip setuptools wheel
if ! python -c "import torch" 2>/dev/null; then
    # shellcheck disable=SC2086
    python -m pip install -q $TORCH_SPEC
fi
python -c "import torch; print('torch==' + torch.__version__.split('+')[0])" > "$VENV/torch-constraint.txt"
python -m pip install -q -c "$VENV/torch-constraint.txt" -e ".[book,dev]"
python -m ipykernel install --sys-prefix --name python3 --display-name "Python 3 (npcrepro)" >/dev/null
echo "$want" > "$stamp"
echo "[bootstrap] ready: $(python -c 'import torch, npcrepro; print("npcrepro", npcrepro.__version__, "torch", torch.__version__)')"

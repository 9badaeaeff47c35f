#!/usr/bin/env bash
# Create or reuse the project's virtual environment and install npcrepro into it.
#
# Torch goes in first, on its own, so that nothing else can pull a different build: every later
# install is constrained to the torch that is already there. TORCH_SPEC picks the build (pip
# arguments; default torch==2.13.0, which from PyPI is the Linux CUDA 13.0 build), e.g. a CPU-only
# one: TORCH_SPEC="torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu". TORCH_SPEC is
# part of the stamp: setting a different one later re-installs torch (and says so).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=${VENV:-.venv}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
stamp="$VENV/.npcrepro-stamp"
torch_stamp="$VENV/.npcrepro-torch-spec"

if [ ! -x "$VENV/bin/python" ]; then
    echo "[bootstrap] creating virtual environment $VENV"
    "$PY" -m venv "$VENV"
fi
# shellcheck disable=SC1091
. "$VENV/bin/activate"

want=$( (cat pyproject.toml scripts/bootstrap.sh; echo "TORCH_SPEC=$TORCH_SPEC") | sha256sum | cut -c1-16)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
    exit 0
fi

echo "[bootstrap] installing into $VENV (torch first, then npcrepro[book,dev] constrained to it)"
python -m pip install -q --upgrade pip setuptools wheel
had_spec=$(cat "$torch_stamp" 2>/dev/null || true)
if ! python -c "import torch" 2>/dev/null; then
    echo "[bootstrap] installing torch: $TORCH_SPEC"
    # shellcheck disable=SC2086
    python -m pip install -q $TORCH_SPEC
elif [ -n "$had_spec" ] && [ "$had_spec" != "$TORCH_SPEC" ]; then
    echo "[bootstrap] TORCH_SPEC changed (was: $had_spec; now: $TORCH_SPEC): re-installing torch"
    # shellcheck disable=SC2086
    python -m pip install -q --force-reinstall --no-deps $TORCH_SPEC
    # shellcheck disable=SC2086
    python -m pip install -q $TORCH_SPEC  # its dependencies, if the new build needs others
elif [ -z "$had_spec" ] && [ "$TORCH_SPEC" != "torch==2.13.0" ]; then
    echo "[bootstrap] TORCH_SPEC is set but torch $(python -c 'import torch; print(torch.__version__)') was" \
         "installed before this environment recorded one: re-installing torch ($TORCH_SPEC)"
    # shellcheck disable=SC2086
    python -m pip install -q --force-reinstall --no-deps $TORCH_SPEC
    # shellcheck disable=SC2086
    python -m pip install -q $TORCH_SPEC
fi
echo "$TORCH_SPEC" > "$torch_stamp"
python -c "import torch; print('torch==' + torch.__version__.split('+')[0])" > "$VENV/torch-constraint.txt"
python -m pip install -q -c "$VENV/torch-constraint.txt" -e ".[book,dev]"
python -m ipykernel install --sys-prefix --name python3 --display-name "Python 3 (npcrepro)" >/dev/null
echo "$want" > "$stamp"
echo "[bootstrap] ready: $(python -c 'import torch, npcrepro; print("npcrepro", npcrepro.__version__, "torch", torch.__version__, "cuda", torch.version.cuda or "none")')"

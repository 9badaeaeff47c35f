#!/usr/bin/env bash
# Create or reuse the project's virtual environment and install npcrepro into it.
#
# Torch goes in first, on its own, so that nothing else can pull a different build: every later
# install is constrained to the torch that is already there. TORCH_SPEC picks the build (pip
# arguments; default torch==2.13.0, which from PyPI is the Linux CUDA 13.0 build), e.g. a CPU-only
# one: TORCH_SPEC="torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu". TORCH_SPEC is
# part of the stamp: setting a different one later re-installs torch (and says so).
#
# Without TORCH_SPEC, a new environment on a Linux x86_64 machine with no NVIDIA driver (no
# nvidia-smi, no /proc/driver/nvidia) takes the CPU build from PyTorch's CPU index (about 200 MB
# instead of the CUDA build's gigabytes), when that index answers within 5 s; otherwise, and everywhere
# else, PyPI's. An existing environment keeps the choice it was made with.
#
# EXTRAS picks what goes in beside the library (default book,dev): `make book` asks for the book
# only, `make test` for the book and the test tools (dev). An environment that has more extras than
# asked for is kept as it is.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=${VENV:-.venv}
EXTRAS=${EXTRAS:-book,dev}
CPU_INDEX=https://download.pytorch.org/whl/cpu
torch_stamp="$VENV/.npcrepro-torch-spec"
if [ -z "${TORCH_SPEC:-}" ] && [ -s "$torch_stamp" ]; then
    TORCH_SPEC=$(cat "$torch_stamp")  # chosen when this environment was made
elif [ -z "${TORCH_SPEC:-}" ]; then
    TORCH_SPEC="torch==2.13.0"
    if [ "$(uname -s)-$(uname -m)" = Linux-x86_64 ] && ! command -v nvidia-smi >/dev/null 2>&1 \
            && [ ! -e /proc/driver/nvidia/version ]; then
        if "$PY" -c "import urllib.request as u; u.urlopen('$CPU_INDEX/torch/', timeout=5)" >/dev/null 2>&1; then
            TORCH_SPEC="torch==2.13.0 --index-url $CPU_INDEX"
            echo "[bootstrap] no NVIDIA driver found: the CPU build of torch (TORCH_SPEC=\"$TORCH_SPEC\")"
        else
            echo "[bootstrap] no NVIDIA driver found, but $CPU_INDEX does not answer: torch from the default index"
        fi
    fi
fi
stamp="$VENV/.npcrepro-stamp"
extras_stamp="$VENV/.npcrepro-extras"

if [ ! -x "$VENV/bin/python" ]; then
    echo "[bootstrap] creating virtual environment $VENV"
    "$PY" -m venv "$VENV"
fi
# shellcheck disable=SC1091
. "$VENV/bin/activate"

# the versions the book was checked with (scripts/lock.sh), unless NPCREPRO_NO_LOCK=1
lock=""
if [ -f requirements/lock.txt ] && [ "${NPCREPRO_NO_LOCK:-0}" != 1 ]; then
    lock="-c requirements/lock.txt"
fi
want=$( (cat pyproject.toml scripts/bootstrap.sh; if [ -n "$lock" ]; then cat requirements/lock.txt; fi
         echo "TORCH_SPEC=$TORCH_SPEC") | sha256sum | cut -c1-16)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
    missing=$(comm -23 <(tr ',' '\n' <<< "$EXTRAS" | sort -u) <(tr ',' '\n' < "$extras_stamp" 2>/dev/null | sort -u))
    if [ -z "$missing" ]; then
        exit 0
    fi
    EXTRAS=$( (tr ',' '\n' <<< "$EXTRAS"; tr ',' '\n' < "$extras_stamp") | sort -u | paste -sd, -)
else
    rm -f "$extras_stamp"
fi

echo "[bootstrap] installing into $VENV (torch first, then npcrepro[$EXTRAS] constrained to it)"
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
# shellcheck disable=SC2086
python -m pip install -q -c "$VENV/torch-constraint.txt" $lock -e ".[$EXTRAS]"
python -m ipykernel install --sys-prefix --name python3 --display-name "Python 3 (npcrepro)" >/dev/null
echo "$want" > "$stamp"
echo "$EXTRAS" > "$extras_stamp"
echo "[bootstrap] ready: $(python -c 'import torch, npcrepro; print("npcrepro", npcrepro.__version__, "torch", torch.__version__, "cuda", torch.version.cuda or "none")')"

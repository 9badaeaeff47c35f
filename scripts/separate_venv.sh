# Sourced by the scripts that make a separate venv (setup_maskrcnn_env.sh, setup_nnunet_env.sh), after
# they set VENV, NAME (their name in messages) and WANT (a hash of what decides the venv's contents):
# defines say(), picks PYTHON (python3.11 where there is one), creates $VENV unless it exists, and
# exits 0 when the venv's stamp equals WANT (already set up). The caller writes the stamp at its end:
#   echo "$WANT" > "$STAMP"
if [ -z "${PYTHON:-}" ]; then
    if command -v python3.11 >/dev/null 2>&1; then PYTHON=python3.11; else PYTHON=python3; fi
fi
STAMP="$VENV/.npcrepro-$NAME-stamp"
say() { echo "[setup_${NAME}_env] $*"; }

if [ ! -x "$VENV/bin/python" ]; then
    say "creating virtual environment $VENV ($PYTHON)"
    "$PYTHON" -m venv "$VENV"
fi
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$WANT" ]; then
    say "already set up: $VENV (nothing to do)"
    exit 0
fi

#!/usr/bin/env bash
# Create or reuse the separate virtual environment for luo2020's Mask R-CNN row (torchvision).
#
# torchvision 0.29.1 needs torch 2.14.1; the project's default environment (.venv, scripts/bootstrap.sh)
# stays on torch 2.13.0, for which there is no torchvision build here. So the Mask R-CNN row lives in
# its own venv: torch + torchvision first, then npcrepro (editable) with the `maskrcnn` extra, every
# install constrained to that torch/torchvision so nothing can swap them.
#
#   bash scripts/setup_maskrcnn_env.sh                       # venv in .venv-maskrcnn
#   VENV=/work/venv-maskrcnn bash scripts/setup_maskrcnn_env.sh
#   BOOK=0 bash scripts/setup_maskrcnn_env.sh                # library only (no Jupyter/papermill)
#
# With BOOK=1 (default) the venv also gets the `book` extra and a `python3` Jupyter kernel inside the
# venv, so `$VENV/bin/npcrepro run luo2020 ...` executes the chapter with torchvision available.
# Idempotent: a stamp of this script, pyproject.toml and the settings makes a second run a no-op.
# torchvision's pretrained weights are never downloaded: the row trains Mask R-CNN from scratch.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv-maskrcnn}
BOOK=${BOOK:-1}
TORCH_VERSION=2.14.1
TORCHVISION_VERSION=0.29.1
NAME=maskrcnn
WANT=$( (cat pyproject.toml scripts/setup_maskrcnn_env.sh; echo "BOOK=$BOOK") | sha256sum | cut -c1-16)
source scripts/separate_venv.sh

pip=("$VENV/bin/python" -m pip)
have=$("$VENV/bin/python" -c "import torch, torchvision; print(torch.__version__.split('+')[0], torchvision.__version__.split('+')[0])" 2>/dev/null || true)
if [ "$have" != "$TORCH_VERSION $TORCHVISION_VERSION" ]; then
    say "installing torch==$TORCH_VERSION torchvision==$TORCHVISION_VERSION into $VENV (was: ${have:-none})"
    "${pip[@]}" install -q "torch==$TORCH_VERSION" "torchvision==$TORCHVISION_VERSION"
else
    say "torch $TORCH_VERSION and torchvision $TORCHVISION_VERSION already installed"
fi
constraints="$VENV/maskrcnn-constraints.txt"
printf 'torch==%s\ntorchvision==%s\n' "$TORCH_VERSION" "$TORCHVISION_VERSION" > "$constraints"
extras=maskrcnn
[ "$BOOK" = "1" ] && extras="maskrcnn,book"
say "installing npcrepro[$extras] (editable) constrained to that torch/torchvision"
"${pip[@]}" install -q -c "$constraints" -e ".[$extras]"
if [ "$BOOK" = "1" ]; then
    "$VENV/bin/python" -m ipykernel install --sys-prefix --name python3 --display-name "Python 3 (npcrepro, Mask R-CNN)" >/dev/null
fi
"$VENV/bin/python" - <<'PY'
import torch, torchvision
from npcrepro.models import maskrcnn
if not maskrcnn.available():
    raise SystemExit("[setup_maskrcnn_env] torchvision does not import in the new environment")
print(f"[setup_maskrcnn_env] ready: torch {torch.__version__}, torchvision {torchvision.__version__}")
PY
echo "$WANT" > "$STAMP"
say "run the chapter with it: $VENV/bin/npcrepro run luo2020 --profile cpu   (or pick this venv's kernel in Jupyter)"

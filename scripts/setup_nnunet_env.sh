#!/usr/bin/env bash
# Create or reuse the separate virtual environment in which nnU-Net v2 trains (issue 50).
#
# nnU-Net lives in its own venv, as luo2020's Mask R-CNN row does: torch 2.13.0 (the book's; on a CPU
# machine here the local CPU wheel, on a GPU server PyPI's CUDA build) and nnunetv2 pinned, every
# install constrained to them. nnunetv2 pulls in torchvision and timm for its Primus trainers only;
# where that torchvision cannot load its operators (the PyPI wheel beside a CPU build of torch, as
# here), both are removed: npcrepro's driver imports nnU-Net's default trainer directly and never
# touches them. The book's environment calls this one through `npcrepro nnunet`
# (npcrepro/chapters/leaderboard/nnunet.py), which exports the data, runs nnU-Net's own planning and
# preprocessing, trains with npcrepro/chapters/leaderboard/nnunet_driver.py and reads the predictions
# back; npcrepro itself is not installed here.
#
#   bash scripts/setup_nnunet_env.sh                      # venv in .venv-nnunet
#   VENV=/work/venv-nnunet bash scripts/setup_nnunet_env.sh   # then export NPCREPRO_NNUNET_PYTHON=$VENV/bin/python
#
# Idempotent: a stamp of this script and the settings makes a second run a no-op.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv-nnunet}
TORCH_VERSION=2.13.0
NNUNET_VERSION=2.8.1   # npcrepro.chapters.leaderboard.nnunet.NNUNET_VERSION
NAME=nnunet
WANT=$(cat scripts/setup_nnunet_env.sh scripts/separate_venv.sh | sha256sum | cut -c1-16)
source scripts/separate_venv.sh
pip=("$VENV/bin/python" -m pip)
constraints="$VENV/nnunet-constraints.txt"
printf 'torch==%s\nnnunetv2==%s\n' "$TORCH_VERSION" "$NNUNET_VERSION" > "$constraints"
say "installing torch==$TORCH_VERSION and nnunetv2==$NNUNET_VERSION into $VENV"
"${pip[@]}" install -q -c "$constraints" "torch==$TORCH_VERSION" "nnunetv2==$NNUNET_VERSION"
if ! "$VENV/bin/python" -c "from torchvision.ops import nms" >/dev/null 2>&1; then
    say "torchvision cannot load its operators with this torch build: removing torchvision and timm (used only by"
    say "nnU-Net's Primus trainers, which npcrepro's driver does not import)"
    "${pip[@]}" uninstall -q -y torchvision timm
fi
"$VENV/bin/python" - <<'PY'
import importlib.metadata as m
import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer  # noqa: F401  (what the driver imports)
print(f"[setup_nnunet_env] ready: torch {torch.__version__}, nnunetv2 {m.version('nnunetv2')}")
PY
echo "$WANT" > "$STAMP"
say "use it: npcrepro nnunet [RUN] --inputs cet1 mri ct   (or set NPCREPRO_NNUNET_PYTHON=$VENV/bin/python)"

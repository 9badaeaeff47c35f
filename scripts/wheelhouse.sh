#!/usr/bin/env bash
# A wheelhouse for a GPU server without internet that already has its CUDA PyTorch (common in
# hospitals): every wheel npcrepro[book] needs except torch, for the server's Python and platform.
#
# On a machine with internet (any OS; pip downloads for the target, not for itself):
#   bash scripts/wheelhouse.sh OUT [PYTHON_VERSION] [PLATFORM]
#   e.g. bash scripts/wheelhouse.sh wheels 3.12 manylinux_2_28_x86_64
# (defaults: this Python's version and manylinux_2_28_x86_64). Copy OUT and the repository to the
# server; there, in the environment that holds its torch:
#   python -m pip install --no-index --find-links OUT -e ".[book]"
# pip takes nothing from the internet (--no-index) and leaves torch alone: npcrepro asks for
# torch>=2.1, which the server's build satisfies. Without a torch there, pip stops with
# "No matching distribution found for torch": install the server's PyTorch first.
#
#   bash scripts/wheelhouse.sh --list    prints the requirements it downloads (one per line)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}

requirements() {
    # the dependencies and the book extra of pyproject.toml, without torch; the build backend that
    # `pip install -e .` needs offline (build isolation fetches it from the wheelhouse)
    "$PY" - <<'PY'
import re
import tomllib

with open("pyproject.toml", "rb") as f:
    meta = tomllib.load(f)
reqs = meta["project"]["dependencies"] + meta["project"]["optional-dependencies"]["book"]
reqs += meta["build-system"]["requires"]
seen = set()
for r in reqs:
    name = re.split(r"[<>=!~\[; ]", r, maxsplit=1)[0].lower()
    if name != "torch" and name not in seen:
        seen.add(name)
        print(r)
PY
}

if [ "${1:-}" = "--list" ]; then
    requirements
    exit 0
fi
OUT=${1:?usage: bash scripts/wheelhouse.sh OUT [PYTHON_VERSION] [PLATFORM]  (or --list)}
PYVER=${2:-$("$PY" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')}
PLATFORM=${3:-manylinux_2_28_x86_64}
mkdir -p "$OUT"
reqs=$(mktemp)
trap 'rm -f "$reqs"' EXIT
requirements > "$reqs"
echo "[wheelhouse] $(wc -l < "$reqs") requirements (torch left out) for Python $PYVER on $PLATFORM -> $OUT"
# wheels only (a server without internet or compilers cannot build an sdist); a requirement with no
# wheel for the target stops here, naming it
"$PY" -m pip download -q --only-binary=:all: --python-version "$PYVER" --platform "$PLATFORM" \
    --platform manylinux2014_x86_64 --platform linux_x86_64 --platform any --implementation cp \
    -d "$OUT" -r "$reqs"
if ls "$OUT"/torch-* >/dev/null 2>&1; then
    echo "[wheelhouse] a dependency pulled torch into $OUT; remove it before copying" >&2
    exit 1
fi
echo "[wheelhouse] $(ls "$OUT" | wc -l) files, $(du -sh "$OUT" | cut -f1); on the server:"
echo "  python -m pip install --no-index --find-links $OUT -e \".[book]\""

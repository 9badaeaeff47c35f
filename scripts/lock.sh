#!/usr/bin/env bash
# Write requirements/lock.txt: the exact versions of every package in .venv (after `make test`, so
# the book's and the test tools' dependencies), torch and npcrepro itself left out. The bootstrap
# installs with it as a constraint file, so a build of the book gets the versions it was checked with;
# NPCREPRO_NO_LOCK=1 skips it (a Python the pins have no wheels for). Re-run after changing
# pyproject.toml's dependencies; tests/test_environments.py checks that every requirement accepts its pin.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${VENV:-.venv}/bin/python
{
    echo "# Made by scripts/lock.sh from a .venv of Python $("$PY" -c 'import platform; print(platform.python_version())') on $(uname -s)-$(uname -m): the"
    echo "# versions the book and the tests were checked with. A constraint file (pip -c), not a requirement list."
    "$PY" -m pip freeze --exclude-editable --disable-pip-version-check | grep -v -i -E '^(torch|npcrepro)[=@ ]' | sort -f
} > requirements/lock.txt
echo "requirements/lock.txt: $(grep -c '==' requirements/lock.txt) pins"

# The README's two commands: `make book` and `make test`. Each sets up .venv on first use.
VENV ?= .venv
PROFILE ?= cpu
PY := $(VENV)/bin/python

.PHONY: env book test bench clean-book

env:
	@bash scripts/bootstrap.sh

book: env
	@$(PY) -m npcrepro book --profile $(PROFILE)

test: env
	@$(PY) -m pytest -q

bench: env
	@$(PY) -m npcrepro bench

clean-book:
	rm -rf _build

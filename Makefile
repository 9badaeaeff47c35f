# The README's two commands: `make book` and `make test`. Each sets up .venv on first use.
VENV ?= .venv
PROFILE ?= cpu
PY := $(VENV)/bin/python

.PHONY: env book test bench check-browser clean-book

env:
	@bash scripts/bootstrap.sh

book: env
	@$(PY) -m npcrepro book --profile $(PROFILE)

test: env
	@$(PY) -m pytest -q

check-browser: env
	@$(PY) -m npcrepro.browsercheck _build/html/book/runs/$(PROFILE)/explorer.html --expect-widgets 5
	@$(PY) -m npcrepro.browsercheck _build/html/book/runs/$(PROFILE)/leaderboard.html --expect-widgets 0
	@$(PY) -m npcrepro.browsercheck _build/html/book/metrics.html --expect-widgets 0 --expect-figures 0 --expect-math 10

bench: env
	@$(PY) -m npcrepro bench

clean-book:
	rm -rf _build

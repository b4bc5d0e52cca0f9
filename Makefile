# mailbridge — two commands on a fresh Debian machine: `make run` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TEST_STAMP := $(VENV)/.installed-test
# Product needs libmagic; the tests also use real peers (Postfix tools, swaks, Dovecot, OpenDKIM,
# SpamAssassin, and Chromium for the console and the notification pictures, driven with
# executable_path: no browser is downloaded).
SYSTEM_PACKAGES := libmagic1
TEST_SYSTEM_PACKAGES := libmagic1 postfix swaks libnet-ssleay-perl dovecot-imapd opendkim-tools spamassassin chromium sqlite3 rsync

.PHONY: run test lint typecheck bench reasons screenshots notification-pictures system-deps test-system-deps clean

run: $(STAMP) system-deps
	@$(BIN)/mailbridge db upgrade
	@$(BIN)/mailbridge demo --if-empty
	@exec $(BIN)/mailbridge serve --generate-api-key

test: $(TEST_STAMP) test-system-deps lint typecheck
	$(BIN)/pytest -q $(PYTEST_ARGS)

lint: $(TEST_STAMP)
	$(BIN)/ruff check mailbridge tests benchmarks
	$(BIN)/ruff format --check mailbridge tests benchmarks

typecheck: $(TEST_STAMP)
	$(BIN)/mypy

bench: $(TEST_STAMP) test-system-deps
	$(BIN)/python -m benchmarks.run_all $(BENCH_ARGS)

# docs/reasons.md from the reason catalogue (a test fails when it is out of date).
reasons: $(STAMP)
	$(BIN)/python -m mailbridge.reasons > docs/reasons.md

# PNGs of every console page, with the demo data, into docs/console/ (shown in docs/console.md).
screenshots: $(TEST_STAMP) test-system-deps
	$(BIN)/python -m tests.screenshots docs/console

# Every notification template at 375 and 800 px, light and dark, photographed by headless Chromium
# into docs/notifications/ (shown by docs/notifications.md).
notification-pictures: $(TEST_STAMP) test-system-deps
	$(BIN)/python scripts/notification_pictures.py docs/notifications

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(STAMP): pyproject.toml $(VENV)/bin/python
	$(BIN)/pip install -q -e .
	@touch $@

$(TEST_STAMP): pyproject.toml $(STAMP)
	$(BIN)/pip install -q -e '.[test,bench]'
	@touch $@

# System packages: installed when running as root, otherwise named in one clear line.
system-deps:
	@bash scripts/system-deps.sh $(SYSTEM_PACKAGES)

test-system-deps:
	@bash scripts/system-deps.sh $(TEST_SYSTEM_PACKAGES)

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache

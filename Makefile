# The two commands: `make demo` (set up + run the demo) and `make test` (set up + lint + tests).
SHELL := /bin/bash
ENV := . scripts/env.sh

.PHONY: demo test setup lint bench clean
demo: setup
	$(ENV) && ood-monitor demo

test: setup
	$(ENV) && ruff check . && python -m pytest -q test

setup:
	bash scripts/setup_env.sh

lint: setup
	$(ENV) && ruff check .

bench: setup
	$(ENV) && ood-monitor bench preprocess

clean:
	rm -rf build install log demo_data demo_report

#!/usr/bin/env bash
# README command 2 (and CI): set up, then lint, format check, type check and the test suite.
# Extra arguments go to pytest, e.g. scripts/test.sh -k repository
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh dev
echo "== ruff check" && .venv/bin/ruff check .
echo "== ruff format --check" && .venv/bin/ruff format --check .
echo "== mypy" && .venv/bin/mypy
echo "== pytest" && .venv/bin/pytest "$@"

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
if [ $# -eq 0 ]; then
  # The server promises the same on uvicorn's own HTTP protocol (serve --http uvicorn): the
  # suites that talk to a real server run again on it.
  echo "== pytest, the server suites on uvicorn's HTTP/1.1 protocol"
  MODELPORT_HTTP=uvicorn .venv/bin/pytest -q tests/test_server.py tests/test_server_lifecycle.py \
    tests/test_server_cache.py tests/test_server_graphql.py tests/test_security_doors.py \
    tests/test_security_parsing.py
fi
